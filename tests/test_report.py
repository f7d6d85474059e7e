"""The report: PNG plots and a self-contained report.html."""
import base64
import contextlib
import math
import os
import re

import numpy as np
import pytest
import torch

from spectral_edge_fast import report
from spectral_edge_fast.monitor import R_MEDIAN_DIGITS, SpectralMonitor
from spectral_edge_fast.report import render, run_summary
from spectral_edge_fast.sinks import JSONLSink, read_records
from test_sinks import _killed_at_random

PNG = b"\x89PNG\r\n\x1a\n"


def _write_run(log_dir, seed=0, steps=60):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    mon = SpectralMonitor(model, opt, window=6, analyze_every=3, log_dir=str(log_dir))
    mon.annotate(name=f"toy {seed}", milestones={"grokking": 30, "never": None})
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            acc = (model(x).argmax(-1) == y).float().mean()
            mon.log({"train_loss": loss, "train_acc": acc, "test_acc": acc / 2}, step=step)
    mon.close()
    return mon


def test_render_writes_the_plots_and_a_self_contained_html(tmp_path):
    _write_run(tmp_path)
    path = render(str(tmp_path))
    assert path == str(tmp_path / "report.html")
    for name in ("gap.png", "sigmas.png", "groups.png", "training.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    html = (tmp_path / "report.html").read_text()
    assert "toy 0" in html and "grokking" in html
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG) for i in images)


def test_summary_holds_the_expected_series(tmp_path):
    mon = _write_run(tmp_path)
    run = read_records(str(tmp_path))
    assert len(run["analysis"]) == 20 and [m["step"] for m in run["metrics"]] == [10, 20, 30, 40, 50, 60]
    s = run_summary(run)
    assert s["analyses"] == 20 and s["window W"] == 6 and s["grokking"] == 30 and "never" not in s
    # the monitor's run-long median is of R rounded to R_MEDIAN_DIGITS digits; the report's, of the records
    assert s["median R"] == pytest.approx(mon.summary()["R_median"], rel=10.0 ** (1 - R_MEDIAN_DIGITS))


def test_a_directory_of_runs_gets_a_comparison(tmp_path):
    for seed in (0, 1):
        _write_run(tmp_path / f"run{seed}", seed=seed, steps=30)
    path = render(str(tmp_path))
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG)
    for seed in (0, 1):
        assert (tmp_path / f"run{seed}" / "report.html").exists()
    html = open(path).read()
    assert "Run run0" in html and "Run run1" in html
    assert len(re.findall(r"data:image/png;base64", html)) == 1 + 2 * 4


def test_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run in"):
        render(str(tmp_path))


# -- runs written record by record, as the monitor and the callbacks log them --------------------------------------


def _analysis(R, step0=10, stride=10, k_star=None, events=None):
    """Analysis records with gap ratio ``R`` (k* = 1 unless given), events
    attached to the record of their step."""
    k_star = k_star or [1] * len(R)
    events = events or {}
    recs = []
    for i, (r, k) in enumerate(zip(R, k_star)):
        step = step0 + stride * i
        sig = [1.0] * k + [1.0 / r] * 3
        recs.append({"step": step, "k_star": k, "R": r, "sigmas": sig, "A": 0.5, "events": events.get(step, []),
                     "groups": {"layers.0": {"R": r, "k_star": k}, "head": {"R": 1 + r / 2, "k_star": 1}}})
    return recs


def _write(run_dir, recs, metrics=(), info=None):
    sink = JSONLSink(str(run_dir))
    sink.write_meta({"window": 4, "every": 1, "numel": 100, "info": info or {}})
    for r in recs:
        sink.write("analysis", r)
    for m in metrics:
        sink.write("metrics", m)
    sink.close()


def _lines_at(ax, step):
    """The vertical lines of ``ax`` at ``step``."""
    return [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [step, step]]


