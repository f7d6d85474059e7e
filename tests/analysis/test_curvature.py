"""direction_curvatures against an explicit Hessian and against a quadratic
whose Hessian is known; window_directions against an SVD of the window."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from spectral_edge_fast import GramWindow
from spectral_edge_fast.analysis import adam_preconditioner, direction_curvatures, spectrum, window_directions

EPS32 = float(np.finfo(np.float32).eps)


def _flat(tensors):
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _split(flat, params):
    out, i = [], 0
    for p in params:
        out.append(flat[i : i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    return net, (x, y)


def _explicit_hessian(net, batch):
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    flat0 = _flat(params).detach()

    def loss_of(flat):
        tensors = _split(flat, params)
        out = torch.func.functional_call(net, dict(zip(names, tensors)), (batch[0].double(),))
        return ((out - batch[1].double()) ** 2).mean()

    return torch.autograd.functional.hessian(loss_of, flat0), torch.autograd.functional.jacobian(loss_of, flat0)


def test_curvatures_match_an_explicit_hessian():
    net, batch = _tiny_net()
    net.double()
    params = list(net.parameters())
    H, g = _explicit_hessian(net, batch)
    gen = torch.Generator().manual_seed(1)
    dirs = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params] for _ in range(3)]
    M = [torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5 for p in params]
    c = direction_curvatures(params, lambda b: ((net(b[0].double()) - b[1].double()) ** 2).mean(), batch, dirs,
                             preconditioner=M)
    assert c.status == "ok"
    m = _flat(M)
    for j, d in enumerate(dirs):
        v = _flat(d)
        n2 = float(v @ v)
        tol = 1e-10 * float(H.abs().sum())
        assert c.curvatures[j] == pytest.approx(float(v @ H @ v) / n2, abs=tol)
        assert c.preconditioned_curvatures[j] == pytest.approx(float((m * v) @ H @ v) / n2, abs=tol)
        assert c.gradient[j] == pytest.approx(float(g @ v) / math.sqrt(n2), abs=1e-12)
        assert c.preconditioned_gradient[j] == pytest.approx(float((m * g) @ v) / math.sqrt(n2), abs=1e-12)
        assert c.direction_norms[j] == pytest.approx(math.sqrt(n2))
    assert c.gradient_norm == pytest.approx(float(g.norm()))


def test_quadratic_with_known_hessian():
    # L = 1/2 theta^T A theta + b^T theta over two tensors: H = A, grad = A theta + b exactly
    gen = torch.Generator().manual_seed(2)
    P = 7
    B = torch.randn(P, P, generator=gen, dtype=torch.float64)
    A, b = B @ B.T - 2 * torch.eye(P, dtype=torch.float64), torch.randn(P, generator=gen, dtype=torch.float64)
    w1 = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def loss(_):
        t = torch.cat([w1, w2.reshape(-1)])
        return 0.5 * t @ A @ t + b @ t

    dirs = [[torch.eye(P, dtype=torch.float64)[i, :3], torch.eye(P, dtype=torch.float64)[i, 3:].view(2, 2)] for i in range(P)]
    c = direction_curvatures([w1, w2], loss, None, dirs)
    theta = torch.cat([w1, w2.reshape(-1)]).detach()
    np.testing.assert_allclose(c.curvatures, torch.diagonal(A).numpy(), rtol=0, atol=1e-12 * float(A.abs().max()))
    np.testing.assert_allclose(c.gradient, (A @ theta + b).numpy(), rtol=0, atol=1e-12 * float((A @ theta + b).abs().max()))
    np.testing.assert_array_equal(c.curvatures, c.preconditioned_curvatures)


def test_a_parameter_the_loss_ignores_has_zero_curvature():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    c = direction_curvatures([a, unused], lambda _: (a**4).sum(), None,
                             [[torch.tensor([1.0, 0.0]).double(), torch.ones(3).double()]])
    # v = (1, 0, 1, 1, 1) / 2: v^T H v = 12 a_0^2 / 4 = 3, |v|^2 = 1... here |v|^2 = 4 before scaling
    assert c.curvatures[0] == pytest.approx(12.0 / 4)
    assert c.gradient[0] == pytest.approx(4.0 / 2)


def test_shape_mismatch_raises():
    a = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"directions\[0\]"):
        direction_curvatures([a], lambda _: (a**2).sum(), None, [[torch.zeros(4)]])
    with pytest.raises(ValueError, match="preconditioner"):
        direction_curvatures([a], lambda _: (a**2).sum(), None, [[torch.zeros(3)]], preconditioner=[torch.ones(2)])
    with pytest.raises(ValueError, match="params is empty"):
        direction_curvatures([], lambda _: 0.0, None, [])


def test_nonfinite_loss_is_undefined():
    a = torch.ones(2, requires_grad=True)
    c = direction_curvatures([a], lambda _: (a / 0.0).sum(), None, [[torch.ones(2)]])
    assert c.status == "undefined" and math.isnan(c.curvatures[0])


def test_window_directions_are_the_unit_right_singular_vectors():
    gen = torch.Generator().manual_seed(3)
    w1, w2 = torch.zeros(40), torch.zeros(5, 6)
    win = GramWindow([w1, w2], window=5, backend="torch")
    rows = [torch.randn(70, generator=gen) * s for s in (5.0, 3.0, 2.0, 1.0, 0.5)]
    for r in rows:
        win.push([r[:40], r[40:].view(5, 6)])
    X = torch.stack(rows).double().numpy()
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    spec = spectrum(win.gram())
    dirs = window_directions(win, spec, [1, 2, 3])
    for j, d in enumerate(dirs):
        v = _flat(d).numpy()
        # float32 Gram and combine: error a few float32 units times the condition of mode j
        tol = 50 * EPS32 * s[0] / (min(abs(s[j] - s[j + 1]), s[j - 1] - s[j] if j else np.inf) if j < 4 else 1)
        assert abs(abs(v @ vt[j]) - 1) < tol and abs(np.linalg.norm(v) - 1) < 50 * EPS32 * s[0] / s[j]
    with pytest.raises(ValueError, match="mode 6"):
        window_directions(win, spec, [6])


def test_curvature_along_window_directions_of_a_model():
    """The whole path: a model trained a few steps, its window's directions,
    and the HVPs against the explicit Hessian along the same vectors."""
    net, batch = _tiny_net(4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    win = GramWindow(net, window=4, backend="torch")
    loss_fn = lambda b: ((net(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    for _ in range(5):
        opt.zero_grad()
        loss_fn(batch).backward()
        opt.step()
        win.step()
    spec = spectrum(win.gram())
    params = win.layout.params
    dirs = window_directions(win, spec, range(1, spec.n_positive + 1))
    c = direction_curvatures(params, loss_fn, batch, dirs, preconditioner=adam_preconditioner(opt, params))
    net.double()
    H, _ = _explicit_hessian(net, batch)
    for j, d in enumerate(dirs):
        v = _flat(d)
        exact = float(v @ H @ v) / float(v @ v)
        assert c.curvatures[j] == pytest.approx(exact, abs=1e-4 * float(H.abs().max()))


def test_adam_preconditioner_needs_adam_state():
    a = torch.zeros(2, requires_grad=True)
    opt = torch.optim.AdamW([a], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    with pytest.raises(ValueError, match="parameter 0"):
        adam_preconditioner(opt, [a])
    a.grad = torch.tensor([2.0, -4.0])
    opt.step()
    m = adam_preconditioner(opt, [a])[0]
    # after one step v_hat = g^2 exactly
    torch.testing.assert_close(m, 1.0 / (torch.tensor([2.0, 4.0]) + 1e-8))
