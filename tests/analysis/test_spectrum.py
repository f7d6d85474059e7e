import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import spectrum
from spectral_edge_fast.analysis._common import EPS

# Planted windows: W rows, all signal, a gap of ratio 4 after mode 2, ratio
# 1.25 elsewhere; P >= 1e4 coordinates of noise with std NU.
PLANTED = np.array([50.0, 40.0, 10.0, 8.0, 6.4, 5.12, 4.1, 3.28, 2.62, 2.1])
P_PLANTED, NU = 20_000, 2e-3
# sigma_j^2 ~ s_j^2 + nu^2 P + 2 s_j nu O(1): 1% covers the cross term at the
# smallest s_j with a wide margin; the ratio error compounds two such terms.
SIGMA_RTOL, RATIO_RTOL = 1e-2, 2e-2


def _rotated(eigenvalues, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("seed", range(25))
def test_planted_spectrum_recovered(make_window, seed):
    rng = np.random.default_rng(1000 + seed)
    X = make_window(rng, PLANTED, P_PLANTED, noise_std=NU)
    s = spectrum(X @ X.T)
    expected = np.sqrt(PLANTED**2 + NU**2 * P_PLANTED)
    assert s.status == "ok" and s.k_star == 2
    assert s.gap_ratio == pytest.approx(expected[1] / expected[2], rel=RATIO_RTOL)
    np.testing.assert_allclose(s.sigmas, expected, rtol=SIGMA_RTOL)


def test_matches_explicit_svd(make_window, svd_directions):
    rng = np.random.default_rng(7)
    X = make_window(rng, [9.0, 4.0, 3.0, 1.0, 0.5, 0.1], 300)
    s = spectrum(X @ X.T)
    sv, vt = svd_directions(X)
    np.testing.assert_allclose(s.sigmas, sv, rtol=1e-10)
    v = (X.T @ s.vectors) / s.sigmas
    np.testing.assert_allclose(np.abs(np.sum(v.T * vt, axis=1)), 1.0, atol=1e-9)


def test_definitions_on_a_known_spectrum():
    # sigma = 10, 5, 4, 1: ratios 2, 1.25, 4 -> k* = 3; weighted favours mode 1.
    s = spectrum(_rotated([100.0, 25.0, 16.0, 1.0], seed=3))
    assert s.k_star == 3 and s.weighted_k_star == 1
    assert s.gap_ratio == pytest.approx(4.0, rel=1e-12)
    assert s.gap == pytest.approx(3.0, rel=1e-12)
    assert s.eig_gap == pytest.approx(15.0, rel=1e-12)
    assert s.g23 == pytest.approx(9.0, rel=1e-12)
    assert s.pc1_fraction == pytest.approx(100.0 / 142.0, rel=1e-12)
    assert s.k_q == 3 and spectrum(s.vectors @ np.diag(s.eigenvalues) @ s.vectors.T, q=0.5).k_q == 1
    np.testing.assert_allclose(s.neighbour_gaps, [75.0, 9.0, 9.0, 1.0], rtol=1e-12)
    assert math.isnan(s.edge_ratio) and s.status == "partial"

    s = spectrum(_rotated([16.0, 9.0, 1.0, 0.25], seed=4))
    assert (s.k_star, s.status) == (2, "ok")
    assert s.edge_ratio == pytest.approx(2.0, rel=1e-12)


def test_exact_ratio_tie_goes_to_smaller_position():
    s = spectrum(np.diag([16.0, 4.0, 1.0]))  # both ratios exactly 2
    assert s.k_star == 1 and s.gap_ratio == 2.0


@pytest.mark.parametrize(
    "G, why",
    [
        (np.zeros((4, 4)), "all-zero"),
        (np.zeros((0, 0)), "no finite rows"),
        (np.array([[2.0]]), "one row"),
        (np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), "rank one"),
    ],
)
def test_undefined_is_a_status(G, why):
    s = spectrum(G)
    assert s.status == "undefined" and why in s.reason
    assert s.k_star is None and s.weighted_k_star is None
    assert math.isnan(s.gap_ratio) and math.isnan(s.gap)