def _hf_metrics():
    """Metrics as the Hugging Face Trainer logs them: training logs every 50
    steps, evaluations every 200, the run's totals at its end."""
    out = []
    for s in range(50, 601, 50):
        out.append({"step": s, "loss": 3.0 - s / 400, "grad_norm": 1.5, "learning_rate": 5e-5 * (1 - s / 600),
                    "epoch": s / 200})
        if s % 200 == 0:
            out.append({"step": s, "eval_loss": 3.2 - s / 500, "eval_runtime": 12.3, "eval_samples_per_second": 81.2,
                        "epoch": s / 200})
    out.append({"step": 600, "train_runtime": 1234.5, "total_flos": 4.2e15, "train_loss": 2.1, "epoch": 3.0})
    return out


STEPS_60 = [10 * (i + 1) for i in range(60)]
PEAK = [1 + 2.87 * math.exp(-(((i - 20) / 8) ** 2)) for i in range(60)]  # R peaks at 3.87


def test_a_line_cut_by_a_crash_or_a_broken_meta_still_gives_a_report_with_warnings(tmp_path):
    run = tmp_path / "cut-run"
    _write(run, _analysis(PEAK))
    with open(run / "spectral.jsonl", "a") as f:
        f.write('{"step": 999, "R": 1.')  # killed while writing its last record
    (run / "meta.json").write_text('{"window": 4, "info": {"na')
    with pytest.warns(RuntimeWarning) as warned:
        path = render(str(run))
    messages = [str(w.message) for w in warned]
    assert any(re.search(r"cut-run/spectral\.jsonl.*line 61", m) for m in messages), messages
    assert any(re.search(r"cut-run/meta\.json is unreadable", m) for m in messages), messages
    assert "Spectral-edge report: cut-run" in open(path).read()


