"""Curvature of the loss along the window's directions
(docs/math.md#curvature-along-the-window-directions).

The window gives every direction ``v_j = X^T u_j / sigma_j`` through
``GramWindow.combine``; one Hessian-vector product (double backward, on the
parameters' device) along each gives ``h_j = v_j^T H v_j`` on a batch the
caller chooses. Nothing of size ``P x P`` is formed. This module runs the
model, so unlike the rest of the analysis package it uses torch; it is meant
for analysis time (it reads results back to the host).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._common import Result, frozen_array
from .spectrum import Spectrum


def window_directions(window, spectrum: Spectrum, modes: Sequence[int]) -> List[List[torch.Tensor]]:
    """Unit directions ``v_j = X^T u_j / sigma_j`` for the 1-based ``modes``,
    each as float32 tensors shaped like ``window.layout.params``
    (``window.combine``).

    ``spectrum``: the spectrum of ``window.gram()`` (rows the spectrum left
    out as non-finite get coefficient 0).

    Raises:
        ValueError: a mode that is not a positive mode of ``spectrum``, or a
            spectrum of another window size.
    """
    if spectrum.window_rows != window.n:
        raise ValueError(f"spectrum was computed for a {spectrum.window_rows}-row window, the window has {window.n} rows")
    out = []
    for j in modes:
        if not 1 <= j <= spectrum.n_positive:
            raise ValueError(f"mode {j} is not a positive mode of the window (modes 1..{spectrum.n_positive})")
        c = np.zeros(window.n)
        c[list(spectrum.rows)] = spectrum.vectors[:, j - 1] / spectrum.sigmas[j - 1]
        out.append(window.combine(c))
    return out


@dataclass(frozen=True, eq=False)
class Curvatures(Result):
    """Curvature and gradient along each given direction, one entry per
    direction (Rayleigh quotients: a direction's length does not matter).

    Attributes:
        curvatures: ``h_j = v^T H v / v^T v``.
        gradient: ``<grad L, v> / |v|``.
        preconditioned_curvatures: ``(M v)^T H v / v^T v`` with ``M`` the
            diagonal preconditioner given (equal to ``curvatures`` without).
        preconditioned_gradient: ``<M grad L, v> / |v|``.
        direction_norms: ``|v|`` (1 within float32 rounding for
            ``window_directions``).
        loss: the loss at the point, on the batch.
        gradient_norm: ``|grad L|`` (what gradient clipping reads).
        status, reason: ``"ok"``, or ``"undefined"`` when the loss, a
            gradient or a product is non-finite (all values NaN).
    """

    curvatures: np.ndarray
    gradient: np.ndarray
    preconditioned_curvatures: np.ndarray
    preconditioned_gradient: np.ndarray
    direction_norms: np.ndarray
    loss: float
    gradient_norm: float
    status: str
    reason: str


def _dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(xs, ys))


def direction_curvatures(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    batch,
    directions: Sequence[Sequence[torch.Tensor]],
    *,
    preconditioner: Optional[Sequence[torch.Tensor]] = None,
) -> Curvatures:
    """``h_j = v_j^T H v_j`` and ``<grad L, v_j>`` along each direction, ``H``
    the Hessian of ``loss_fn(batch)`` with respect to ``params``.

    One backward pass with its graph kept, then one Hessian-vector product
    (double backward) per direction, on the parameters' device; the scaled
    dot-product attention runs its plain (twice differentiable) kernel
    meanwhile. ``directions``: each a list of tensors shaped like ``params``
    (``window_directions`` gives them for ``window.layout.params``).
    ``preconditioner``: a diagonal ``M`` (tensors shaped like ``params``, e.g.
    ``adam_preconditioner``) for the effective curvature ``(M v)^T H v`` and
    gradient ``M grad L`` that an adaptive optimizer's step sees.

    Raises:
        ValueError: no parameter, or a direction (or the preconditioner) whose
            tensors do not match ``params`` in number or shape.
    """
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors the directions live on (window.layout.params)")
    shapes = [tuple(p.shape) for p in params]

    def check(tensors, name):
        got = [tuple(t.shape) for t in tensors]
        if got != shapes:
            raise ValueError(f"{name} must be {len(shapes)} tensors shaped like params {shapes}, got {got}")

    for i, v in enumerate(directions):
        check(v, f"directions[{i}]")
    if preconditioner is not None:
        check(preconditioner, "preconditioner")
    k = len(directions)
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        loss = loss_fn(batch)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None]  # a parameter the loss ignores: zero rows of H
        p_used = [params[i] for i in used]
        # a gradient that is constant in the parameters (a linear loss term) contributes nothing to H v
        varying = [i for i in used if grads[i].requires_grad]
        h, hp, norms = (torch.zeros(k, dtype=torch.float64, device=params[0].device) for _ in range(3))
        for j, v in enumerate(directions):
            v_used = [v[i].to(params[i].dtype) for i in used]
            hv = torch.autograd.grad([grads[i] for i in varying], p_used,
                                     grad_outputs=[v[i].to(params[i].dtype) for i in varying],
                                     retain_graph=j < k - 1, allow_unused=True) if varying else [None] * len(used)
            hv = [torch.zeros_like(p) if x is None else x for x, p in zip(hv, p_used)]
            norms[j] = _dot(v, v).sqrt()
            h[j] = _dot(v_used, hv)
            hp[j] = h[j] if preconditioner is None else _dot([preconditioner[i] * v[i] for i in used], hv)
    with torch.no_grad():
        g = [grads[i].detach() if grads[i] is not None else torch.zeros_like(p) for i, p in enumerate(params)]
        gm = g if preconditioner is None else [m * x for m, x in zip(preconditioner, g)]
        proj = torch.stack([_dot(g, v) for v in directions]) if k else torch.zeros(0, dtype=torch.float64)
        proj_m = torch.stack([_dot(gm, v) for v in directions]) if k else proj
        grad_norm = float(_dot(g, g).sqrt())
    norms_np = norms.cpu().numpy()
    values = [h.cpu().numpy() / norms_np**2, proj.cpu().numpy() / norms_np,
              hp.cpu().numpy() / norms_np**2, proj_m.cpu().numpy() / norms_np]
    loss_value = float(loss.detach())
    status, reason = "ok", ""
    if not (math.isfinite(loss_value) and all(np.isfinite(x).all() for x in values)):
        status, reason = "undefined", "non-finite loss, gradient or Hessian-vector product at this point"
        values = [np.full(k, math.nan) for _ in values]
    return Curvatures(*(frozen_array(x) for x in values), frozen_array(norms_np), loss_value, grad_norm, status, reason)


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The diagonal ``1 / (sqrt(v_hat) + eps)`` that Adam or AdamW applies to
    the gradient of each of ``params`` at its next step (``v_hat`` the
    bias-corrected second moment, its running maximum under AMSGrad).

    Raises:
        ValueError: a parameter without Adam state (not in the optimizer, or
            no step taken yet), naming its index and shape.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if id(p) not in group_of or "exp_avg_sq" not in state:
            raise ValueError(f"parameter {i} (shape {tuple(p.shape)}) has no Adam second moment in the optimizer: "
                             "pass an Adam/AdamW optimizer that holds it, after its first step")
        group = group_of[id(p)]
        beta2, step = group["betas"][1], float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v / (1.0 - beta2**step)
        out.append(1.0 / (v_hat.sqrt() + group["eps"]))
    return out
