"""reproduce optimizers: the quick run end to end, and the k* shares and
claims on made-up records."""
from spectral_edge_fast import reproduce
from spectral_edge_fast.reproduce import optimizers
from spectral_edge_fast.reproduce.common import Settings


def test_quick_run_trains_both_optimizers_under_two_windows(tmp_path):
    res = reproduce.run("optimizers", Settings(mode="quick", out=str(tmp_path), progress=False))
    assert [r["optimizer"] for r in res["runs"]] == ["adamw", "muon"]
    for r in res["runs"]:
        for name in ("W10s1", "W16s10"):
            assert (tmp_path / f"{r['optimizer']}-s42-{name}" / "spectral.jsonl").exists()
            d = r[name]
            assert d["analyses"] > 0 and abs(d["k1"] + d["k2"] + d["k3+"] - 1) < 1e-12
    assert (tmp_path / "report.html").exists()
    assert len(res["claims"]) == 5 and len(res["tables"][0]["rows"]) == 4


def test_k_distribution_counts_every_defined_analysis():
    records = [{"k_star": k, "R": R} for k, R in [(1, 2.0), (1, 3.0), (2, 1.5), (5, 1.2), (None, None)]]
    d = optimizers.k_distribution(records)
    assert (d["analyses"], d["k1"], d["k2"], d["k3+"], d["k_mode"], d["R_median"]) == (4, 0.5, 0.25, 0.25, 1, 1.75)
    assert optimizers.k_distribution([])["k_mode"] is None


def _run(opt, k1, k2, mode, R, grok):
    d = {"analyses": 10, "k1": k1, "k2": k2, "k3+": 1 - k1 - k2, "k_mode": mode, "R_median": R}
    return {"optimizer": opt, "seed": 42, "grok": grok, "steps": 3000, "W10s1": d, "W16s10": d}


def test_claims_verdicts():
    pl = optimizers.plan(Settings(mode="default"))
    by = lambda runs: {c["claim"]: c for c in optimizers.claims(runs, pl)}  # noqa: E731
    c = by([_run("adamw", 0.4, 0.5, 2, 2.0, 3000), _run("muon", 1.0, 0.0, 1, 1.5, 2000)])
    assert c["Muon gives k* = 1, AdamW k* = 2 (W = 10, stride 1)"]["verdict"] == "reproduced"
    assert c["Muon's gap ratio is weaker (W = 16, stride 10)"]["verdict"] == "reproduced"
    assert c["Both optimizers reach the same capability"]["verdict"] == "reproduced"
    c = by([_run("adamw", 0.5, 0.4, 1, 1.2, 3000), _run("muon", 0.9, 0.1, 1, 1.5, None)])
    assert c["Muon gives k* = 1, AdamW k* = 2 (W = 10, stride 1)"]["verdict"] == "partly"
    assert c["Muon's gap ratio is weaker (W = 10, stride 1)"]["verdict"] == "not reproduced"
    assert c["Both optimizers reach the same capability"]["verdict"] == "partly"
