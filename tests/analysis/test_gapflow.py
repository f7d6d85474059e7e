"""The gap flow's terms on a synthetic quadratic problem whose flow is known in
closed form, the measured rate, the fit scores and Corollary 11.5's level
repulsion on slides where the second-order theory is exact."""
import math

import numpy as np
import pytest
import torch

from spectral_edge_fast.analysis import (
    direction_curvatures,
    eigen_flow,
    gap_flow,
    gap_rate,
    level_repulsion,
    prediction_fit,
    spectrum,
)
from spectral_edge_fast.analysis._common import EPS


def _quadratic(seed, n=3):
    """L = 1/2 theta^T A theta + b^T theta on R^n, with a theta where the
    gradient is given; curvatures and gradient along the axes by HVPs."""
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = B @ B.T + torch.diag(torch.tensor([0.5, 3.0, 1.0][:n], dtype=torch.float64))
    theta = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    axes = [[torch.eye(n, dtype=torch.float64)[i]] for i in range(n)]
    c = direction_curvatures([theta], lambda _: 0.5 * theta @ A @ theta + b @ theta, None, axes)
    return A, (A @ theta + b).detach(), c


def _window(lam):
    """A window of orthogonal rows: G = diag(lam), v_j the axes."""
    return spectrum(np.diag(lam), eps=EPS)


def test_terms_match_the_quadratic_in_closed_form():
    A, g, c = _quadratic(0)
    h, G = np.diag(A.numpy()), g.numpy()
    np.testing.assert_allclose(c.curvatures, h, rtol=1e-13)
    lam = np.array([4.0, 1.0, 0.25])
    lr, omega, s = 1e-2, 0.3, 5
    f = gap_flow(_window(lam), c.curvatures, c.gradient, lr, omega, every=s)
    s1, s2 = 2.0, 1.0
    assert f.k == 1 and f.status == "ok" and f.gap == pytest.approx(1.0)
    assert f.curvature_asymmetry == pytest.approx(-lr * (h[0] - h[1]) * (s1 + s2) / 2, rel=1e-12)
    assert f.damping == pytest.approx(-lr * ((h[0] + h[1]) / 2 + omega) * (s1 - s2), rel=1e-12)
    assert f.driving == pytest.approx(s * lr**2 * (G[0] ** 2 / s1 - G[1] ** 2 / s2) / 2, rel=1e-12)
    assert f.predicted == pytest.approx(f.curvature_asymmetry + f.damping + f.driving, rel=1e-12)
    # the two dissipative terms can only close the gap when the upper mode is the stiffer one
    assert h[0] < h[1] or f.curvature_asymmetry < 0
    assert f.damping < 0


def _lam(t, lam0, kappa, drive):
    """The working form with constant driving, solved: lambda' = -2 kappa lambda + drive."""
    inf = drive / (2 * kappa)
    return inf + (lam0 - inf) * np.exp(-2 * kappa * t)


def test_predicted_rate_is_the_exact_flow_of_the_quadratic():
    """Each mode decays at lr (h_j + omega) and is driven by the gradient's
    projection: the gap's closed-form derivative is the prediction, and the
    measured rate over a short interval converges to it at first order."""
    A, g, c = _quadratic(1)
    h, G = c.curvatures, c.gradient
    lr, omega, s = 1e-2, 0.2, 3
    kappa = lr * (h + omega)
    drive = s * lr**2 * G**2
    lam0 = np.array([5.0, 2.0, 0.5])
    t = 7.0
    lam = _lam(t, lam0, kappa, drive)
    dlam = -2 * kappa * lam + drive
    exact = dlam[0] / (2 * math.sqrt(lam[0])) - dlam[1] / (2 * math.sqrt(lam[1]))
    f = gap_flow(_window(lam), h, G, lr, omega, every=s, k=1)
    assert f.predicted == pytest.approx(exact, rel=1e-9)
    errors = []
    for dt in (1e-1, 1e-2):
        measured = gap_rate(_window(lam), _window(_lam(t + dt, lam0, kappa, drive)), 1, dt)
        errors.append(abs(measured - exact))
    assert errors[1] < 0.2 * errors[0] and errors[1] < 1e-2 * abs(exact)


def test_steady_state_has_no_flow():
    _, _, c = _quadratic(2)
    lr, omega, s = 1e-2, 0.1, 2
    lam = s * lr**2 * c.gradient**2 / (2 * lr * (c.curvatures + omega))
    order = np.argsort(-lam)
    f = gap_flow(_window(lam[order]), c.curvatures[order], c.gradient[order], lr, omega, every=s, k=1)
    scale = abs(f.curvature_asymmetry) + abs(f.damping) + abs(f.driving)
    assert abs(f.predicted) <= 1e-12 * scale


