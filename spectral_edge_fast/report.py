"""Plots and a self-contained HTML report of a monitored run.

``render(run_dir)`` reads what the JSONL sink wrote (``meta.json``,
``spectral.jsonl``, ``metrics.jsonl``) and writes next to it:

    sigmas.png     sigma_j over time, one line per mode (log scale)
    gap.png        the gap ratio R, the gap position k* and the adiabatic
                   parameter A over time, with the event thresholds
    groups.png     heat map of each group's gap ratio over time
    training.png   the logged losses and accuracies
    report.html    all of the above, the summary and the events, in one file
                   (images embedded, no other file needed)

Gap collapses and openings of the whole model are drawn on every time plot
(red and green lines); milestones given through ``SpectralMonitor.annotate``
(e.g. the grokking step) as dashed black lines.

A directory whose subdirectories are runs gets a report per run plus a
comparison (``compare.png`` and a top-level ``report.html``).
"""
from __future__ import annotations

import base64
import html
import math
import os
from typing import Dict, List, Optional

import numpy as np

from .sinks import FILES, read_run

EVENT_COLORS = {"gap_collapse": "tab:red", "gap_opening": "tab:green"}
TOP_COLORS = ("tab:blue", "tab:orange", "tab:green")  # sigma_1..sigma_3; the rest grey


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _series(records: List[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)


def _steps(records: List[dict]) -> np.ndarray:
    return np.array([r["step"] for r in records], dtype=float)


def model_events(records: List[dict]) -> List[dict]:
    """The whole model's events (not the per-group ones), oldest first."""
    return [e for r in records for e in r.get("events", ()) if not e.get("group")]


def _milestones(meta: dict) -> Dict[str, int]:
    return {k: v for k, v in (meta.get("info", {}).get("milestones") or {}).items() if v is not None}


def _mark(ax, events: List[dict], milestones: Dict[str, int], label: bool = True) -> None:
    """Vertical lines: gap collapses and openings, and the milestones."""
    seen = set()
    for e in events:
        color = EVENT_COLORS.get(e["kind"])
        if color is None:
            continue
        name = e["kind"].replace("_", " ")
        ax.axvline(e["step"], color=color, lw=1.2, alpha=0.8, label=name if label and name not in seen else None)
        seen.add(name)
    for name, step in milestones.items():
        ax.axvline(step, color="black", ls="--", lw=1.4, label=f"{name} ({step})" if label else None)


def _log_axis(ax, values) -> None:
    """Log scale labelled with plain numbers (1, 2, 5, 10...; decades only
    when ``values`` span more than two of them), not powers."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    wide = v.size and v.max() / v.min() > 100
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _split_color(key: str, fallback: str) -> str:
    """Train in blue, test/validation in orange, on every panel."""
    if "train" in key:
        return "tab:blue"
    if "test" in key or "val" in key:
        return "tab:orange"
    return fallback


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kw)


def plot_sigmas(records, meta, path) -> Optional[str]:
    plt = _plt()
    width = max((len(r["sigmas"]) for r in records), default=0)
    if not width:
        return None
    steps = _steps(records)
    sig = np.full((len(records), width), np.nan)
    for i, r in enumerate(records):
        sig[i, : len(r["sigmas"])] = r["sigmas"]
    sig[sig <= 0] = np.nan  # zero modes have no place on a log axis
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for j in range(width - 1, -1, -1):  # sigma_1 drawn last, on top
        top = j < len(TOP_COLORS)
        ax.plot(steps, sig[:, j], color=TOP_COLORS[j] if top else "0.6", lw=1.8 if top else 0.7,
                label=f"σ{j + 1}" if top else ("σ4 … σW" if j == len(TOP_COLORS) else None))
    _mark(ax, model_events(records), _milestones(meta), label=False)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("singular value σ_j of the window")
    ax.set_title(f"Singular values of the update window (W={meta.get('window')}, updates over {meta.get('every')} step(s))")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper right", ncol=4)  # sigma_1 first
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gap(records, meta, path, open_above: float = 1.5, close_below: float = 1.25) -> Optional[str]:
    plt = _plt()
    steps = _steps(records)
    R, k, A = _series(records, "R"), _series(records, "k_star"), _series(records, "A")
    has_A = bool(np.isfinite(A).any())
    rows = 3 if has_A else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows + 0.6), sharex=True)
    events, milestones = model_events(records), _milestones(meta)
    ax = axes[0]
    ax.plot(steps, R, color="tab:blue", lw=1.5, label="R = σ_k*/σ_k*+1")
    ax.axhline(open_above, color="tab:green", ls=":", lw=1, label=f"open above {open_above:g}")
    ax.axhline(close_below, color="tab:red", ls=":", lw=1, label=f"collapsed below {close_below:g}")
    _log_axis(ax, R)
    ax.set_ylabel("gap ratio R")
    _mark(ax, events, milestones)
    _legend(ax, loc="upper left", ncol=3)
    ax = axes[1]
    ax.step(steps, k, where="post", color="tab:purple", lw=1.3)
    ax.set_ylabel("gap position k*")
    top = int(np.nanmax(k)) if np.isfinite(k).any() else 1
    ax.set_yticks(range(1, top + 1, max(1, top // 8)))
    _mark(ax, events, milestones, label=False)
    if has_A:
        ax = axes[2]
        ax.plot(steps, A, color="tab:orange", lw=1.2)
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        _log_axis(ax, np.append(A, 1.0))
        ax.set_ylabel("adiabatic A")
        _mark(ax, events, milestones, label=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].set_title("Spectral gap of the update window: ratio, position, adiabatic parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(records, meta, path) -> Optional[str]:
    with_groups = [r for r in records if r.get("groups")]
    if not with_groups:
        return None
    plt = _plt()
    names = list(with_groups[-1]["groups"])
    steps = _steps(with_groups)
    logR = np.array([[np.nan if r["groups"].get(g, {}).get("R") is None else math.log10(r["groups"][g]["R"])
                      for r in with_groups] for g in names])
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(names)))
    finite = logR[np.isfinite(logR)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    im = ax.imshow(logR, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0, vmax=max(vmax, 0.1),
                   extent=(steps[0] - half, steps[-1] + half, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("Gap ratio of each parameter group, log10 R (dark: collapsed, bright: open)")
    for e in model_events(records):
        if e["kind"] in EVENT_COLORS:
            ax.axvline(e["step"], color=EVENT_COLORS[e["kind"]], lw=1.0)
    for step in _milestones(meta).values():
        ax.axvline(step, color="white", ls="--", lw=1.2)
    fig.colorbar(im, ax=ax, label="log10 R", pad=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(metrics, records, meta, path) -> Optional[str]:
    keys = sorted({k for m in metrics for k in m if k != "step"})
    losses = [k for k in keys if "loss" in k]
    accs = [k for k in keys if "acc" in k]
    other = [k for k in keys if k not in losses and k not in accs]
    panels = [p for p in ((losses, "loss", True), (accs, "accuracy", False), (other, "value", False)) if p[0]]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.8 * len(panels) + 0.6), sharex=True, squeeze=False)
    steps = _steps(metrics)
    events, milestones = model_events(records), _milestones(meta)
    for i, (ax, (names, ylabel, log)) in enumerate(zip(axes[:, 0], panels)):
        for j, name in enumerate(names):
            ax.plot(steps, _series(metrics, name), lw=1.5, label=name, color=_split_color(name, f"C{j + 2}"))
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _mark(ax, events, milestones, label=i == 0)
        _legend(ax, loc="best", ncol=2)
    axes[0, 0].set_title("Training metrics, with the spectral events")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(runs: Dict[str, dict], path) -> Optional[str]:
    """R(t) of every run, and each run's accuracies (test/val first)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    colors = plt.get_cmap("tab10")
    for i, (name, run) in enumerate(runs.items()):
        color = colors(i % 10)
        name = run["meta"].get("info", {}).get("name") or name
        recs = run["analysis"]
        axes[0].plot(_steps(recs), _series(recs, "R"), color=color, lw=1.3, label=name)
        metrics = run["metrics"]
        acc = [k for k in sorted({k for m in metrics for k in m}) if "acc" in k]
        for key in sorted(acc, key=lambda k: ("test" not in k and "val" not in k, k)):
            ls = "-" if ("test" in key or "val" in key) else ":"
            axes[1].plot(_steps(metrics), _series(metrics, key), color=color, ls=ls, lw=1.4, label=f"{name}: {key}")
        for ax in axes:
            for e in (e for e in model_events(recs) if e["kind"] in EVENT_COLORS):
                ax.axvline(e["step"], color=color, lw=0.9, alpha=0.6,
                           ls=(0, (1, 1)) if e["kind"] == "gap_collapse" else "-")
            for step in _milestones(run["meta"]).values():
                ax.axvline(step, color=color, ls="--", lw=1.6)
    _log_axis(axes[0], np.concatenate([_series(run["analysis"], "R") for run in runs.values()]))
    axes[0].set_ylabel("gap ratio R")
    axes[0].set_title("Runs compared (dashed: milestones, thin dotted: gap collapse, thin solid: gap opening)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend(ax, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- HTML -----------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}code{background:#f3f3f3}"""


def _img(path: Optional[str]) -> str:
    if not path:
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def run_summary(run: dict) -> Dict[str, object]:
    """Headline numbers of one run, from its records."""
    recs, meta = run["analysis"], run["meta"]
    R = _series(recs, "R")
    ks = [r["k_star"] for r in recs if r.get("k_star") is not None]
    out: Dict[str, object] = {
        "parameters": meta.get("numel"),
        "window W": meta.get("window"),
        "stride (every)": meta.get("every"),
        "analyses": len(recs),
        "last step": recs[-1]["step"] if recs else None,
    }
    if ks:
        out["most common k*"] = max(set(ks), key=ks.count)
    if np.isfinite(R).any():
        out["median R"] = float(np.nanmedian(R))
        out["max R (step)"] = f"{np.nanmax(R):.3g} ({recs[int(np.nanargmax(R))]['step']})"
    for name, step in _milestones(meta).items():
        out[name] = step
    for k, v in (meta.get("info") or {}).items():
        if k != "milestones" and isinstance(v, (int, float, str)):
            out[k] = v
    return out


def _run_section(run: dict, images: List[Optional[str]]) -> str:
    recs = run["analysis"]
    events = [e for r in recs for e in r.get("events", ())]
    parts = [_table(run_summary(run).items())]
    parts += [_img(p) for p in images]
    main = [e for e in events if not e.get("group")]
    parts.append(f"<h3>Events of the whole model ({len(main)})</h3>")
    parts.append(_table([(e["step"], e["kind"], e.get("value"), e.get("previous")) for e in main],
                        ("step", "event", "value", "previous k*")) if main else "<p>none</p>")
    grouped = [e for e in events if e.get("group") and e["kind"] != "k_star_shift"]
    parts.append(f"<h3>Per-group gap collapses and openings ({len(grouped)})</h3>")
    parts.append(_table([(e["step"], e["group"], e["kind"], e.get("value")) for e in grouped],
                        ("step", "group", "event", "R")) if grouped else "<p>none</p>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _is_run(path: str) -> bool:
    return os.path.exists(os.path.join(path, FILES["analysis"] + ".jsonl"))


def render_run(run_dir: str) -> str:
    """The plots and report.html of one run directory; returns the report's path."""
    run = read_run(run_dir)
    if not run["analysis"]:
        raise ValueError(f"{run_dir} holds no analysis records ({FILES['analysis']}.jsonl is missing or empty)")
    recs, meta = run["analysis"], run["meta"]
    images = [
        plot_gap(recs, meta, os.path.join(run_dir, "gap.png")),
        plot_sigmas(recs, meta, os.path.join(run_dir, "sigmas.png")),
        plot_groups(recs, meta, os.path.join(run_dir, "groups.png")),
        plot_training(run["metrics"], recs, meta, os.path.join(run_dir, "training.png")) if run["metrics"] else None,
    ]
    title = f"Spectral-edge report: {meta.get('info', {}).get('name') or os.path.basename(os.path.abspath(run_dir))}"
    path = os.path.join(run_dir, "report.html")
    with open(path, "w") as f:
        f.write(_page(title, _run_section(run, images)))
    return path


def render(run_dir: str) -> str:
    """Write the report of ``run_dir`` (a run, or a directory of runs) and
    return the path of its report.html."""
    if _is_run(run_dir):
        return render_run(run_dir)
    subdirs = sorted(d for d in os.listdir(run_dir) if _is_run(os.path.join(run_dir, d))) if os.path.isdir(run_dir) else []
    if not subdirs:
        raise FileNotFoundError(f"no run in {run_dir}: expected {FILES['analysis']}.jsonl there or in its subdirectories")
    runs = {}
    sections = []
    for d in subdirs:
        path = os.path.join(run_dir, d)
        render_run(path)
        runs[d] = run = read_run(path)
        images = [os.path.join(path, n) for n in ("gap.png", "sigmas.png", "groups.png", "training.png")]
        name = run["meta"].get("info", {}).get("name")
        title = f"Run {d}" + (f": {name}" if name else "")
        sections.append(f"<h2>{html.escape(title)}</h2>\n" + _run_section(run, [p for p in images if os.path.exists(p)]))
    compare = plot_comparison(runs, os.path.join(run_dir, "compare.png"))
    body = "<h2>Comparison</h2>" + _img(compare) + "\n".join(sections)
    path = os.path.join(run_dir, "report.html")
    with open(path, "w") as f:
        f.write(_page("Spectral-edge report", body))
    return path


__all__ = ["render", "render_run", "run_summary"]
