"""`spectral-edge reproduce causal`: Section 28's loss decomposition against
removing directions from the update, on the quick run, each measured number
checked against a direct computation from the kept checkpoints."""
import json
import math
import pathlib

import numpy as np
import pytest
import torch

from spectral_edge_fast import reproduce
from spectral_edge_fast.reproduce import causal
from spectral_edge_fast.reproduce.common import VERDICTS
from spectral_edge_fast.workloads.grokking import GrokkingConfig


def test_timepoints_span_the_transition_inside_the_checkpoints():
    metrics = [{"step": s, "test_acc": a} for s, a in ((0, 0.01), (100, 0.05), (200, 0.2), (300, 0.6), (400, 0.97))]
    # transition 200..400, checkpoints every 10 steps: indices 20..40
    assert causal.timepoints(metrics, 400, 10, 100, 5, 3) == [20, 30, 40]
    # the widest window's half clips them: 47 checkpoints, half 10 -> indices 10..36
    assert causal.timepoints(metrics, 400, 10, 47, 10, 3) == [20, 30, 36]
    # not grokked: up to the last evaluation
    assert causal.timepoints(metrics[:4], None, 10, 100, 5, 2) == [20, 30]
    with pytest.raises(RuntimeError, match="at least 21"):
        causal.timepoints(metrics, 400, 10, 15, 10, 3)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: a second thread only waits for a busy core
    out = tmp_path_factory.mktemp("causal")
    settings = reproduce.Settings(mode="quick", out=str(out), progress=False)
    try:
        yield settings, reproduce.run("causal", settings)
    finally:
        torch.set_num_threads(n)


def test_quick_run_results(quick):
    settings, results = quick
    data = json.loads((pathlib.Path(settings.out) / "results.json").read_text())
    assert data["experiment"] == "causal" and data["mode"] == "quick"
    assert {c["verdict"] for c in data["claims"]} <= set(VERDICTS) and len(data["claims"]) == 6
    r = results["runs"][0]
    p = causal.plan(settings, 42)
    assert r["seed"] == 42 and len(r["timepoint_steps"]) == p["timepoints"]
    for W in p["windows"]:
        w = r["windows"][str(W)]
        assert w["directions"] == len(r["timepoint_steps"]) * min(W // 2, p["modes"])
        for key in ("rho_alpha", "rho_no_alpha", "rho_taylor_removal", "r_total"):
            assert -1.0 <= w[key] <= 1.0
        for t in w["timepoints"]:
            # I_j = alpha_j G_j^train G_j^val, alpha in [0, 1]
            np.testing.assert_allclose(t["importance"], np.multiply(t["alpha"], np.multiply(t["grad_train"], t["grad_val"])))
            assert all(0.0 <= a <= 1.0 for a in t["alpha"])


def test_measurements_match_a_direct_computation(quick):
    """One timepoint of the largest window recomputed from the checkpoints
    with an SVD of the window and plain autograd, in float64."""
    settings, results = quick
    r = results["runs"][0]
    files = causal.finished(settings, 42)
    p = causal.plan(settings, 42)
    W = max(p["windows"])
    t = r["windows"][str(W)]["timepoints"][len(r["timepoint_steps"]) // 2]
    c = t["step"] // r["interval"]
    thetas = np.asarray(files["checkpoints"][c - W // 2 : c + W // 2 + 1], dtype=np.float64)
    X = np.diff(thetas, axis=0)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    np.testing.assert_allclose(t["sigma"], s[: len(t["sigma"])], rtol=1e-9)
    ev = causal._Evaluator(GrokkingConfig(**files["meta"]["config"]), p["examples"])
    g_val = ev.gradient(thetas[W // 2], "test")
    delta, end = thetas[-1] - thetas[0], thetas[-1]
    g_end = ev.gradient(end, "test")
    loss_end = ev.loss(end)
    scale = float(np.abs(t["removal"]).max())
    for j in range(len(t["sigma"])):
        v = vt[j]  # sign-free quantities only: products of two projections on v
        assert t["grad_val"][j] * t["grad_train"][j] == pytest.approx(
            (g_val @ v) * (ev.gradient(thetas[W // 2], "train") @ v), rel=1e-6, abs=1e-12)
        assert t["taylor"][j] == pytest.approx(-(g_end @ v) * (v @ delta), rel=1e-6, abs=1e-12)
        removed = ev.loss(end - (v @ delta) * v) - loss_end
        assert t["removal"][j] == pytest.approx(removed, abs=1e-6 * max(scale, 1e-3))


def test_a_finished_run_is_read_back(quick, monkeypatch):
    settings, results = quick
    assert causal.finished(settings, 42) is not None
    monkeypatch.setattr(causal, "train", lambda *a: pytest.fail("a finished run was trained again"))
    assert reproduce.run("causal", settings)["runs"][0]["windows"] == results["runs"][0]["windows"]
    other = reproduce.Settings(mode="quick", out=settings.out, seeds=[7], progress=False)
    assert causal.finished(other, 7) is None  # another seed's run is not there
    assert math.isfinite(results["runs"][0]["windows"]["4"]["mean_alpha"])