def test_undefined_and_errors():
    f = gap_flow(_window(np.array([1.0, 0.0])), [1.0, 1.0], [1.0, 1.0], 0.1)
    assert f.status == "undefined" and f.k is None and math.isnan(f.predicted)
    spec = _window(np.array([4.0, 1.0, 0.25]))
    f = gap_flow(spec, [1.0, math.nan], [1.0, 1.0], 0.1)
    assert f.status == "undefined" and "not finite" in f.reason
    with pytest.raises(ValueError, match="modes 1..3"):
        gap_flow(spec, [1.0, 1.0], [1.0, 1.0], 0.1, k=2)
    with pytest.raises(ValueError, match="k must lie"):
        gap_flow(spec, [1.0] * 3, [1.0] * 3, 0.1, k=3)
    with pytest.raises(ValueError, match="lr"):
        gap_flow(spec, [1.0] * 3, [1.0] * 3, -0.1)
    with pytest.raises(ValueError, match="every"):
        gap_flow(spec, [1.0] * 3, [1.0] * 3, 0.1, every=0)
    with pytest.raises(ValueError, match="steps"):
        gap_rate(spec, spec, 1, 0)
    assert f.to_dict()["status"] == "undefined"


def test_prediction_fit():
    rng = np.random.default_rng(0)
    m = rng.standard_normal(50)
    perfect = prediction_fit(m, m)
    assert perfect.r2 == pytest.approx(1.0) and perfect.correlation == pytest.approx(1.0)
    assert perfect.slope == pytest.approx(1.0) and perfect.sign_agreement == 1.0
    double = prediction_fit(2 * m, m)
    assert double.slope == pytest.approx(0.5) and double.correlation == pytest.approx(1.0)
    assert double.r2 == pytest.approx(1 - (m**2).sum() / ((m - m.mean()) ** 2).sum())
    opposite = prediction_fit(-m, m)
    assert opposite.sign_agreement == 0.0 and opposite.r2 < 0
    with_nan = prediction_fit(np.append(m, math.nan), np.append(m, 1.0))
    assert with_nan.n == 50
    assert prediction_fit([1.0, 2.0], [1.0, 2.0]).status == "undefined"
    assert prediction_fit([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]).status == "undefined"
    with pytest.raises(ValueError, match="length"):
        prediction_fit([1.0], [1.0, 2.0])


def _slides(seed, count, eps):
    """Two-row windows with nearly equal singular values, slid by an update
    ``a = b + eps d`` in the span: second-order theory of the gap is then
    first order plus the level repulsion exactly, up to O(eps^3)."""
    rng = np.random.default_rng(seed)
    flows = []
    for _ in range(count):
        q, _ = np.linalg.qr(rng.standard_normal((40, 2)))
        b = q[:, 0] * 1.0
        x1 = q[:, 1] * (1.0 + 0.05 * rng.uniform(0.5, 1.0)) + 0.01 * q[:, 0]
        d = q @ rng.standard_normal(2)
        a = b + eps * d
        R = np.stack([b, x1, a])
        flows.append(eigen_flow(R @ R.T, eps=EPS))
    return flows


def test_level_repulsion_accounts_for_the_gap_increment_beyond_first_order():
    worst = []
    for eps in (1e-3, 1e-4):
        flows = _slides(3, 12, eps)
        rel = []
        for f in flows:
            assert f.k_star == 1
            residual = f.gap_increment - f.gap_first_order
            # third order: relative error of the order of ||dC|| / (lambda_1 - lambda_2), plus rounding of lambda ~ 1
            rel.append(abs(residual - f.level_repulsion) / f.level_repulsion)
            assert abs(residual - f.level_repulsion) <= 4 * f.delta_c_fro / 0.05 * f.level_repulsion + 1e-13
        worst.append(max(rel))
        rep = level_repulsion(flows)
        assert rep.n == 12
        assert rep.residual.slope == pytest.approx(1.0, abs=0.1)
        assert rep.with_repulsion.r2 > rep.first_order.r2
    assert worst[1] < 0.3 * worst[0]  # the error shrinks with the slide
    # the aggregate is prediction_fit of the fields
    inc = np.array([f.gap_increment for f in flows])
    first = np.array([f.gap_first_order for f in flows])
    rep_terms = np.array([f.level_repulsion for f in flows])
    assert rep.residual.to_dict() == prediction_fit(rep_terms, inc - first).to_dict()
    assert level_repulsion([]).n == 0
