"""The gap flow of Theorem 14.2 and the level repulsion of Corollary 11.5,
measured (docs/math.md#gap-flow).

Each mode of the window follows, in the working form this project takes
(per optimizer step, ``sigma`` units),

    d sigma_j / dt = -lr (h_j + omega) sigma_j + every lr^2 G_j^2 / (2 sigma_j)

(dissipation by the curvature ``h_j`` and the weight decay ``omega``,
driving by the gradient's projection ``G_j`` on ``v_j``; ``every`` is the
window's stride). For the gap ``g = sigma_k - sigma_{k+1}`` at position
``k`` it gives three terms:

    curvature asymmetry  -lr (h_k - h_{k+1}) (sigma_k + sigma_{k+1}) / 2
    damping              -lr ((h_k + h_{k+1}) / 2 + omega) g
    driving              every lr^2 (G_k^2 / sigma_k - G_{k+1}^2 / sigma_{k+1}) / 2

whose sum is the predicted ``dg/dt``; ``gap_rate`` measures it between two
analyses and ``prediction_fit`` scores predictions against measurements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._common import Result, check_scalar
from .flow import EigenFlow
from .spectrum import Spectrum

#: the three terms of the gap flow, in the order of Theorem 14.2
TERMS = ("curvature_asymmetry", "damping", "driving")


@dataclass(frozen=True, eq=False)
class GapFlow(Result):
    """The terms of the gap flow at one analysis, per optimizer step.

    Attributes:
        k: the gap position followed (1-based; the spectrum's ``k*`` unless
            given).
        sigma_upper, sigma_lower: ``sigma_k``, ``sigma_{k+1}``.
        gap: ``g = sigma_k - sigma_{k+1}``.
        h_upper, h_lower: the curvatures ``h_k``, ``h_{k+1}``.
        grad_upper, grad_lower: the gradient projections ``G_k``, ``G_{k+1}``.
        lr, weight_decay, every: ``lr``, ``omega`` and the window's stride.
        curvature_asymmetry, damping, driving: the three terms.
        predicted: their sum, the predicted ``dg/dt``.
        status, reason: ``"ok"`` or ``"undefined"`` (no gap position, a
            zero ``sigma_{k+1}``, or a non-finite input).
    """

    k: Optional[int]
    sigma_upper: float
    sigma_lower: float
    gap: float
    h_upper: float
    h_lower: float
    grad_upper: float
    grad_lower: float
    lr: float
    weight_decay: float
    every: int
    curvature_asymmetry: float
    damping: float
    driving: float
    predicted: float
    status: str
    reason: str


def gap_flow(
    spectrum: Spectrum,
    curvatures,
    gradient,
    lr: float,
    weight_decay: float = 0.0,
    *,
    every: int = 1,
    k: Optional[int] = None,
) -> GapFlow:
    """The three terms of the gap flow (Theorem 14.2) at position ``k``.

    Args:
        spectrum: the window's spectrum.
        curvatures: ``h_j`` for modes ``1..m`` (``m >= k + 1``), e.g.
            ``direction_curvatures(...).preconditioned_curvatures`` (the
            curvature the optimizer's step sees).
        gradient: ``G_j = <grad L, v_j>`` for the same modes (preconditioned
            likewise).
        lr: the learning rate; ``weight_decay``: ``omega`` of a decoupled
            (AdamW-style) or an SGD weight decay, both shrink ``theta`` by
            ``lr omega theta`` per step.
        every: the window's stride ``s`` (updates are ``theta_t - theta_{t-s}``).
        k: the position; the spectrum's ``k*`` by default.

    Raises:
        ValueError: ``lr``, ``weight_decay`` negative, ``every < 1``, ``k`` out
            of ``1..n-1``, or fewer than ``k + 1`` curvatures or gradients.
    """
    lr = check_scalar(lr, "lr")
    omega = check_scalar(weight_decay, "weight_decay")
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    k = spectrum.k_star if k is None else int(k)
    nan = math.nan
    base = dict(lr=lr, weight_decay=omega, every=int(every))
    if k is None:
        return GapFlow(None, *[nan] * 7, **base, curvature_asymmetry=nan, damping=nan, driving=nan, predicted=nan,
                       status="undefined", reason=f"no gap position ({spectrum.reason})")
    if not 1 <= k < spectrum.n:
        raise ValueError(f"k must lie in 1..{spectrum.n - 1} (a mode with one below it), got {k}")
    h = np.asarray(curvatures, dtype=np.float64).reshape(-1)
    G = np.asarray(gradient, dtype=np.float64).reshape(-1)
    if min(len(h), len(G)) < k + 1:
        raise ValueError(f"need curvatures and gradient for modes 1..{k + 1}, got {len(h)} and {len(G)}")
    s1, s2 = float(spectrum.sigmas[k - 1]), float(spectrum.sigmas[k])
    h1, h2, G1, G2 = float(h[k - 1]), float(h[k]), float(G[k - 1]), float(G[k])
    gap = s1 - s2
    with np.errstate(all="ignore"):
        curv = -lr * (h1 - h2) * (s1 + s2) / 2
        damp = -lr * ((h1 + h2) / 2 + omega) * gap
        drive = int(every) * lr * lr * (G1 * G1 / s1 - G2 * G2 / s2) / 2 if s2 > 0 else nan
    total = curv + damp + drive
    status, reason = "ok", ""
    if s2 <= 0:
        status, reason = "undefined", f"sigma_{k + 1} is zero: the driving term divides by it"
    elif not math.isfinite(total):
        status, reason = "undefined", "a curvature, gradient projection or singular value is not finite"
    if status != "ok":
        curv = damp = drive = total = nan
    return GapFlow(k, s1, s2, gap, h1, h2, G1, G2, **base, curvature_asymmetry=curv, damping=damp, driving=drive,
                   predicted=total, status=status, reason=reason)


def gap_rate(previous: Spectrum, current: Spectrum, k: int, steps: float) -> float:
    """The measured ``dg/dt``: the change of ``sigma_k - sigma_{k+1}`` (same
    position ``k`` in both windows) over ``steps`` optimizer steps.

    Raises:
        ValueError: ``steps <= 0``, or ``k`` out of ``1..n-1`` of a window.
    """
    if not steps > 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    for name, s in (("previous", previous), ("current", current)):
        if not 1 <= k < s.n:
            raise ValueError(f"k must lie in 1..{s.n - 1} of the {name} window, got {k}")
    gap = [float(s.sigmas[k - 1] - s.sigmas[k]) for s in (previous, current)]
    return (gap[1] - gap[0]) / steps


@dataclass(frozen=True, eq=False)
class Fit(Result):
    """How well ``predicted`` matches ``measured`` (pairs with a NaN left out).

    Attributes:
        n: pairs used.
        correlation: Pearson correlation.
        r2: ``1 - sum (m - p)^2 / sum (m - mean m)^2``, the prediction taken
            as it is (no refitting: negative when it does worse than the mean).
        sign_agreement: fraction of pairs where both have the same sign
            (pairs with a zero left out).
        slope: least-squares ``c`` of ``measured ~ c predicted`` (1 for a
            prediction of the right scale).
        status, reason: ``"ok"`` or ``"undefined"`` (fewer than 3 pairs, or
            a constant series).
    """

    n: int
    correlation: float
    r2: float
    sign_agreement: float
    slope: float
    status: str
    reason: str


def prediction_fit(predicted: Sequence[float], measured: Sequence[float]) -> Fit:
    """Score ``predicted`` against ``measured``, pair by pair.

    Raises:
        ValueError: the two differ in length.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    m = np.asarray(measured, dtype=np.float64).reshape(-1)
    if p.shape != m.shape:
        raise ValueError(f"predicted and measured differ in length: {p.size} and {m.size}")
    keep = np.isfinite(p) & np.isfinite(m)
    p, m = p[keep], m[keep]
    n = int(p.size)
    nan = math.nan
    if n < 3 or np.ptp(m) == 0 or np.ptp(p) == 0:
        why = f"{n} finite pairs" if n < 3 else "a constant series"
        return Fit(n, nan, nan, nan, nan, "undefined", f"needs at least 3 pairs with varying values: {why}")
    corr = float(np.corrcoef(p, m)[0, 1])
    r2 = float(1.0 - ((m - p) ** 2).sum() / ((m - m.mean()) ** 2).sum())
    signed = (p != 0) & (m != 0)
    signs = float((np.sign(p[signed]) == np.sign(m[signed])).mean()) if signed.any() else nan
    slope = float((p @ m) / (p @ p))
    return Fit(n, corr, r2, signs, slope, "ok", "")


@dataclass(frozen=True, eq=False)
class RepulsionFit(Result):
    """Corollary 11.5 over a series of slides: the level-repulsion term
    ``2 (v_k^T dC v_{k+1})^2 / (lambda_k - lambda_{k+1})`` against the
    measured gap increment ``Delta(lambda_k - lambda_{k+1})``.

    Attributes:
        n: slides with a gap position.
        first_order: fit of the first-order prediction alone to the increment.
        with_repulsion: fit of first order plus repulsion to the increment.
        residual: fit of the repulsion to what the first order leaves
            (increment minus first order).
        mean_share: mean of ``repulsion / |increment|``.
    """

    n: int
    first_order: Fit
    with_repulsion: Fit
    residual: Fit
    mean_share: float


def level_repulsion(flows: Sequence[EigenFlow], valid_only: bool = False) -> RepulsionFit:
    """Corollary 11.5 against ``eigen_flow`` results of many slides.
    ``valid_only``: only slides where both edge modes pass the perturbative
    validity test (``EigenFlow.valid``)."""
    rows = []
    for f in flows:
        k = f.k_star
        if k is None or not math.isfinite(f.gap_increment):
            continue
        if valid_only and not (f.valid[k - 1] and f.valid[k]):
            continue
        rows.append((f.gap_increment, f.gap_first_order, f.level_repulsion))
    inc, first, rep = (np.array(c, dtype=np.float64) for c in zip(*rows)) if rows else (np.zeros(0),) * 3
    with np.errstate(all="ignore"):
        share = float(np.nanmean(rep / np.abs(inc))) if rows else math.nan
    return RepulsionFit(len(rows), prediction_fit(first, inc), prediction_fit(first + rep, inc),
                        prediction_fit(rep, inc - first), share)
