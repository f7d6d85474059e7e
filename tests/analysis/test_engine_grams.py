"""The analysis of the Grams the engine hands out: the obvious call
(``spectrum(window.gram())``, default arguments) gives the monitor's answer
and that of a float64 brute force, and the monitor's records equal the
per-group functions run with one tolerance on one decomposition per window."""
import math

import numpy as np
import pytest
import torch

from spectral_edge_fast import GramWindow
from spectral_edge_fast.analysis import eigen_flow, spectrum, stability, window_overlaps
from spectral_edge_fast.analysis._common import EPS, ENGINE_EPS
from spectral_edge_fast.monitor import SpectralMonitor

U32 = float(np.finfo(np.float32).eps) / 2


def _logistic(seed=0):
    """Logistic regression on two features: P = 3 numbers (weight 2, bias 1)."""
    torch.manual_seed(seed)
    return torch.nn.Linear(2, 1)


def _train(model, opt, steps, seed=0):
    """Yields the parameters (float64 copies, flattened) after each step."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(64, 2, generator=gen)
        y = (x[:, :1] - 0.5 * x[:, 1:] > 0).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy().copy()


def _brute_force(thetas, W, columns=slice(None)):
    """Float64 Gram of the last W updates, from float64 copies of the parameters."""
    X = np.diff(np.array(thetas), axis=0)[-W:, columns]
    return X @ X.T, X


def _value_rtol(G, X, lam):
    """Relative tolerance on eigenvalue ``lam`` of the engine's Gram: its
    entries err by up to ``2 u32 sqrt(L) sum |x_i y_i|`` (L = P here, float32
    accumulation) plus the float32 rounding of the updates themselves
    (``4 u32 |x| |y|``); an eigenvalue moves by at most ``||dG||_F``."""
    A = np.abs(X)
    bound = (2 * U32 * math.sqrt(X.shape[1]) + 4 * U32) * (A @ A.T)
    return 4 * np.linalg.norm(bound) / lam


@pytest.mark.parametrize("seed", range(3))
def test_rank_deficient_window_the_obvious_call_agrees(tmp_path, seed):
    """P = 3 at W = 8: five eigenvalues of the engine's Gram are float32
    rounding. With default arguments ``spectrum(win.gram())`` must count 3
    positive modes, as the monitor and a float64 brute force do, not report
    a gap between rounding noise and signal."""
    model = _logistic(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = SpectralMonitor(model, opt, window=8, analyze_every=1, groups=None, sinks=(), log_dir=str(tmp_path))
    thetas = [torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy().copy()]
    thetas += list(_train(model, opt, 12, seed))
    G64, X = _brute_force(thetas, 8)
    ref = spectrum(G64, eps=EPS)  # exact float64 Gram: float64's tolerance
    s = spectrum(mon.window.gram())
    record = mon.history[-1]
    assert ref.n_positive == 3 and ref.k_star is not None
    assert s.n_positive == record["spectrum"]["n_positive"] == 3
    assert s.k_star == record["k_star"] == ref.k_star
    for value in (s.gap_ratio, record["R"]):
        # R = sqrt(lam_k / lam_k+1): half the sum of the two relative errors
        rtol = 0.5 * (_value_rtol(G64, X, ref.eigenvalues[ref.k_star - 1]) + _value_rtol(G64, X, ref.eigenvalues[ref.k_star]))
        assert value == pytest.approx(ref.gap_ratio, rel=rtol)
    np.testing.assert_allclose(record["sigmas"], s.sigmas, rtol=1e-9, atol=1e-9 * s.sigmas[0])


def test_one_number_group_is_rank_one(tmp_path):
    """A parameter group of one number has a rank-one Gram: no gap ratio,
    whichever way it is asked for (the old float64 default reported R ~ 1e4)."""
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    model.scale = torch.nn.Parameter(torch.ones(()))  # one number, its own group with groups="tensor"
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    mon = SpectralMonitor(model, opt, window=8, analyze_every=1, groups="tensor", sinks=(), log_dir=str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    thetas = []
    for _ in range(12):
        x = torch.randn(16, 4, generator=gen)
        loss = (model.scale * model(x)).sin().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        thetas.append(model.scale.detach().double().item())
    G64 = np.outer(np.diff(thetas)[-8:], np.diff(thetas)[-8:])
    assert spectrum(G64, eps=EPS).status == "undefined"  # rank one
    name = next(g for g in mon.window.groups if "scale" in g)
    s = spectrum(mon.window.group_grams()[name])
    assert s.status == "undefined" and s.n_positive == 1 and math.isnan(s.gap_ratio)
    summary = mon.history[-1]["groups"][name]
    assert summary["R"] is None and summary["k_star"] is None
    assert summary["sigma_1"] == pytest.approx(float(np.sqrt(np.trace(G64))), rel=1e-5)


def _assert_close(got, want, scale, path="record"):
    """Records equal within rounding: numbers to 1e-7 relative (or 1e-9 of
    ``scale``), everything else exactly."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for k in want:
            _assert_close(got[k], want[k], scale, f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_close(a, b, scale, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, float), path
        if math.isnan(want) or math.isinf(want):
            assert got == want or (math.isnan(got) and math.isnan(want)), (path, got, want)
        else:
            assert got == pytest.approx(want, rel=1e-7, abs=1e-9 * scale), path
    else:
        assert got == want, path


@pytest.mark.parametrize("analyze_every, every", [(1, 1), (2, 2), (3, 1)])
def test_records_are_the_per_group_functions_with_one_tolerance(tmp_path, monkeypatch, analyze_every, every):
    """Every field of a record equals what the per-group functions give on
    the same window state with the engine's tolerance for both windows of
    the slide (a rank-deficient window, where float64's eps would count
    rounding noise as modes); with consecutive slides the decompositions come
    from the tracker's update."""
    model = _logistic(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = SpectralMonitor(model, opt, window=8, every=every, analyze_every=analyze_every, groups="tensor",
                          sinks=(), log_dir=str(tmp_path))
    states = []
    analyze = mon.analyze

    def capture(state, step, lr=None):
        states.append(state)
        return analyze(state, step, lr)

    monkeypatch.setattr(mon, "analyze", capture)
    list(_train(model, opt, 14 * analyze_every))
    records = mon.history
    assert len(records) == len(states) > 5
    for state, record in zip(states, records):
        n, E = state.n, state.extended_gram()
        cur, prev = spectrum(E[1:, 1:], eps=ENGINE_EPS), spectrum(E[:n, :n], eps=ENGINE_EPS)
        scale = max(cur.eigenvalues[0], 1e-300)
        dc = state.delta_c_fro()
        want = {"spectrum": cur.to_dict(), "stability": stability(cur, dc).to_dict(), "delta_c_fro": dc,
                "k_star": cur.k_star, "sigmas": cur.sigmas.tolist()}
        if n >= 2:
            want["flow"] = eigen_flow(E, prev, cur).to_dict()
            want["overlaps"] = window_overlaps(E, prev, cur).to_dict()
        for key, value in want.items():
            _assert_close(record[key], value, scale if key != "sigmas" else math.sqrt(scale), key)
        for name in state.groups:
            g = spectrum(state.gram(name), eps=ENGINE_EPS)
            want = {"k_star": g.k_star, "R": None if math.isnan(g.gap_ratio) else g.gap_ratio,
                    "gap": None if math.isnan(g.gap) else g.gap,
                    "k_margin": None if math.isnan(g.k_margin) else g.k_margin, "sigma_1": float(g.sigmas[0]),
                    "share": np.trace(state.gram(name)) / np.trace(state.gram()), "delta_c_fro": state.delta_c_fro(name)}
            _assert_close(record["groups"][name], want, math.sqrt(scale), f"groups.{name}")
    assert cur.n_positive == 3 < n and records[-1]["flow"]["k_star"] == prev.k_star
    tracker = mon.__dict__.get("_tracker")
    if analyze_every == every:
        assert tracker is not None and tracker.updated > 0  # decompositions carried from record to record
    else:
        assert tracker is None
