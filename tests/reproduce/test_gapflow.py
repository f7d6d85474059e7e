"""`spectral-edge reproduce gapflow`: the verdicts from fits, and the quick
run end to end (grokking and the byte-level LM)."""
import json
import math
import os

import pytest

from spectral_edge_fast import reproduce
from spectral_edge_fast.analysis import prediction_fit
from spectral_edge_fast.analysis.gapflow import TERMS
from spectral_edge_fast.reproduce import gapflow
from spectral_edge_fast.reproduce.common import VERDICTS


def test_verdicts_need_the_right_sign_and_scale():
    m = [1.0, -2.0, 3.0, -0.5, 2.5, 0.2]
    assert gapflow._verdict(prediction_fit(m, m).to_dict()) == "reproduced"
    # right direction but 10x too large: not a prediction of the gap's motion
    assert gapflow._verdict(prediction_fit([10 * x for x in m], m).to_dict()) == "not reproduced"
    assert gapflow._verdict(prediction_fit([2 * x + 1 for x in m], m).to_dict()) == "partly"
    assert gapflow._verdict(prediction_fit([-x for x in m], m).to_dict()) == "not reproduced"
    assert gapflow._verdict(prediction_fit([1.0], [1.0]).to_dict()) == "not testable here"


def test_quick_run(tmp_path):
    out = str(tmp_path / "gapflow")
    r = reproduce.run("gapflow", reproduce.Settings(mode="quick", out=out, progress=False))
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["experiment"] == "gapflow" and {c["verdict"] for c in saved["claims"]} <= set(VERDICTS)
    names = [run["name"] for run in r["runs"]]
    assert names[0] == "grokking-seed0"
    for run in r["runs"]:
        assert os.path.isfile(os.path.join(out, run["name"], "report.html"))
        rows = run["intervals"]
        assert len(rows) >= 5
        for row in rows:
            assert math.isfinite(row["measured"])
            for prefix in ("", "plain_"):
                terms = sum(row[prefix + t] for t in TERMS)
                assert row[prefix + "predicted"] == pytest.approx(terms, rel=1e-9, abs=1e-15)
        measured = [row["measured"] for row in rows]
        assert run["fits"]["predicted"] == prediction_fit([row["predicted"] for row in rows], measured).to_dict()
    claims = [c["claim"] for c in r["claims"]]
    assert sum("Theorem 14.2" in c for c in claims) == 4 and sum("Corollary 11.5" in c for c in claims) == 2
    assert "grokking" in r["summary"] and "LM" in r["summary"]
