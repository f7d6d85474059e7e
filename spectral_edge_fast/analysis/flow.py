"""Eigenvalue flow across one slide of the window (docs/math.md#eigenvalue-flow).

The slide adds the entering update ``a`` and drops the leaving update ``b``:
``C' = C + a a^T - b b^T``. With ``v_j`` the directions of the window before
the slide, perturbation theory predicts ``Delta lambda_j`` from Gram entries
only; the measured change checks both the theory and the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._common import ENGINE_EPS, Result, as_gram, frozen_array, slide_norm
from .spectrum import Spectrum, spectrum


def delta_c_fro(extended_gram) -> float:
    """Exact ``||Delta C||_F = sqrt(||a||^4 + ||b||^4 - 2 (a.b)^2)`` from the
    extended Gram (row 0 the leaving ``b``, the last row the entering ``a``).

    NaN when ``a`` or ``b`` is non-finite."""
    return _delta_c_fro(as_gram(extended_gram, "extended_gram"))


def _delta_c_fro(E: np.ndarray) -> float:
    return float(slide_norm(E[-1, -1], E[0, 0], E[0, -1]))


def window_pair(extended_gram, previous: Optional[Spectrum], current: Optional[Spectrum], eps: float = ENGINE_EPS):
    """Validate an extended Gram and return ``(E, delta_c_fro, previous,
    current)``: the spectra of its leading and trailing ``n x n`` blocks
    (computed with ``eps`` unless given), or None for both when ``E`` has a
    non-finite entry.

    Raises:
        ValueError: ``E`` smaller than 2 x 2, or a given spectrum whose size
            is not ``n``.
    """
    E = as_gram(extended_gram, "extended_gram")
    n = E.shape[0] - 1
    if n < 1:
        raise ValueError(f"extended_gram must be (n+1) x (n+1) with n >= 1, got shape {E.shape}")
    dc = _delta_c_fro(E)
    if not np.isfinite(E).all():
        return E, dc, None, None
    previous = spectrum(E[:n, :n], eps=eps) if previous is None else previous
    current = spectrum(E[1:, 1:], eps=eps) if current is None else current
    for name, s in (("previous", previous), ("current", current)):
        if s.n != n:
            raise ValueError(f"{name} spectrum has n={s.n}, expected n={n} (the {name} window block of extended_gram)")
    return E, dc, previous, current


@dataclass(frozen=True, eq=False)
class EigenFlow(Result):
    """Measured and predicted eigenvalue changes over one slide.

    Arrays have one entry per mode ``j = 1..n`` of the previous window.
    Predictions exist for its positive modes; null modes (``lambda_j = 0``)
    have NaN predictions and ``valid = False``.

    Attributes:
        delta_c_fro: exact ``||Delta C||_F``.
        measured: ``lambda_j(current) - lambda_j(previous)``.
        entering, exiting: ``(v_j.a)^2`` and ``(v_j.b)^2``.
        first_order: ``(v_j.a)^2 - (v_j.b)^2`` (Hellmann-Feynman).
        second_order: first order plus ``sum_{k != j} (v_k^T dC v_j)^2 /
            (lambda_j - lambda_k) + ||a_perp||^2 (v_j.a)^2 / lambda_j``.
        a_perp_norm2: ``||a||^2 - sum_k (v_k.a)^2``, the part of ``a`` outside
            the previous window's span.
        neighbour_gaps: ``delta_j`` of the previous window.
        valid: ``delta_j > validity_factor * ||Delta C||_F`` (and above the
            zero tolerance): perturbation theory applies.
        k_star: gap position of the previous window.
        gap_increment: measured ``Delta(lambda_{k*} - lambda_{k*+1})``.
        gap_first_order, gap_second_order: its predictions.
        level_repulsion: ``2 (v_{k*}^T dC v_{k*+1})^2 / (lambda_{k*} - lambda_{k*+1})``.
        status, reason: ``"ok"``, ``"partial"`` (gap quantities undefined) or
            ``"undefined"`` (non-finite entries or no positive mode).
    """

    n: int
    delta_c_fro: float
    measured: np.ndarray
    entering: np.ndarray
    exiting: np.ndarray
    first_order: np.ndarray
    second_order: np.ndarray
    a_perp_norm2: float
    neighbour_gaps: np.ndarray
    valid: np.ndarray
    validity_factor: float
    k_star: Optional[int]
    gap_increment: float
    gap_first_order: float
    gap_second_order: float
    level_repulsion: float
    status: str
    reason: str


def eigen_flow(
    extended_gram,
    previous: Optional[Spectrum] = None,
    current: Optional[Spectrum] = None,
    validity_factor: float = 2.0,
    *,
    eps: float = ENGINE_EPS,
) -> EigenFlow:
    """Eigenvalue flow of one slide from the ``(n+1) x (n+1)`` extended Gram.

    Row 0 is the leaving update ``b`` (all zeros while the window fills:
    then ``Delta C = a a^T`` exactly), rows ``1..n`` the current window, so the
    leading block is the previous window and the trailing block the current.
    ``previous`` / ``current`` may pass their spectra to skip the eigensolves
    (pass both, computed with one ``eps``); ``eps`` is the zero tolerance's
    unit roundoff for the spectra computed here (``spectrum``).

    Every term comes from Gram entries: ``v_j.a = u_j^T (X_prev a) / sigma_j``
    with ``X_prev a = E[:n, n]``, likewise ``b`` with ``E[:n, 0]``. The null
    space of the previous covariance contributes ``||a_perp||^2 (v_j.a)^2 /
    lambda_j`` (``b`` lies in the span, ``a`` need not). On valid modes the
    first-order error is ``O(||Delta C||^2)``, the second-order ``O(||Delta C||^3)``.

    Raises:
        ValueError: see ``window_pair``; ``validity_factor < 0``.
    """
    if validity_factor < 0:
        raise ValueError(f"validity_factor must be >= 0, got {validity_factor}")
    E, dc, previous, current = window_pair(extended_gram, previous, current, eps)
    n = E.shape[0] - 1
    nan_n = frozen_array(np.full(n, math.nan))
    flow = dict(n=n, delta_c_fro=dc, validity_factor=float(validity_factor))
    if previous is None or previous.n_positive == 0:
        return EigenFlow(
            **flow,
            measured=nan_n if previous is None else frozen_array(current.eigenvalues - previous.eigenvalues),
            entering=nan_n,
            exiting=nan_n,
            first_order=nan_n,
            second_order=nan_n,
            a_perp_norm2=math.nan,
            neighbour_gaps=nan_n if previous is None else previous.neighbour_gaps,
            valid=frozen_array(np.zeros(n, bool), bool),
            k_star=None,
            gap_increment=math.nan,
            gap_first_order=math.nan,
            gap_second_order=math.nan,
            level_repulsion=math.nan,
            status="undefined",
            reason="extended_gram has non-finite entries" if previous is None else "the previous window has no positive eigenvalue",
        )

    m = previous.n_positive
    lam = previous.eigenvalues[:m]
    scaled = previous.vectors[:, :m] / previous.sigmas[:m]
    va = E[:n, n] @ scaled
    vb = E[:n, 0] @ scaled
    entering, exiting = va * va, vb * vb
    first = entering - exiting
    coupling = np.outer(va, va) - np.outer(vb, vb)  # v_k^T dC v_j
    denom = lam[None, :] - lam[:, None]  # lambda_j - lambda_k at [k, j]
    # Pairs tied within tol have no perturbative meaning; the mode is flagged
    # invalid below, and an infinite denominator keeps its prediction finite.
    denom[np.abs(denom) <= previous.tol] = np.inf
    a_perp2 = max(E[n, n] - float(entering.sum()), 0.0)
    second = first + (coupling * coupling / denom).sum(axis=0) + a_perp2 * entering / lam
    gaps = previous.neighbour_gaps[:m]
    valid = (gaps > validity_factor * dc) & (gaps > previous.tol)

    def pad(x):
        return frozen_array(np.concatenate((x, nan_n[m:])))

    measured = current.eigenvalues - previous.eigenvalues
    k = previous.k_star
    status, reason = "ok", ""
    gap_inc = gap_first = gap_second = repulsion = math.nan
    if k is None:
        status, reason = "partial", f"gap quantities undefined: the previous window has no gap position ({previous.reason})"
    else:
        gap_inc = float(measured[k - 1] - measured[k])
        gap_first = float(first[k - 1] - first[k])
        gap_second = float(second[k - 1] - second[k])
        repulsion = float(2.0 * coupling[k - 1, k] ** 2 / (lam[k - 1] - lam[k]))
    return EigenFlow(
        **flow,
        measured=frozen_array(measured),
        entering=pad(entering),
        exiting=pad(exiting),
        first_order=pad(first),
        second_order=pad(second),
        a_perp_norm2=a_perp2,
        neighbour_gaps=previous.neighbour_gaps,
        valid=frozen_array(np.concatenate((valid, np.zeros(n - m, bool))), bool),
        k_star=k,
        gap_increment=gap_inc,
        gap_first_order=gap_first,
        gap_second_order=gap_second,
        level_repulsion=repulsion,
        status=status,
        reason=reason,
    )
