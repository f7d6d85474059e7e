"""Subspace stability: the Davis-Kahan coefficient ``alpha_j``, measured
eigenvector overlaps (consecutive windows, half windows, principal angles
inside near-degenerate clusters) and the adiabatic parameter
(docs/math.md#stability, docs/math.md#adiabatic-parameter).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ._common import ENGINE_EPS, Result, as_gram, check_scalar, frozen_array
from .flow import window_pair
from .spectrum import Spectrum, spectrum


def gap_ratios(gaps: np.ndarray, delta_c_fro) -> np.ndarray:
    """``||Delta C||_F / delta_j``: inf where ``delta_j = 0 < ||Delta C||_F``,
    0 where nothing moved. ``gaps`` [..., n], ``delta_c_fro`` a float or one
    per leading index."""
    dc = np.expand_dims(delta_c_fro, -1)
    out = np.broadcast_to(np.where(dc > 0, np.inf, 0.0), gaps.shape).copy()
    return np.divide(dc, gaps, out=out, where=gaps > 0)


def davis_kahan(ratio: np.ndarray, C: float, squared: bool) -> np.ndarray:
    """``alpha = clamp(1 - C ratio^2, 0, 1)`` (or ``1 - C ratio``) from ``gap_ratios``."""
    penalty = C * (ratio * ratio if squared else ratio) if C > 0 else np.zeros(ratio.shape)  # 0 * inf is NaN
    return np.clip(1.0 - penalty, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Stability(Result):
    """Davis-Kahan stability coefficients of the window's modes.

    Attributes:
        alpha: ``alpha_j`` per mode (1 = the direction cannot rotate, 0 = no
            protection); modes with ``delta_j = 0`` get 0 (1 if ``Delta C = 0``).
        neighbour_gaps: ``delta_j`` (docs/math.md#neighbour-gaps).
        delta_c_fro, C, squared: the inputs.
        status, reason: ``"ok"`` or ``"undefined"`` (no rows, NaN ``delta_c_fro``).
    """

    alpha: np.ndarray
    neighbour_gaps: np.ndarray
    delta_c_fro: float
    C: float
    squared: bool
    status: str
    reason: str


def stability(spectrum: Spectrum, delta_c_fro: float, C: float = 1.0, squared: bool = True) -> Stability:
    """Stability coefficients ``alpha_j`` (the author's code, Section 16).

    ``squared=True``: ``alpha_j = max(0, 1 - C ||Delta C||_F^2 / delta_j^2)``;
    ``squared=False``: the linear reading ``clamp(1 - C ||Delta C||_F / delta_j, 0, 1)``.
    ``delta_c_fro`` is the exact ``||Delta C||_F`` of the last slide
    (``delta_c_fro(extended_gram)`` or the engine's value).

    Raises:
        ValueError: negative ``delta_c_fro`` or ``C``.
    """
    dc = check_scalar(delta_c_fro, "delta_c_fro")
    C = check_scalar(C, "C")
    status, reason = "ok", ""
    if spectrum.n == 0 or math.isnan(dc):
        status = "undefined"
        reason = "no rows in the window" if spectrum.n == 0 else "delta_c_fro is NaN: a non-finite update is in the window"
        alpha = np.full(spectrum.n, math.nan)
    else:
        alpha = davis_kahan(gap_ratios(spectrum.neighbour_gaps, dc), C, squared)
    return Stability(
        alpha=frozen_array(alpha),
        neighbour_gaps=spectrum.neighbour_gaps,
        delta_c_fro=dc,
        C=C,
        squared=bool(squared),
        status=status,
        reason=reason,
    )


@dataclass(frozen=True, eq=False)
class Adiabatic(Result):
    """Adiabatic parameter and per-mode rotation bounds (Section 34).

    Attributes:
        A: ``||Delta C||_F / (lr g^2)``, ``g = sigma_{k*} - sigma_{k*+1}``.
        A_over_median: ``A`` over the median of ``history + [A]`` (finite values):
            ``A`` has units, this ratio does not.
        gap, lr, delta_c_fro: the inputs of ``A``.
        rotation_bounds: ``||Delta C||_F / delta_j`` per mode (Davis-Kahan
            per-step ``sin theta`` bound; inf where ``delta_j = 0``).
        status, reason: ``"ok"`` or ``"undefined"`` (no gap position, ``g = 0``,
            ``lr = 0`` or NaN ``delta_c_fro``).
    """

    A: float
    A_over_median: float
    gap: float
    lr: float
    delta_c_fro: float
    rotation_bounds: np.ndarray
    status: str
    reason: str


def adiabatic(spectrum: Spectrum, delta_c_fro: float, lr: float, history: Sequence[float] = ()) -> Adiabatic:
    """Adiabatic parameter ``A = ||Delta C||_F / (lr g^2)``.

    Regimes: ``A << 1`` plateau, ``A ~ 1`` phase transition, ``A >> 1``
    forgetting. ``history`` holds earlier values of ``A`` for the running
    median (the caller keeps the window it wants).

    Raises:
        ValueError: negative ``delta_c_fro`` or ``lr``.
    """
    dc = check_scalar(delta_c_fro, "delta_c_fro")
    lr = check_scalar(lr, "lr")
    g = spectrum.gap
    undefined = []
    if spectrum.k_star is None:
        undefined.append(f"no gap position ({spectrum.status}: {spectrum.reason})")
    elif not g > 0:
        undefined.append("gap g = 0")
    if lr == 0:
        undefined.append("lr = 0")
    if math.isnan(dc):
        undefined.append("delta_c_fro is NaN")
    A = math.nan if undefined else dc / (lr * g * g)
    median = math.nan if undefined else statistics.median([float(h) for h in history if math.isfinite(h)] + [A])
    return Adiabatic(
        A=A,
        A_over_median=A / median if median > 0 else math.nan,
        gap=g,
        lr=lr,
        delta_c_fro=dc,
        rotation_bounds=frozen_array(np.full(spectrum.n, math.nan) if math.isnan(dc) else gap_ratios(spectrum.neighbour_gaps, dc)),
        status="undefined" if undefined else "ok",
        reason="A undefined: " + ", ".join(undefined) if undefined else "",
    )


@dataclass(frozen=True, eq=False)
class Overlaps(Result):
    """Measured overlaps between the directions of two windows ``a`` (later)
    and ``b`` (earlier), for the modes positive in both.

    Attributes:
        n_modes: modes compared (positive in both windows).
        overlaps: ``|v_j^a . v_j^b|`` per mode (eigenvectors have arbitrary sign).
        matrix: signed ``v_j^a . v_k^b``, ``n_modes x n_modes``; not logged.
        cluster_gap: modes ``j, j+1`` whose eigenvalue gap is at most this in
            either window (or tied within ``tol``) form one near-degenerate cluster.
        clusters: the clusters of two or more modes, as 1-based mode numbers.
        cluster_cosines: per cluster, the cosines of the principal angles
            between the two windows' subspaces, descending (empty when not
            asked for).
        subspace_overlaps: per mode, ``sqrt(mean cos^2)`` of its cluster
            (``= overlaps[j]`` for a mode alone): the overlap that stays
            defined when individual vectors are not. It needs no
            decomposition: ``mean cos^2 = ||M_SS||_F^2 / |S|`` for the block
            ``M_SS`` of the cluster.
        status, reason: ``"ok"`` or ``"undefined"`` (no common positive mode,
            non-finite entries, fewer than two rows).
    """

    n_modes: int
    overlaps: np.ndarray
    matrix: np.ndarray
    cluster_gap: float
    clusters: Tuple[Tuple[int, ...], ...]
    cluster_cosines: Tuple[Tuple[float, ...], ...]
    subspace_overlaps: np.ndarray
    status: str
    reason: str

    _NOT_LOGGED = ("matrix",)


def _undefined_overlaps(reason: str, cluster_gap: float = math.nan) -> Overlaps:
    empty = frozen_array(np.zeros(0))
    return Overlaps(0, empty, frozen_array(np.zeros((0, 0))), cluster_gap, (), (), empty, "undefined", reason)


def _overlaps(later: Spectrum, earlier: Spectrum, cross: np.ndarray, cluster_gap: float, principal_angles: bool) -> Overlaps:
    """Overlaps from the two spectra and ``cross = X_later X_earlier^T``:
    ``v_j^a . v_k^b = u_j^a^T cross u_k^b / (sigma_j^a sigma_k^b)``."""
    m = min(later.n_positive, earlier.n_positive)
    if m == 0:
        return _undefined_overlaps("no mode is positive in both windows", cluster_gap)
    left = later.vectors[:, :m] / later.sigmas[:m]
    right = earlier.vectors[:, :m] / earlier.sigmas[:m]
    M = left.T @ cross @ right
    overlaps = np.abs(np.diagonal(M)).copy()
    subspace = overlaps.copy()
    gap_a = later.eigenvalues[: m - 1] - later.eigenvalues[1:m]
    gap_b = earlier.eigenvalues[: m - 1] - earlier.eigenvalues[1:m]
    joined = np.minimum(gap_a, gap_b) <= max(cluster_gap, later.tol, earlier.tol)
    clusters, cosines = [], []
    # Runs of joined neighbours: a run of r True entries starting at j joins modes j..j+r.
    edges = np.diff(np.concatenate(([0], joined.astype(np.int8), [0])))
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        block = M[start : stop + 1, start : stop + 1]
        clusters.append(tuple(range(start + 1, stop + 2)))
        subspace[start : stop + 1] = math.sqrt(float(np.sum(block * block)) / block.shape[0])
        if principal_angles:
            # the cosines are the singular values of the block; eigvalsh of its
            # Gram is several times faster than an SVD on a large bulk cluster
            cos = np.sqrt(np.clip(np.linalg.eigvalsh(block.T @ block)[::-1], 0.0, 1.0))
            cosines.append(tuple(cos.tolist()))
    return Overlaps(
        n_modes=m,
        overlaps=frozen_array(np.minimum(overlaps, 1.0)),
        matrix=frozen_array(M),
        cluster_gap=float(cluster_gap),
        clusters=tuple(clusters),
        cluster_cosines=tuple(cosines),
        subspace_overlaps=frozen_array(np.minimum(subspace, 1.0)),
        status="ok",
        reason="",
    )


def window_overlaps(
    extended_gram,
    previous: Optional[Spectrum] = None,
    current: Optional[Spectrum] = None,
    cluster_gap: Optional[float] = None,
    principal_angles: bool = True,
    *,
    eps: float = ENGINE_EPS,
) -> Overlaps:
    """Overlaps ``|v_j(t) . v_j(t-1)|`` of consecutive windows, from the
    ``(n+1) x (n+1)`` extended Gram (row 0 the update that left, the last row
    the one that entered; its off-diagonal block ``E[1:, :n] = X_t X_{t-1}^T``).

    ``previous`` / ``current``: spectra of the leading / trailing blocks, to
    reuse. ``cluster_gap`` defaults to ``||Delta C||_F``: by Davis-Kahan a gap
    below the perturbation cannot pin a single direction, so such modes are
    compared as subspaces. In a noisy window the whole bulk is one such
    cluster; ``principal_angles=False`` skips the eigen-solve of its cosines
    (``subspace_overlaps`` stays exact). ``eps``: as in ``spectrum``, for the
    spectra computed here.

    Raises:
        ValueError: see ``flow.window_pair``; negative ``cluster_gap``.
    """
    E, dc, previous, current = window_pair(extended_gram, previous, current, eps)
    if previous is None:
        return _undefined_overlaps("extended_gram has non-finite entries")
    n = E.shape[0] - 1
    gap = dc if cluster_gap is None else check_scalar(cluster_gap, "cluster_gap")
    return _overlaps(current, previous, E[1:, :n], gap, principal_angles)


def half_window_overlaps(
    G, cluster_gap: Optional[float] = None, principal_angles: bool = True, *, eps: float = ENGINE_EPS
) -> Overlaps:
    """Overlaps ``|v_j^(1) . v_j^(2)|`` between the first ``floor(n/2)`` rows
    (older) and the remaining rows of the window (the author's Dyck/SCAN code),
    from the blocks of ``G``.

    ``cluster_gap`` defaults to ``||C^(1) - C^(2)||_F``, exact from the blocks:
    ``||G_11||_F^2 + ||G_22||_F^2 - 2 ||G_21||_F^2``. ``principal_angles`` and
    ``eps`` as in ``window_overlaps``.

    Raises:
        ValueError: ``G`` not square / symmetric; negative ``cluster_gap``.
    """
    A = as_gram(G)
    n = A.shape[0]
    if n < 2:
        return _undefined_overlaps(f"half windows need n >= 2 rows, got {n}")
    if not np.isfinite(A).all():
        return _undefined_overlaps("G has non-finite entries")
    h = n // 2
    g11, g22, g21 = A[:h, :h], A[h:, h:], A[h:, :h]
    if cluster_gap is None:
        cluster_gap = math.sqrt(max(np.sum(g11 * g11) + np.sum(g22 * g22) - 2.0 * np.sum(g21 * g21), 0.0))
    return _overlaps(spectrum(g22, eps=eps), spectrum(g11, eps=eps), g21, check_scalar(cluster_gap, "cluster_gap"), principal_angles)