def test_report_files_are_replaced_whole_when_the_writer_dies(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    _write(tmp_path, _analysis(PEAK), _hf_metrics())
    render(str(tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in ("gap.png", "report.html")}

    def dies_halfway(self, fname, **kw):
        with open(fname, "wb") if isinstance(fname, str) else contextlib.nullcontext(fname) as f:
            f.write(PNG)
        raise OSError("killed")

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    with pytest.raises(OSError, match="killed"):
        render(str(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_report_files_survive_sigkill_during_render(tmp_path):
    _write(tmp_path, _analysis(PEAK), _hf_metrics())
    render(str(tmp_path))  # the files a re-render replaces
    names = ("gap.png", "sigmas.png", "groups.png", "training.png", "report.html")

    def renders(trial, ack):
        for i in range(1000):
            render(str(tmp_path))
            ack(i + 1)

    for _ in _killed_at_random(renders, trials=6, longest=1.5, seed=1):
        for name in names:
            data = (tmp_path / name).read_bytes()
            assert data.endswith(b"IEND\xaeB`\x82" if name.endswith(".png") else b"</html>\n"), name


def test_the_report_explains_its_quantities_and_thresholds(tmp_path):
    _write(tmp_path, _analysis(PEAK))
    text = open(render(str(tmp_path)), encoding="utf-8").read()
    assert "How to read this report" in text
    for words in ("singular values", "gap position", "gap ratio", "adiabatic parameter", "learning rate",
                  "at or above 1.5 for 3 analyses", "below 1.25 for 3 analyses", "k* shift",
                  "README.md, section “Reading the report”"):
        assert words in text, words


def test_the_R_axis_labels_its_range_and_the_legends_stay_off_the_curves():
    recs = _analysis(PEAK)
    fig = report.gap_figure(recs, {})
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    labelled = [float(t.get_text()) for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= v <= hi and t.get_text()]
    assert len(labelled) >= 4 and max(labelled) >= 3, labelled  # not only 1 and 2 for a peak at 3.87
    for figure in (fig, report.sigmas_figure(recs, {}), report.training_figure(_hf_metrics(), recs, {})):
        figure.canvas.draw()
        for ax in figure.axes:
            if ax.get_legend() is not None:
                assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside the plot


def test_k_star_shifts_are_drawn_and_event_styles_agree_across_figures(tmp_path):
    events = {150: [{"kind": "gap_collapse", "step": 150, "value": 1.2}],
              300: [{"kind": "k_star_shift", "step": 300, "value": 2, "previous": 1}]}
    recs = _analysis(PEAK, events=events, k_star=[1] * 30 + [2] * 30)
    fig = report.gap_figure(recs, {})
    for ax in fig.axes:
        (shift,) = _lines_at(ax, 300)
        assert shift.get_linestyle() == "-." and shift.get_color() == "tab:purple"
    assert "k* shift" in fig.axes[0].get_legend_handles_labels()[1]
    (collapse,) = _lines_at(fig.axes[0], 150)
    run = {"analysis": recs, "metrics": [{"step": 10, "test_acc": 0.1}], "meta": {}}
    compare = report.comparison_figure({"a": run})
    assert {ln.get_linestyle() for ln in _lines_at(compare.axes[0], 150)} == {collapse.get_linestyle()}
    handles, labels = compare.axes[0].get_legend_handles_labels() if compare.axes[0].get_legend() is None else (
        compare.axes[0].get_legend().legend_handles, [t.get_text() for t in compare.axes[0].get_legend().get_texts()])
    assert handles[labels.index("gap collapse")].get_linestyle() == collapse.get_linestyle()
    assert "dotted" not in compare.axes[0].get_title()  # the styles are in the legend, drawn as they are


def test_milestones_on_the_heat_map_are_visible_and_named():
    meta = {"info": {"milestones": {"grokking": 300}}}
    fig = report.groups_figure(_analysis(PEAK), meta)
    (line,) = _lines_at(fig.axes[0], 300)
    assert line.get_color() not in ("white", "w", "black", "k")  # magma runs from black to near-white
    assert "grokking (300)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_the_title_names_the_run(tmp_path):
    hf = tmp_path / "my-finetune" / "spectral-edge"  # where the Hugging Face and Lightning callbacks log
    _write(hf, _analysis(PEAK))
    title = re.search(r"<h1>(.*?)</h1>", open(render(str(hf))).read()).group(1)
    assert "my-finetune" in title and not title.endswith(": spectral-edge")
    assert report.run_name(str(hf), {"info": {"run_name": "gpt2-lr3e-4"}}) == "gpt2-lr3e-4"
    assert report.run_name(str(tmp_path / "exp1"), {}) == "exp1"


def test_training_panel_on_framework_logs(tmp_path):
    recs = _analysis(PEAK)
    fig = report.training_figure(_hf_metrics(), recs, {})
    drawn = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    for name in ("loss", "eval_loss", "train_loss"):
        y = np.asarray(drawn[name].get_ydata(), float)
        assert y.size and np.isfinite(y).all(), name  # no NaN breaks, each over its own steps
        assert drawn[name].get_marker() == "o", name  # an isolated point is visible
    assert drawn["train_loss"].get_ydata().size == 1 and drawn["eval_loss"].get_ydata().size == 3
    assert not {"epoch", "total_flos", "train_runtime", "eval_runtime"} & set(drawn)
    loss_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "loss")
    assert {ln.get_label() for ln in loss_axis.get_lines()} >= {"loss", "eval_loss", "train_loss"}
    assert all(ax.get_ylim()[1] < 100 for ax in fig.axes)  # no axis scaled by total_flos
    # Lightning logs each metric twice at an epoch's end: one point a step, in step order
    lightning = [{"step": 117, "val_loss": 0.9, "epoch": 0.0}, {"step": 117, "val_loss": 0.9, "train_loss_epoch": 0.8},
                 {"step": 234, "val_loss": 0.7, "val_acc": 0.6}]
    x, y = report.metric_series(lightning, "val_loss")
    assert list(x) == [117, 234] and list(y) == [0.9, 0.7]
    _write(tmp_path, recs, _hf_metrics())
    assert "Not plotted (in metrics.jsonl): epoch, eval_runtime" in open(render(str(tmp_path))).read()


def test_a_run_killed_before_its_first_analysis_is_left_out_of_the_comparison(tmp_path):
    _write(tmp_path / "done", _analysis(PEAK[:20]))
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "spectral.jsonl").write_text("")
    with pytest.warns(RuntimeWarning, match=r"killed: left out of the report, it holds no analysis records"):
        text = open(render(str(tmp_path))).read()
    assert "Run done" in text and "Run killed" not in text
    (tmp_path / "done" / "spectral.jsonl").write_text("")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no run in .* holds analysis records"):
        render(str(tmp_path))


def test_probes_are_plotted_and_the_gap_plot_draws_the_run_thresholds(tmp_path):
    """A run with probes gets probes.png (a line per probed weight and per
    attention operator, its heads thin); the gap plot's threshold lines are
    the run's options, "null" at its W and P; a run without probes gets no
    probes.png."""
    from spectral_edge_fast.analysis import null_max_ratio
    from spectral_edge_fast.analysis.null import MONITOR_SAMPLES

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.attn, model.head = torch.nn.MultiheadAttention(8, 2), torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, opt, window=4, analyze_every=2, log_dir=str(tmp_path / "run"),
                          probes=["attention", "head.weight"], gap_open_above="null", gap_close_below=1.001)
    x = torch.randn(16, 3, 8)
    for _ in range(20):
        loss = model.head(model.attn(x, x, x)[0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.close()
    render(str(tmp_path / "run"))
    data = (tmp_path / "run" / "probes.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    run = read_records(str(tmp_path / "run"))
    fig = report.probes_figure(run["analysis"], run["meta"])
    def series(ax):  # the lines over the records, not the event and milestone marks
        return [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(run["analysis"])]

    assert [ln.get_label() for ln in series(fig.axes[0])] == ["attn.in_proj_weight:q", "head.weight"]
    assert len(series(fig.axes[1])) == 2
    labels = fig.axes[2].get_legend_handles_labels()[1]
    assert {"attn: |λ1|/|λ2|", "attn: |λ2|/|λ3|", "attn: heads' |λ1|/|λ2|"} <= set(labels)
    assert len(series(fig.axes[2])) == 2 + 2  # the whole operator's two ratios; two heads
    P = sum(p.numel() for p in model.parameters())
    open_above = null_max_ratio(4, P, MONITOR_SAMPLES).quantile(0.99)
    assert report.event_thresholds(run["meta"]) == (open_above, 1.001)
    ys = {ln.get_ydata()[0] for ln in report.gap_figure(run["analysis"], run["meta"]).axes[0].get_lines()[1:3]}
    assert ys == {open_above, 1.001}
    assert report.probes_figure(_analysis(PEAK), {}) is None and report.event_thresholds({}) == (1.5, 1.25)
    sketched = {**run["meta"], "events": {**run["meta"]["events"], "null_P": 40}}  # sketch mode: the null at m
    assert report.event_thresholds(sketched)[0] == null_max_ratio(4, 40, MONITOR_SAMPLES).quantile(0.99)


def test_the_report_is_utf8_whatever_the_locale(tmp_path):
    """The page declares UTF-8 and holds σ, λ and the run's name: it is
    written as UTF-8 under a locale that cannot encode them (rendering
    failed there), in a folder whose name has spaces."""
    from test_sinks import _in_ascii_locale

    run = tmp_path / "my run"
    _write(run, _analysis(PEAK[:10]), info={"name": "grokking ü 損失"})
    done = _in_ascii_locale(f"from spectral_edge_fast.report import render; render({str(run)!r})", tmp_path)
    assert done.returncode == 0, done.stderr
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<meta charset='utf-8'>" in text and "Spectral-edge report: grokking ü 損失</h1>" in text and "σ" in text


def test_a_sketch_mode_run_says_so_with_its_error(tmp_path):
    """Sketch-mode records carry ``sketch`` (m, the groups kept exactly,
    rel_err): the summary gives m and the median and largest rel_err; an
    exact run's summary has no sketch rows."""
    errors = [0.02, 0.05, None, 0.03]  # None: a window of zero updates
    recs = [{**r, "sketch": {"m": 256, "exact_groups": 1, "rel_err": e}} for r, e in zip(_analysis(PEAK[:4]), errors)]
    s = run_summary({"analysis": recs, "metrics": [], "meta": {"sketch": 256}})
    assert s["sketch m (groups kept exactly)"] == "256 (1)"
    assert s["sketch rel_err of G: median, max (step)"] == "0.03, 0.05 (20)"
    _write(tmp_path, recs)
    assert "sketch rel_err of G: median, max (step)</td><td>0.03, 0.05 (20)" in open(render(str(tmp_path))).read()
    assert not any("sketch" in k for k in run_summary({"analysis": _analysis(PEAK[:4]), "metrics": [], "meta": {}}))



def test_a_run_of_one_record_shows_its_point():
    """One analysis (a run stopped early): a line through one point draws
    nothing, so the gap, k*, A and sigma plots showed empty axes; short
    series get markers, as the training panel's do."""
    (record,) = _analysis([3.0])
    for fig in (report.gap_figure([record], {}), report.sigmas_figure([record], {})):
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) == 1]
        assert len(lines) >= 3 and all(ln.get_marker() == "o" for ln in lines), [ln.get_label() for ln in lines]


def test_the_time_plots_span_the_run_and_mark_where_the_updates_turned_non_finite():
    """A run whose updates turned NaN: its records from there on have no R,
    k* or sigmas. The plots stopped at the last finite record as if the run
    had ended there; they span every record and mark the non-finite event."""
    recs = _analysis(PEAK[:30])
    for r in recs[20:]:
        r.update(R=None, k_star=None, A=None, sigmas=[], groups={})
    recs[20]["events"] = [{"kind": "nonfinite_rows", "step": recs[20]["step"], "index": 20, "value": [0, 1]}]
    last = recs[-1]["step"]
    for fig in (report.gap_figure(recs, {}), report.sigmas_figure(recs, {})):
        for ax in fig.axes:
            assert ax.get_xlim()[1] >= last
        assert _lines_at(fig.axes[0], recs[20]["step"]), "the non-finite event is not drawn"
    assert "non-finite" in report.guide_html()


def test_the_report_reads_the_records_without_their_detail(tmp_path, monkeypatch):
    """The report draws the summary fields; the spectrum, stability, flow
    and overlap detail is most of a record (a 100k-record run took 3.2 GB
    to render): it is left out as the files are read, here and in a
    directory of runs. read_records gives it unless told not to."""
    detail = {"spectrum": {"eigenvalues": [1.0] * 16}, "stability": {"x": 1.0}, "flow": {}, "overlaps": {}}
    for d in ("a", "b"):
        _write(tmp_path / d, [{**r, **detail} for r in _analysis(PEAK[:6])])
    seen = []
    plot = report._plot_run
    monkeypatch.setattr(report, "_plot_run", lambda path, run: seen.append(run) or plot(path, run))
    render(str(tmp_path / "a"))
    render(str(tmp_path))
    assert len(seen) == 3 and all(r["analysis"] and not detail.keys() & set().union(*r["analysis"]) for r in seen)
    assert all(r["events"] == [] and r["groups"] for r in seen[0]["analysis"])
    assert read_records(str(tmp_path / "a"))["analysis"][0]["spectrum"] == detail["spectrum"]
