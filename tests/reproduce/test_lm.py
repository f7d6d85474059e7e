"""`spectral-edge reproduce lm`: the tests of Sections 21-25 and 33 from a
run's records, checked on records made by hand, and the quick run end to end."""
import json
import math

import numpy as np
import pytest
import torch

from spectral_edge_fast import reproduce
from spectral_edge_fast.analysis import lead_lag, null_max_ratio
from spectral_edge_fast.reproduce import lm
from spectral_edge_fast.reproduce.common import VERDICTS


def files(n=30, W=4, seed=0):
    """A run's files as read_records gives them: the gap at k* = 2 in every
    window, the ratio at position 3 an affine map of the validation loss."""
    rng = np.random.default_rng(seed)
    loss = 3.0 - np.linspace(0, 1, n) + 0.1 * rng.standard_normal(n)
    analysis, metrics = [], []
    for t in range(n):
        s3 = 1.0 + loss[t] - loss.min()  # in [1, 2.3]: 50/40 < 40/(4 s3) > s3
        sigmas = [50.0 + rng.random(), 40.0, 4.0 * s3, 4.0]
        analysis.append({"step": 10 * (t + 1), "n": W, "lr": 1e-3, "sigmas": sigmas, "k_star": 2,
                         "R": 10.0 / s3, "alpha": [0.9, 0.8, 0.3, 0.1],
                         # alpha_j = 1 - (||Delta C||_F / delta_j)^2
                         "stability": {"delta_c_fro": 2.0, "neighbour_gaps": (2.0 / np.sqrt([0.1, 0.2, 0.7, 0.9])).tolist()}})
        metrics.append({"step": 10 * (t + 1), "val_loss": float(loss[t])})
    analysis.insert(0, {"step": 5, "n": 2, "lr": 1e-3, "sigmas": [1.0, 0.5], "k_star": 1, "R": 2.0,
                        "alpha": [0.0, 0.0], "stability": {"delta_c_fro": 1.0, "neighbour_gaps": [0.5, 0.5]}})  # a window still filling: left out
    meta = {"window": W, "every": 4, "numel": 10_000,
            "info": {"name": "lm seed 7", "parameters": 10_000, "config": {"batch_size": 16, "seed": 7}}}
    return {"meta": meta, "analysis": analysis, "metrics": metrics}


def test_analyse_against_hand_computations():
    f = files()
    r = lm.analyse(f)
    rec = f["analysis"][1:]
    assert r["windows"] == 30 and r["seed"] == 7 and r["steps"][0] == 10
    # Test 1: sigma_min / d_crit with nu = sqrt(every) lr / sqrt(batch)
    nu = math.sqrt(4) * 1e-3 / math.sqrt(16)
    d_crit = nu * (10_000 * 3) ** 0.25
    want = [x["sigmas"][-1] / d_crit for x in rec]
    assert r["bbp"]["min"] == pytest.approx(min(want)) and r["bbp"]["max"] == pytest.approx(max(want))
    # Test 2
    assert r["k_frequency"] == {2: 30} and r["k_mode"] == 2 and r["k_mode_fraction"] == 1.0
    assert r["null_q99"] == pytest.approx(null_max_ratio(4, 10_000).quantile(0.99))
    assert r["above_null_q99"] == 1.0 and r["R_max"] == pytest.approx(max(x["R"] for x in rec))
    # Remark 22.1: position 3's ratio is an affine map of the loss: r = 1 at lag 0
    assert r["cross_position"] == 3
    assert r["by_position"][2][1] == pytest.approx(1.0) and r["by_position"][2][3] == pytest.approx(1.0)
    # Test 4: the library's lead_lag on R and the loss
    ll = lead_lag([x["R"] for x in rec], [m["val_loss"] for m in f["metrics"]], range(-5, 8))
    assert r["lead_lag"]["zero"] == pytest.approx(ll.zero_lag_correlation, nan_ok=True)
    # Test 5: alpha pooled above, at and below each window's k*
    above = [a for x in rec for a in x["alpha"][: x["k_star"] - 1]]
    at = [x["alpha"][x["k_star"] - 1] for x in rec]
    below = [a for x in rec for a in x["alpha"][x["k_star"]:]]
    assert r["alpha"] == pytest.approx({"above": np.mean(above), "at": np.mean(at), "below": np.mean(below)})
    assert r["alpha"] == pytest.approx({"above": 0.9, "at": 0.8, "below": 0.2})
    # and the one-slide move against each tier's neighbour gaps, which sets alpha
    assert r["dc_over_gap"] == pytest.approx({"above": 0.1**0.5, "at": 0.2**0.5, "below": (0.7**0.5 + 0.9**0.5) / 2})
    assert r["alpha_zero"] == {"above": 0.0, "at": 0.0, "below": 0.0}


def test_claims_carry_every_test_with_a_valid_verdict():
    results = [lm.analyse(files(seed=s)) for s in (0, 1)]
    out = lm.claims(results)
    assert len(out) == 7 and all(c["verdict"] in VERDICTS for c in out)
    names = [c["claim"].split(" (")[0].split(":")[0] for c in out]
    assert names == ["Test 1", "Test 2", "Remark 22.1", "Test 4", "Test 5", "Section 33", "Test 3"]
    verdicts = dict(zip(names, (c["verdict"] for c in out)))
    assert "seed 7" in out[0]["ours"]  # each seed's numbers named
    assert verdicts["Test 1"] == "reproduced"  # sigma_min = 4 against d_crit = 0.0066
    assert verdicts["Test 2"] == "reproduced" and verdicts["Remark 22.1"] == "reproduced"  # 2 -> 3
    assert verdicts["Test 5"] == "reproduced"  # 0.9 > 0.8 > 0.2
    assert verdicts["Test 3"] == "not testable here"


def test_too_few_windows_is_refused():
    with pytest.raises(RuntimeError, match="lm seed 7: 5 full windows"):
        lm.analyse(files(n=5))


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only waits for a busy core
    yield
    torch.set_num_threads(n)


def test_quick_run_end_to_end(tmp_path, one_thread, monkeypatch):
    settings = reproduce.Settings(mode="quick", out=str(tmp_path), progress=False)
    results = reproduce.run("lm", settings)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "lm" and data["mode"] == "quick"
    assert {c["verdict"] for c in data["claims"]} <= set(VERDICTS)
    run = results["runs"][0]
    assert run["windows"] >= 20 and run["P"] == run["n_params"]
    assert all(math.isfinite(run["bbp"][k]) and run["bbp"][k] > 0 for k in ("min", "median", "max"))
    assert run["val_loss"][-1] < run["val_loss"][0]  # it learns
    assert (tmp_path / "seed0" / "spectral.jsonl").exists() and (tmp_path / "report.html").exists()
    # a finished run is read back, not trained again
    assert lm.finished(settings, 0) is not None
    monkeypatch.setattr(lm, "train", lambda *a: pytest.fail("a finished run was trained again"))
    assert reproduce.run("lm", settings)["runs"][0]["R"] == run["R"]
