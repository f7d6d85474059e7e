import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import (
    adiabatic,
    delta_c_fro,
    half_window_overlaps,
    spectrum,
    stability,
    window_overlaps,
)

OVERLAP_ATOL = 1e-9  # cosines from Gram entries versus an SVD of X, well-separated modes


def principal_cosines(va, vb):
    """Cosines of the principal angles between the row spaces of ``va``, ``vb``."""
    return np.linalg.svd(va @ vb.T, compute_uv=False)


def test_alpha_formula():
    lam = np.array([100.0, 60.0, 50.0, 5.0])
    s = spectrum(np.diag(lam))
    gaps = np.array([40.0, 10.0, 10.0, 5.0])  # top one-sided, null space below the last
    np.testing.assert_allclose(s.neighbour_gaps, gaps)
    st = stability(s, 4.0)
    np.testing.assert_allclose(st.alpha, np.maximum(0.0, 1 - 16.0 / gaps**2), rtol=1e-14)
    lin = stability(s, 4.0, C=2.0, squared=False)
    np.testing.assert_allclose(lin.alpha, np.clip(1 - 8.0 / gaps, 0, 1), rtol=1e-14)
    np.testing.assert_array_equal(stability(s, 0.0).alpha, 1.0)
    assert stability(s, 20.0).alpha[-1] == 0.0
    np.testing.assert_array_equal(stability(spectrum(np.diag([4.0, 0.0])), 1.0, C=0.0).alpha, 1.0)


def test_alpha_edge_cases():
    rank2 = spectrum(np.diag([4.0, 1.0, 0.0]))
    assert stability(rank2, 0.1).alpha[2] == 0.0  # a null mode has no protection
    st = stability(rank2, math.nan)
    assert st.status == "undefined" and np.isnan(st.alpha).all()
    assert stability(spectrum(np.zeros((0, 0))), 1.0).status == "undefined"
    with pytest.raises(ValueError):
        stability(rank2, -1.0)


def extended(make_window, seed, staying, P, scale=0.3):
    rng = np.random.default_rng(seed)
    S = make_window(rng, staying, P)
    a, b = scale * rng.standard_normal((2, P))
    Y = np.vstack([b, S, a])
    return Y @ Y.T, Y


@pytest.mark.parametrize("filling", [False, True])
def test_window_overlaps_match_explicit_svd(make_window, svd_directions, filling):
    E, Y = extended(make_window, 1, [9.0, 6.0, 4.0, 2.5, 1.5], 60, scale=1.0)
    if filling:
        E[0, :] = E[:, 0] = Y[0] = 0.0
    n = E.shape[0] - 1
    ov = window_overlaps(E)
    _, v_prev = svd_directions(Y[:n])
    _, v_cur = svd_directions(Y[1:])
    m = n - 1 if filling else n
    assert ov.status == "ok" and ov.n_modes == m
    explicit = np.abs(v_cur[:m] @ v_prev[:m].T)
    np.testing.assert_allclose(np.abs(ov.matrix), explicit, atol=OVERLAP_ATOL)
    np.testing.assert_allclose(ov.overlaps, np.diagonal(explicit), atol=OVERLAP_ATOL)
    assert ov.cluster_gap == pytest.approx(delta_c_fro(E))


