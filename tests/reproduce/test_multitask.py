"""reproduce multitask: the quick run end to end, and the per-task order
and claims on made-up runs."""
from spectral_edge_fast import reproduce
from spectral_edge_fast.reproduce import multitask
from spectral_edge_fast.reproduce.common import Settings


def test_quick_run_reports_each_task(tmp_path):
    res = reproduce.run("multitask", Settings(mode="quick", out=str(tmp_path), progress=False))
    assert [r["name"] for r in res["runs"]] == ["add+mul-s42-wd1", "add+mul-s42-wd0"]
    for r in res["runs"]:
        assert set(r["grok_steps"]) == set(r["final_test_acc"]) == {"add", "mul"}
        assert (tmp_path / r["name"] / "spectral.jsonl").exists()
    assert (tmp_path / "report.html").exists() and len(res["claims"]) == 2


def _run(wd, groks):
    done = None not in groks.values()
    return {"name": "+".join(groks), "tasks": list(groks), "seed": 42, "weight_decay": wd, "grok_steps": groks,
            "grok": max(groks.values()) if done else None, "steps": 5000,
            "events": {"collapse": None, "opening": None, "opening_k": None, "k_shifts": 0}}


def test_order_and_verdicts():
    pl = multitask.plan(Settings(mode="default"))
    runs = [_run(1.0, {"add": 4000, "mul": 3000, "x2+y2": 3500}), _run(0.0, {"add": None, "mul": None, "x2+y2": None})]
    by = {c["claim"]: c for c in multitask.claims(runs, pl)}
    assert by["Multi-task models grok with weight decay, not without"]["verdict"] == "reproduced"
    order = by["Tasks grok in the order mul, x2+y2, add"]
    assert order["verdict"] == "reproduced" and "add 4000, mul 3000, x2+y2 3500" in order["ours"]
    runs += [_run(1.0, {"add": 2000, "mul": 3000}), _run(0.0, {"add": 4500, "mul": None})]
    by = {c["claim"]: c for c in multitask.claims(runs, pl)}
    assert by["Tasks grok in the order mul, x2+y2, add"]["verdict"] == "partly"
    grok = by["Multi-task models grok with weight decay, not without"]
    assert grok["verdict"] == "partly" and "1/2 grok any task with 0" in grok["ours"]
    assert multitask.tables(runs)[0]["rows"][2][4] == "add < mul"
    # two of the three tasks in the paper's order test only part of it
    two = [_run(1.0, {"add": 4000, "mul": 3000}), _run(0.0, {"add": None, "mul": None})]
    order = {c["claim"]: c for c in multitask.claims(two, pl)}["Tasks grok in the order mul, x2+y2, add"]
    assert order["verdict"] == "partly" and "only part of the order" in order["why"]
