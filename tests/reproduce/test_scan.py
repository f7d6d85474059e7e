"""reproduce scan: the quick run end to end (Section 27's verdicts are tested
with reproduce dyck, which shares them)."""
import json

import pytest

from spectral_edge_fast import reproduce
from spectral_edge_fast.reproduce.common import Settings
from spectral_edge_fast.reproduce.scan import SIZES
from spectral_edge_fast.workloads.scan import ScanConfig, ScanRun


@pytest.mark.slow  # minutes on a shared 2-core CPU: two trainings, their monitors and reports
def test_quick_run_writes_results_and_reports(tmp_path):
    results = reproduce.run("scan", Settings(mode="quick", out=str(tmp_path), progress=False))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "scan" and data["mode"] == "quick"
    assert [(r["seed"], r["weight_decay"]) for r in data["runs"]] == [(42, 1.0), (42, 0.0)]
    assert len(data["claims"]) == 5 and all(c["why"] for c in data["claims"])
    for r in results["runs"]:
        assert r["steps"] == 100 and r["analyses"] > 0
        assert [m["step"] for m in r["curve"]] == [25, 50, 75, 100]
        assert all(m["wq_ratio"] >= 1.0 for m in r["curve"])  # sigma_1 / sigma_2 of the monitor's W_Q probe
        assert (tmp_path / f"scan-seed42-wd{r['weight_decay']:g}" / "spectral.jsonl").stat().st_size > 0
    assert (tmp_path / "report.html").exists()


def test_full_mode_is_the_papers_size():
    n = ScanRun(ScanConfig(**{**SIZES["full"], "limit": 10})).n_params
    assert 1_300_000 < n < 1_600_000