def test_near_degenerate_cluster_uses_principal_angles(make_window, svd_directions):
    # Modes 2 and 3 of the staying rows tied to 1e-9: a and b split them by
    # less than ||dC||, so individual vectors are arbitrary; their span is not.
    E, Y = extended(make_window, 2, [8.0, 4.0, 4.0 * (1 + 1e-9), 2.0, 1.0], 40, scale=0.02)
    n = E.shape[0] - 1
    ov = window_overlaps(E)
    assert ov.clusters == ((2, 3),) and ov.subspace_overlaps[1] > 0.999
    _, v_prev = svd_directions(Y[:n])
    _, v_cur = svd_directions(Y[1:])
    expected = principal_cosines(v_cur[1:3], v_prev[1:3])
    np.testing.assert_allclose(ov.cluster_cosines[0], expected, atol=OVERLAP_ATOL)
    assert ov.subspace_overlaps[1] == ov.subspace_overlaps[2] == pytest.approx(np.sqrt(np.mean(expected**2)))
    np.testing.assert_allclose(ov.subspace_overlaps[[0, 3, 4]], ov.overlaps[[0, 3, 4]])
    assert window_overlaps(E, cluster_gap=0.0).clusters == ()
    quick = window_overlaps(E, principal_angles=False)
    assert quick.cluster_cosines == () and quick.clusters == ov.clusters
    np.testing.assert_allclose(quick.subspace_overlaps, ov.subspace_overlaps, rtol=1e-12)


@pytest.mark.parametrize("n", [6, 7])
def test_half_window_overlaps_match_explicit_svd(make_window, svd_directions, n):
    rng = np.random.default_rng(3 + n)
    X = make_window(rng, np.geomspace(10, 1, n), 30) + 0.2 * rng.standard_normal((n, 30))
    h = n // 2
    ov = half_window_overlaps(X @ X.T, cluster_gap=0.0)
    _, v1 = svd_directions(X[:h])
    _, v2 = svd_directions(X[h:])
    np.testing.assert_allclose(np.abs(ov.matrix), np.abs(v2[:h] @ v1[:h].T), atol=OVERLAP_ATOL)
    C1, C2 = X[:h].T @ X[:h], X[h:].T @ X[h:]
    assert half_window_overlaps(X @ X.T).cluster_gap == pytest.approx(np.linalg.norm(C1 - C2), rel=1e-10)


def test_overlaps_undefined_and_errors(make_window):
    E, _ = extended(make_window, 4, [3.0, 2.0, 1.0], 20)
    bad = E.copy()
    bad[1, :] = bad[:, 1] = np.nan
    assert window_overlaps(bad).status == "undefined"
    assert half_window_overlaps(bad).status == "undefined"
    assert half_window_overlaps(np.eye(1)).status == "undefined"
    assert window_overlaps(np.zeros((4, 4))).status == "undefined"
    with pytest.raises(ValueError, match="symmetric"):
        window_overlaps(E + np.triu(np.ones_like(E)))
    with pytest.raises(ValueError, match="current"):
        window_overlaps(E, current=spectrum(E[:2, :2]))


def test_reused_spectra_give_the_same_overlaps(make_window):
    E, _ = extended(make_window, 5, [5.0, 3.0, 2.0, 1.0], 30)
    n = E.shape[0] - 1
    a = window_overlaps(E)
    b = window_overlaps(E, previous=spectrum(E[:n, :n]), current=spectrum(E[1:, 1:]))
    np.testing.assert_allclose(a.matrix, b.matrix, rtol=1e-12, atol=1e-12)  # not bits: LAPACK's may vary


def test_adiabatic():
    s = spectrum(np.diag([100.0, 16.0, 9.0]))  # sigma 10, 4, 3: k* = 1, g = 6
    ad = adiabatic(s, delta_c_fro=0.5, lr=1e-2)
    assert ad.status == "ok" and ad.A == pytest.approx(0.5 / (1e-2 * 36.0))
    np.testing.assert_allclose(ad.rotation_bounds, 0.5 / s.neighbour_gaps)
    assert ad.A_over_median == 1.0
    hist = [ad.A / 2, ad.A / 4, math.nan, ad.A / 2]
    assert adiabatic(s, 0.5, 1e-2, history=hist).A_over_median == pytest.approx(2.0)
    for spec, lr in ((spectrum(np.eye(3)), 1e-2), (spectrum(np.diag([4.0, 0, 0])), 1e-2), (s, 0.0)):
        out = adiabatic(spec, 0.5, lr)
        assert out.status == "undefined" and math.isnan(out.A)
    assert np.isnan(adiabatic(s, math.nan, 1e-2).rotation_bounds).all()
