import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import (
    first_order_split,
    loss_decomposition,
    projections,
    spectrum,
    stability,
)

RTOL = 1e-9  # Gram-space coefficients versus explicit parameter-space products


def window(make_window, seed, P=80, n=7):
    rng = np.random.default_rng(seed)
    X = make_window(rng, np.geomspace(12, 0.5, n), P)
    return X, rng


def span_projector(X):
    """Orthogonal projector onto the row space of ``X`` (explicit, P x P)."""
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    vt = vt[s > 1e-10 * s[0]]
    return vt.T @ vt


def test_projections_match_explicit_directions(make_window, svd_directions):
    X, rng = window(make_window, 0)
    y = rng.standard_normal(X.shape[1])
    pr = projections(X @ X.T, X @ y)
    _, vt = svd_directions(X)
    # <y, v_j> has the sign of v_j: compare sign-free products
    np.testing.assert_allclose(pr.coefficients**2, (vt @ y) ** 2, rtol=RTOL)
    s = spectrum(X @ X.T)
    v = (X.T @ s.vectors) / s.sigmas  # the directions the coefficients refer to
    np.testing.assert_allclose(pr.coefficients, v.T @ y, rtol=RTOL)
    assert pr.in_span_norm2 == pytest.approx(y @ span_projector(X) @ y, rel=RTOL)
    assert pr.status == "ok" and pr.n_modes == X.shape[0]


def test_projections_rank_deficient_and_nonfinite(make_window):
    X, rng = window(make_window, 1)
    X = np.vstack([X, X[0] - X[1]])  # a dependent row
    y = rng.standard_normal(X.shape[1])
    G = X @ X.T
    pr = projections(G, X @ y)
    assert pr.n_modes == X.shape[0] - 1
    assert pr.in_span_norm2 == pytest.approx(y @ span_projector(X) @ y, rel=RTOL)

    G[2, :] = G[:, 2] = np.nan
    p = X @ y
    p[2] = np.nan
    pr = projections(G, p)
    keep = np.delete(np.arange(X.shape[0]), 2)
    assert pr.status == "nonfinite_rows"
    assert pr.in_span_norm2 == pytest.approx(y @ span_projector(X[keep]) @ y, rel=RTOL)
    p[0] = np.nan  # a non-finite entry on an analysed row
    assert projections(G, p).status == "undefined"
    with pytest.raises(ValueError, match="length"):
        projections(G, p[:-1])
    with pytest.raises(ValueError, match="window"):
        projections(G[:3, :3], p[:3], spectrum=spectrum(G))


def test_loss_decomposition(make_window):
    X, rng = window(make_window, 2)
    g_train, g_val = rng.standard_normal((2, X.shape[1]))
    G = X @ X.T
    s = spectrum(G)
    alpha = stability(s, 0.3 * s.eigenvalues[-1])
    ld = loss_decomposition(G, X @ g_train, X @ g_val, alpha, lr=0.01, spectrum=s)
    v = (X.T @ s.vectors) / s.sigmas
    expected = alpha.alpha * (v.T @ g_train) * (v.T @ g_val)
    np.testing.assert_allclose(ld.importance, expected, rtol=RTOL)
    assert ld.predicted_delta_loss == pytest.approx(-0.01 * expected.sum(), rel=RTOL)
    # with alpha = 1 the terms add up to the in-span inner product
    ones = loss_decomposition(G, X @ g_train, X @ g_val, np.ones(s.n), lr=1.0)
    assert -ones.predicted_delta_loss == pytest.approx(g_train @ span_projector(X) @ g_val, rel=RTOL)
    with pytest.raises(ValueError, match="alpha"):
        loss_decomposition(G, X @ g_train, X @ g_val, np.ones(s.n + 1), lr=1.0)
    nan_alpha = loss_decomposition(G, X @ g_train, X @ g_val, np.full(s.n, math.nan), lr=1.0)
    assert nan_alpha.status == "undefined"


def test_first_order_split_out_of_span_update(make_window):
    X, rng = window(make_window, 3)
    grad, delta = rng.standard_normal((2, X.shape[1]))
    split = first_order_split(X @ X.T, X @ grad, X @ delta, grad_dot_update=grad @ delta)
    Pi = span_projector(X)
    assert split.status == "ok"
    assert split.terms.sum() == pytest.approx(split.in_span, rel=1e-14)
    assert split.in_span == pytest.approx(grad @ Pi @ delta, rel=RTOL)
    assert split.remainder == pytest.approx(grad @ (delta - Pi @ delta), rel=RTOL)


def test_first_order_split_newest_row_is_in_span(make_window):
    X, rng = window(make_window, 4)
    grad = rng.standard_normal(X.shape[1])
    G, p = X @ X.T, X @ grad
    split = first_order_split(G, p, G[-1], grad_dot_update=p[-1])
    assert abs(split.remainder) <= 1e-12 * np.linalg.norm(grad) * np.linalg.norm(X[-1])
    partial = first_order_split(G, p, G[-1])
    assert partial.status == "partial" and math.isnan(partial.remainder)
    assert partial.in_span == pytest.approx(p[-1], rel=1e-10)


def test_spearman_ranks_with_ties_against_hand_values():
    from spectral_edge_fast.analysis.decomposition import spearman

    x = np.array([1.0, 2.0, 2.0, 3.0, 10.0])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # any increasing map
    assert spearman(x, -x**3) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 0, 1.5, 1.5, 3, 4
    y = np.array([0.5, 0.1, 0.7, 0.9, 0.8])  # ranks 1, 0, 2, 4, 3
    assert spearman(x, y) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3, 4], [1, 0, 2, 4, 3])[0, 1])
    assert spearman(np.append(x, np.nan), np.append(y, 5.0)) == pytest.approx(spearman(x, y))  # non-finite pairs left out
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1.0, 2.0], [1.0])