def _tied_to_rounding(n, seed, ulps=2):
    """``lam Q diag(1 + k_i eps) Q^T``, ``|k_i| <= ulps``: eigenvalues tied up
    to a few ulps, in a random orthogonal basis."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(0.5, 4.0) * (1.0 + EPS * rng.integers(-ulps, ulps + 1, n))
    return (q * lam) @ q.T


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16, 33, 64])
def test_tied_spectrum(n):
    """Ties decided with float64's eps (an exact Gram) must survive the
    eigensolver's rounding, whatever the basis: the tolerance covers its
    error, not only the entries' rounding."""
    for G in [3.0 * np.eye(n)] + [_tied_to_rounding(n, seed) for seed in range(40)]:
        s = spectrum(G, eps=EPS)
        assert s.status == "tied" and s.k_star is None, s.reason
        assert s.gap_ratio == 1.0 and s.gap == 0.0
        assert (s.neighbour_gaps == 0.0).all()  # tied modes have no gap
    # a genuine gap just above the tolerance is still one
    s = spectrum(np.diag([1.0 + 2 * n * 9 * EPS, 1.0] + [0.0] * (n - 2)), eps=EPS)
    assert s.status in ("ok", "partial") and s.k_star == 1


def test_rank_deficient_window_counts_positive_modes(make_window):
    rng = np.random.default_rng(11)
    X = make_window(rng, [5.0, 2.0, 1.0], 200)
    X = np.vstack([X, X[:2] + X[2], 2.0 * X[1]])  # 6 rows, rank 3
    s = spectrum(X @ X.T)
    assert s.n == 6 and s.n_positive == 3
    assert np.all(s.eigenvalues[3:] == 0.0) and s.k_star <= 2


def test_nonfinite_rows_use_the_finite_submatrix(make_window):
    rng = np.random.default_rng(12)
    X = make_window(rng, [6.0, 3.0, 2.5, 1.0, 0.5], 100)
    G = X @ X.T
    G[2, :] = G[:, 2] = np.nan
    s = spectrum(G)
    keep = [0, 1, 3, 4]
    ref = spectrum((X @ X.T)[np.ix_(keep, keep)])
    assert s.status == "nonfinite_rows" and s.nonfinite_rows == (2,) and s.rows == tuple(keep)
    np.testing.assert_allclose(s.eigenvalues, ref.eigenvalues, rtol=1e-12)
    assert s.k_star == ref.k_star

    G[:, :] = np.inf
    assert spectrum(G).status == "undefined"


def test_float32_rounding_of_a_rank_deficient_window():
    """A rank-2 window whose zero eigenvalue carries float32-level rounding:
    with float64's eps it fakes a huge ratio; with float32's, the default, it is zero."""
    G = _rotated([30.0, 14.0, 30.0 * 3e-7], seed=14)
    assert spectrum(G, eps=EPS).gap_ratio > 100
    s = spectrum(G)
    assert s.tol == spectrum(G, eps=float(np.finfo(np.float32).eps)).tol
    assert s.n_positive == 2 and s.eigenvalues[2] == 0.0
    assert s.k_star == 1 and s.gap_ratio == pytest.approx(np.sqrt(30 / 14), rel=1e-12)


def test_validation():
    with pytest.raises(ValueError, match="square"):
        spectrum(np.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
        spectrum(np.ones(3))
    with pytest.raises(ValueError, match="symmetric"):
        spectrum(np.array([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="symmetric"):  # checked on the finite entries
        spectrum(np.array([[2.0, 1.0, np.nan], [0.0, 2.0, np.nan], [np.nan, np.nan, np.nan]]))
    with pytest.raises(ValueError, match="q"):
        spectrum(np.eye(3), q=0.0)
    with pytest.raises(ValueError, match="eps"):
        spectrum(np.eye(3), eps=-1.0)
    # float32 rounding of a Gram is not an error
    rng = np.random.default_rng(13)
    G = rng.standard_normal((6, 50))
    G = G @ G.T
    G[0, 1] *= 1 + 1e-7
    assert spectrum(G).n == 6


def test_values_only_spectrum_matches_the_full_one():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 500)) * np.linspace(3.0, 0.1, 12)[:, None]
    G = x @ x.T
    full, values = spectrum(G), spectrum(G, vectors=False)
    assert values.vectors.shape == (12, 0)
    np.testing.assert_allclose(values.eigenvalues, full.eigenvalues, rtol=1e-10, atol=1e-12 * full.eigenvalues[0])
    assert (values.k_star, values.k_q, values.status) == (full.k_star, full.k_q, full.status)
    assert values.gap_ratio == pytest.approx(full.gap_ratio, rel=1e-10)
