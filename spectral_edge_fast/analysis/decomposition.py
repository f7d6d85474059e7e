"""Projections on the window's directions and the spectral loss decomposition
(docs/math.md#loss-decomposition, Thm 17.1).

For any ``y`` in parameter space the engine returns ``p = X y`` (oldest row
first); then ``<y, v_j> = u_j^T p / sigma_j`` for every positive mode, and
``sum_j <y, v_j>^2`` is the squared norm of the part of ``y`` in the span of
the window. Rows left out of the spectrum as non-finite are left out of ``p``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._common import ENGINE_EPS, Result, as_square, frozen_array
from .spectrum import Spectrum, spectrum as compute_spectrum


def _window_spectrum(G, spec: Optional[Spectrum], eps: float) -> Spectrum:
    if spec is None:
        return compute_spectrum(G, eps=eps)
    n = as_square(G).shape[0]
    if spec.window_rows != n:
        raise ValueError(f"spectrum was computed for a {spec.window_rows}-row window, G has {n} rows")
    return spec


def _coefficients(spec: Spectrum, p, name: str):
    """``<y, v_j>`` for the positive modes from ``p = X y``; None if ``p`` is
    non-finite on the analysed rows."""
    p = np.asarray(p, dtype=np.float64)
    n = spec.window_rows
    if p.shape != (n,):
        raise ValueError(f"{name} must be a vector of length {n} (one entry per window row), got shape {p.shape}")
    if spec.nonfinite_rows:
        p = p[list(spec.rows)]
    if not np.isfinite(p).all():
        return None
    m = spec.n_positive
    return (p @ spec.vectors[:, :m]) / spec.sigmas[:m]


def _status(spec: Spectrum, defined: bool, why: str):
    """Status shared by the results here: undefined when an input or the
    spectrum leaves nothing to project on; flagged when rows were dropped."""
    if spec.n_positive == 0:
        return "undefined", f"no positive mode ({spec.reason})"
    if not defined:
        return "undefined", why
    if spec.nonfinite_rows:
        return "nonfinite_rows", f"directions of the finite rows only: {spec.reason}"
    return "ok", ""


@dataclass(frozen=True, eq=False)
class Projections(Result):
    """``<y, v_j>`` for the positive modes of the window.

    Attributes:
        coefficients: ``<y, v_j>``, ``j = 1..n_modes``.
        in_span_norm2: ``sum_j <y, v_j>^2 = ||P_span y||^2``.
        status, reason: ``"ok"``, ``"nonfinite_rows"`` or ``"undefined"``
            (no positive mode, or non-finite ``p``).
    """

    n_modes: int
    coefficients: np.ndarray
    in_span_norm2: float
    status: str
    reason: str


def projections(G, p, spectrum: Optional[Spectrum] = None, *, eps: float = ENGINE_EPS) -> Projections:
    """Coordinates of ``y`` along the window's directions from ``p = X y``.
    ``spectrum``: the window's, to reuse; else computed with ``eps`` (see
    ``spectrum.spectrum``; the default is the engine's float32 precision).

    Raises:
        ValueError: ``p`` not a vector with one entry per row of ``G``.
    """
    spec = _window_spectrum(G, spectrum, eps)
    c = _coefficients(spec, p, "p")
    status, reason = _status(spec, c is not None, "p has non-finite entries")
    m = spec.n_positive
    c = np.full(m, math.nan) if c is None else c
    return Projections(m, frozen_array(c), float(c @ c), status, reason)


@dataclass(frozen=True, eq=False)
class LossDecomposition(Result):
    """Per-direction importance of Thm 17.1.

    Attributes:
        grad_train, grad_val: ``G_j = <grad L, v_j>`` for the two losses.
        alpha: the stability coefficients used (positive modes).
        importance: ``I_j = alpha_j G_j^train G_j^val``.
        predicted_delta_loss: ``-lr sum_j I_j``.
        status, reason: as ``Projections``; also undefined for NaN ``alpha``.
    """

    n_modes: int
    grad_train: np.ndarray
    grad_val: np.ndarray
    alpha: np.ndarray
    importance: np.ndarray
    predicted_delta_loss: float
    lr: float
    status: str
    reason: str


def loss_decomposition(
    G, p_train, p_val, alpha, lr: float, spectrum: Optional[Spectrum] = None, *, eps: float = ENGINE_EPS
) -> LossDecomposition:
    """Spectral loss decomposition: ``I_j = alpha_j <grad L_train, v_j> <grad L_val, v_j>``
    and the predicted loss change ``-lr sum_j I_j``.

    Args:
        G: the window's Gram matrix.
        p_train, p_val: ``X grad L_train`` and ``X grad L_val``.
        alpha: ``alpha_j`` per mode (length ``n`` of the spectrum), or a
            ``Stability`` result.
        lr: learning rate ``eta``.
        spectrum, eps: as in ``projections``.

    Raises:
        ValueError: shapes that do not match the window.
    """
    spec = _window_spectrum(G, spectrum, eps)
    alpha = np.asarray(getattr(alpha, "alpha", alpha), dtype=np.float64)
    if alpha.shape != (spec.n,):
        raise ValueError(f"alpha must have one entry per mode ({spec.n}), got shape {alpha.shape}")
    m = spec.n_positive
    g_train = _coefficients(spec, p_train, "p_train")
    g_val = _coefficients(spec, p_val, "p_val")
    alpha = alpha[:m]
    defined = g_train is not None and g_val is not None and bool(np.isfinite(alpha).all())
    status, reason = _status(spec, defined, "non-finite p_train, p_val or alpha")
    if not defined:
        g_train = np.full(m, math.nan) if g_train is None else g_train
        g_val = np.full(m, math.nan) if g_val is None else g_val
    importance = alpha * g_train * g_val
    return LossDecomposition(
        n_modes=m,
        grad_train=frozen_array(g_train),
        grad_val=frozen_array(g_val),
        alpha=frozen_array(alpha),
        importance=frozen_array(importance),
        predicted_delta_loss=float(-lr * importance.sum()) if m else math.nan,
        lr=float(lr),
        status=status,
        reason=reason,
    )


@dataclass(frozen=True, eq=False)
class FirstOrderSplit(Result):
    """Exact split of the first-order loss change ``<grad L, delta>``.

    Attributes:
        grad_coefficients: ``<grad L, v_j>``.
        update_coefficients: ``<v_j, delta>``.
        terms: their products; ``sum(terms) = in_span = <grad L, delta_parallel>``.
        total: ``<grad L, delta>`` when given, else NaN.
        remainder: ``total - in_span = <grad L, delta_perp>``, the part of the
            update outside the window's span (NaN without ``total``).
        status, reason: as ``Projections``; ``"partial"`` without ``total``.
    """

    n_modes: int
    grad_coefficients: np.ndarray
    update_coefficients: np.ndarray
    terms: np.ndarray
    in_span: float
    total: float
    remainder: float
    status: str
    reason: str


def first_order_split(
    G,
    p_grad,
    r_new,
    grad_dot_update: Optional[float] = None,
    spectrum: Optional[Spectrum] = None,
    *,
    eps: float = ENGINE_EPS,
) -> FirstOrderSplit:
    """Per-direction terms of ``<grad L, delta> = sum_j <grad L, v_j><v_j, delta> + <grad L, delta_perp>``.

    Args:
        G: the window's Gram matrix.
        p_grad: ``X grad L``.
        r_new: ``X delta`` for the update ``delta``. For the newest update of
            the window this is the last Gram row ``G[-1]``; ``delta`` is then
            in the span and the remainder is 0 to rounding (check it with
            ``grad_dot_update = p_grad[-1]``). An update outside the window
            (the next step, projected with the same kernel) has a genuine
            out-of-span part.
        grad_dot_update: ``<grad L, delta>``, needed for the remainder.
        spectrum, eps: as in ``projections``.

    Raises:
        ValueError: shapes that do not match the window.
    """
    spec = _window_spectrum(G, spectrum, eps)
    m = spec.n_positive
    g = _coefficients(spec, p_grad, "p_grad")
    d = _coefficients(spec, r_new, "r_new")
    defined = g is not None and d is not None
    status, reason = _status(spec, defined, "non-finite p_grad or r_new")
    if not defined:
        g = np.full(m, math.nan) if g is None else g
        d = np.full(m, math.nan) if d is None else d
    terms = g * d
    in_span = float(terms.sum())
    total = math.nan if grad_dot_update is None else float(grad_dot_update)
    if grad_dot_update is None and status == "ok":
        status, reason = "partial", "grad_dot_update not given: the out-of-span remainder is unknown"
    return FirstOrderSplit(
        n_modes=m,
        grad_coefficients=frozen_array(g),
        update_coefficients=frozen_array(d),
        terms=frozen_array(terms),
        in_span=in_span,
        total=total,
        remainder=total - in_span,
        status=status,
        reason=reason,
    )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing the mean of their ranks."""
    ranks = np.empty(x.size)
    ranks[np.argsort(x, kind="stable")] = np.arange(x.size)
    _, tie, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(tie, weights=ranks) / counts)[tie]


def spearman(x, y) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` over the pairs where
    both are finite (ties share their mean rank): how well a per-direction
    prediction orders the measured effects. NaN with fewer than three such
    pairs or a constant sample.

    Raises:
        ValueError: ``x`` and ``y`` not 1-D of equal length.
    """
    from .events import _pearson

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return _pearson(_average_ranks(x[ok]), _average_ranks(y[ok]))
