"""reproduce dyck: the quick run end to end, and Section 27's verdicts from
runs' rows (shared with reproduce scan)."""
import json

import pytest

from spectral_edge_fast import reproduce
from spectral_edge_fast.reproduce.common import Settings
from spectral_edge_fast.reproduce.dyck import PAPER, section27, summarize


@pytest.mark.slow  # minutes on a shared 2-core CPU: two trainings, their monitors and reports
def test_quick_run_writes_results_and_reports(tmp_path):
    results = reproduce.run("dyck", Settings(mode="quick", out=str(tmp_path), progress=False))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "dyck" and data["mode"] == "quick"
    assert [(r["seed"], r["weight_decay"]) for r in data["runs"]] == [(42, 1.0), (42, 0.0)]
    assert len(data["claims"]) == 5 and all(c["why"] for c in data["claims"])
    for r in results["runs"]:
        assert r["steps"] == 150 and r["analyses"] > 0 and 140_000 < r["parameters"] < 160_000
        assert [m["step"] for m in r["curve"]] == list(range(25, 151, 25))
        assert all(m["wq_ratio"] >= 1.0 for m in r["curve"])  # sigma_1 / sigma_2 of the monitor's W_Q probe
        assert (tmp_path / f"dyck-seed42-wd{r['weight_decay']:g}" / "spectral.jsonl").stat().st_size > 0
    assert (tmp_path / "report.html").exists() and (tmp_path / "results.md").exists()
    # a rerun reads the finished runs back instead of training them again
    files = sorted(tmp_path.glob("dyck-*/spectral.jsonl"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = reproduce.run("dyck", Settings(mode="quick", out=str(tmp_path), progress=False))
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again["claims"] == results["claims"] and again["runs"] == results["runs"]


def test_summarize_reads_the_monitors_w_q_probe_and_events():
    def record(step, r0, r1, events=()):
        probes = {"encoder.layers.0.self_attn.in_proj_weight:q": {"sigma_12": r0},
                  "encoder.layers.1.self_attn.in_proj_weight:q": {"sigma_12": r1},
                  "head.weight": {"sigma_12": 99.0}}
        return {"step": step, "R": 2.0, "probes": probes, "events": list(events)}

    opening = {"kind": "gap_opening", "step": 20}
    run = {"meta": {"info": {"parameters": 7}},
           "analysis": [record(10, 1.1, 1.2), record(20, 1.05, 1.3, [opening, {**opening, "group": "head"}]),
                        record(30, 40.0, 2.0)],
           "metrics": [{"step": s, "train_acc": a, "test_acc": t} for s, a, t in ((10, 0.5, 0.1), (20, 1.0, 0.96),
                                                                                    (30, 1.0, 1.0))]}
    row = summarize(run, "T", 1, 1.0, "encoder.layers.0.self_attn")
    assert (row["grok_step"], row["fit_step"], row["parameters"]) == (20, 20, 7)
    assert (row["ratio_start"], row["ratio_at_grok"], row["ratio_end"]) == (1.1, 1.05, 40.0)
    assert row["ratio_end_layers"] == {"encoder.layers.0.self_attn": 40.0, "encoder.layers.1.self_attn": 2.0}
    assert row["events"] == row["events_before_grok"] == ["gap_opening@20"]  # the whole model's only
    assert row["gap_records_before_grok"] == 2 and [m["wq_ratio"] for m in row["curve"]] == [1.1, 1.05, 40.0]


def _row(seed, wd, grok, at=1.1, end=1.5, events=(), fit=None, steps=1000, gap_records=9):
    ev = [f"gap_opening@{s}" for s in events]
    return {"task": "t", "seed": seed, "weight_decay": wd, "steps": steps, "grok_step": grok, "fit_step": fit,
            "gap_records_before_grok": gap_records, "curve": [{"step": 50}],
            "train_acc": 1.0, "test_acc": 1.0 if grok else 0.5, "ratio_start": 1.0, "ratio_at_grok": at if grok else None,
            "ratio_end": end, "ratio_end_layers": {"l0": end}, "events": ev, "events_before_grok": [e for e, s in zip(ev, events) if grok and s <= grok]}


def _verdicts(rows, rise=100.0):
    claims, tables = section27("T", rows, PAPER, "big", rise, "p")
    assert len(tables[0]["rows"]) == len(rows)
    return [c["verdict"] for c in claims]


def test_section27_verdicts():
    # the paper's picture: decayed runs grok with a near-degenerate W_Q that opens after, controls stay flat
    good = [_row(1, 1.0, 500, end=300.0, events=[400], fit=100), _row(1, 0.0, None, end=1.2)]
    assert _verdicts(good) == ["reproduced"] * 5
    # everything generalises, W_Q far from degenerate at grokking, no rise, events everywhere
    bad = [_row(1, 1.0, 100, at=2.0, end=2.1, events=[200], fit=50), _row(1, 0.0, 100, end=2.5, events=[300])]
    assert _verdicts(bad) == ["not reproduced"] * 5
    # nothing groks: nothing to read at a grokking step
    none = [_row(1, 1.0, None, fit=100), _row(1, 0.0, None)]
    assert _verdicts(none) == ["not reproduced", "not testable here", "not testable here", "not reproduced",
                               "not testable here"]
    # grokking before the update Gram had analyses enough for an event: its events cannot precede it
    early = [_row(1, 1.0, 100, end=300.0, fit=50, gap_records=3), _row(1, 0.0, None, end=1.2)]
    assert _verdicts(early)[4] == "not testable here"
    # grokking at the first evaluation: W_Q there is still near its random start
    first = [_row(1, 1.0, 50, at=1.03, end=300.0, fit=50), _row(1, 0.0, None, end=1.2)]
    assert _verdicts(first)[1] == "not testable here"
    # too short to fit the training set: grokking is not tested
    assert _verdicts([_row(1, 1.0, None), _row(1, 0.0, None)]) == ["not testable here"] * 5
