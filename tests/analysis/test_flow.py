import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import delta_c_fro, eigen_flow, spectrum

# Scales keep the second-order error (~1e-6 to 1e-11) above the rounding of
# eigh (n eps lambda_1 ~ 1e-13) and ||dC|| (< 0.3) below the gaps (> 6).
SCALES = np.geomspace(0.5, 0.08, 6)
STAYING = (10.0, 7.0, 5.0, 3.5, 2.5)  # singular values of the rows that stay
P = 200


def slide(make_window, seed, scale, staying=STAYING):
    """Extended Gram of ``[s b; S; s a]`` and the explicit rows."""
    rng = np.random.default_rng(seed)
    S = make_window(rng, staying, P)
    a, b = rng.standard_normal((2, P)) / math.sqrt(P)
    Y = np.vstack([scale * b, S, scale * a])
    return Y @ Y.T, Y


def log_slope(x, y):
    return np.polyfit(np.log(x), np.log(y), 1)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_slopes(make_window, seed):
    """Scaling a and b by s scales ||dC|| as s^2, the first-order error as s^4
    and the second-order error as s^6 on the valid modes."""
    flows = [eigen_flow(slide(make_window, seed, s)[0]) for s in SCALES]
    valid = np.logical_and.reduce([f.valid for f in flows])
    assert valid.sum() >= 4  # the mode carried by b is swapped, not perturbed
    err1 = [np.abs(f.measured - f.first_order)[valid].max() for f in flows]
    err2 = [np.abs(f.measured - f.second_order)[valid].max() for f in flows]
    dc = [f.delta_c_fro for f in flows]
    assert log_slope(SCALES, dc) == pytest.approx(2.0, abs=0.05)
    assert log_slope(SCALES, err1) == pytest.approx(4.0, abs=0.3)
    assert log_slope(SCALES, err2) == pytest.approx(6.0, abs=0.4)
    assert log_slope(dc, err1) == pytest.approx(2.0, abs=0.15)
    assert log_slope(dc, err2) == pytest.approx(3.0, abs=0.2)


def test_second_order_matches_explicit_perturbation_sum(make_window, svd_directions):
    """The a_perp term stands for the whole null space: compare with the sum
    over an explicit eigenbasis of C = X^T X in R^P."""
    E, Y = slide(make_window, 3, 0.3)
    Y = Y[:, :40] * math.sqrt(P / 40)  # small P for an explicit P x P basis
    E = Y @ Y.T
    f = eigen_flow(E)
    n = E.shape[0] - 1
    C = Y[:n].T @ Y[:n]
    dC = np.outer(Y[-1], Y[-1]) - np.outer(Y[0], Y[0])
    lam, w = np.linalg.eigh(C)
    lam, w = lam[::-1], w[:, ::-1]
    lam[n:] = 0.0
    coupling = w.T @ dC @ w
    m = spectrum(E[:n, :n]).n_positive
    for j in range(m):
        others = np.arange(w.shape[1]) != j
        expected = coupling[j, j] + np.sum(coupling[others, j] ** 2 / (lam[j] - lam[others]))
        assert f.second_order[j] == pytest.approx(expected, rel=1e-8, abs=1e-10 * lam[0])
        assert f.first_order[j] == pytest.approx(coupling[j, j], rel=1e-9, abs=1e-12 * lam[0])


def test_gap_increment_and_level_repulsion(make_window):
    # A filling window (b = 0): with a small b in the window, its own tiny
    # mode would hold the gap position of the previous window.
    E, Y = slide(make_window, 4, 0.05, staying=(10.0, 8.0, 3.0, 2.5, 2.0))
    E[0, :] = E[:, 0] = Y[0] = 0.0
    f = eigen_flow(E)
    prev = spectrum(E[:-1, :-1])
    k = f.k_star
    assert k == prev.k_star == 2 and f.status == "ok" and f.valid[k - 1 : k + 1].all()
    assert f.gap_increment == pytest.approx(f.measured[k - 1] - f.measured[k], rel=1e-12)
    assert f.gap_second_order == pytest.approx(f.gap_increment, rel=1e-3)
    v = (Y[:-1].T @ prev.vectors[:, :k + 1]) / prev.sigmas[: k + 1]
    a, b = Y[-1], Y[0]
    dC_pair = (v[:, k - 1] @ a) * (v[:, k] @ a) - (v[:, k - 1] @ b) * (v[:, k] @ b)
    expected = 2 * dC_pair**2 / (prev.eigenvalues[k - 1] - prev.eigenvalues[k])
    assert f.level_repulsion == pytest.approx(expected, rel=1e-8)


def test_delta_c_fro_is_exact(make_window):
    E, Y = slide(make_window, 5, 0.7)
    dC = np.outer(Y[-1], Y[-1]) - np.outer(Y[0], Y[0])
    assert delta_c_fro(E) == pytest.approx(np.linalg.norm(dC), rel=1e-10)
    E[0, :] = E[:, 0] = 0.0  # window still filling: b = 0
    assert delta_c_fro(E) == pytest.approx(Y[-1] @ Y[-1], rel=1e-12)


def test_filling_window(make_window):
    E, Y = slide(make_window, 6, 0.1)
    E[0, :] = E[:, 0] = 0.0
    f = eigen_flow(E)
    prev = spectrum(E[:-1, :-1])
    m = prev.n_positive
    assert m == E.shape[0] - 2 and f.status == "ok"
    np.testing.assert_array_equal(f.exiting[:m], 0.0)
    assert np.all(np.isnan(f.first_order[m:])) and not f.valid[m:].any()
    v = (Y[1:-1].T @ prev.vectors[1:, :m]) / prev.sigmas[:m]
    np.testing.assert_allclose(f.entering[:m], (v.T @ Y[-1]) ** 2, rtol=1e-9)
    err = np.abs(f.measured - f.second_order)[f.valid]
    assert err.max() < 1e-4 * f.delta_c_fro


def test_undefined_and_errors(make_window):
    E, _ = slide(make_window, 7, 0.1)
    bad = E.copy()
    bad[-1, :] = bad[:, -1] = np.nan
    f = eigen_flow(bad)
    assert f.status == "undefined" and "non-finite" in f.reason and math.isnan(f.delta_c_fro)
    assert eigen_flow(np.zeros((4, 4))).status == "undefined"
    with pytest.raises(ValueError):
        eigen_flow(np.eye(1))
    with pytest.raises(ValueError, match="previous"):
        eigen_flow(E, previous=spectrum(E[:3, :3]))
    with pytest.raises(ValueError):
        eigen_flow(E, validity_factor=-1.0)


def test_precomputed_spectra_give_the_same_flow(make_window):
    E, _ = slide(make_window, 8, 0.2)
    n = E.shape[0] - 1
    a = eigen_flow(E)
    b = eigen_flow(E, previous=spectrum(E[:n, :n]), current=spectrum(E[1:, 1:]))
    scale = abs(a.second_order).max()  # not bits: LAPACK's may vary with the memory it is given
    np.testing.assert_allclose(a.second_order, b.second_order, rtol=1e-10, atol=1e-12 * scale)
