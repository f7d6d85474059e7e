"""Vectorised slide analysis of a stack of groups (one extended Gram each).

``analyze_slides`` computes for every group at once what the per-group
pipeline computes one group at a time (``spectrum`` of the current window,
``delta_c_fro``, ``stability``, ``adiabatic``, ``window_overlaps`` without
principal angles, ``eigen_flow``), as arrays with a leading group axis ``G``.
Modes beyond a group's positive ones are NaN-padded, so groups with different
ranks share one array.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from ._common import ENGINE_EPS, Result, check_scalar, neighbour_gaps, plain, slide_norm, zero_tolerance
from .eigen import Eigen, _eigh, _stack
from .flow import delta_c_fro, eigen_flow
from .spectrum import spectrum
from .stability import adiabatic, davis_kahan, gap_ratios, stability, window_overlaps
from .tracking import EigenTracker

try:  # the O(n^2) sums in one pass each (csrc/analysis/slide_terms.cpp); NumPy below without it
    from . import _slide_terms
except ImportError:
    _slide_terms = None


class _Spectra(NamedTuple):
    lam: np.ndarray
    sig: np.ndarray
    tol: np.ndarray
    m: np.ndarray
    k_star: np.ndarray
    gap_ratio: np.ndarray
    gap: np.ndarray
    eig_gap: np.ndarray
    edge_ratio: np.ndarray
    g23: np.ndarray
    weighted_k_star: np.ndarray
    k_q: np.ndarray
    pc1_fraction: np.ndarray
    neighbour_gaps: np.ndarray
    status: np.ndarray


def _spectra(values: np.ndarray, q: float, eps: float) -> _Spectra:
    """``spectrum``'s quantities from the descending eigenvalues of each row."""
    G, n = values.shape
    rows = np.arange(G)
    tol = zero_tolerance(n, values[:, 0], eps)
    lam = np.where(values > tol[:, None], values, 0.0)
    sig = np.sqrt(lam)
    m = np.count_nonzero(lam, axis=1)
    cumulative = np.cumsum(lam, axis=1)
    total = cumulative[:, -1]
    undefined = m < 2
    tied = ~undefined & (lam[:, 0] - lam[rows, np.maximum(m - 1, 0)] <= tol)
    defined = ~(undefined | tied)

    # Two zero columns of padding keep sigma_{k*+2} and lambda_3 in range for small n.
    lamp = np.concatenate((lam, np.zeros((G, 2))), axis=1)
    sigp = np.concatenate((sig, np.zeros((G, 2))), axis=1)
    head = np.arange(n) < (m - 1)[:, None]
    ratios = np.divide(sigp[:, :n], sigp[:, 1 : n + 1], out=np.full((G, n), -np.inf), where=head)
    k = np.argmax(ratios, axis=1)  # exact ties go to the smaller j, as in spectrum
    weighted = np.argmax(np.multiply(sig, ratios, out=np.full((G, n), -np.inf), where=head), axis=1)
    has_edge = defined & (k + 2 < m)
    nan = np.full(G, np.nan)

    status = np.full(G, "ok", dtype="<U14")
    status[defined & ~has_edge] = "partial"
    status[tied] = "tied"
    status[undefined] = "undefined"
    with np.errstate(invalid="ignore", divide="ignore"):  # np.where evaluates the undefined branches too
        return _Spectra(
            lam=lam,
            sig=sig,
            tol=tol,
            m=m,
            k_star=np.where(defined, k + 1, 0),
            gap_ratio=np.where(defined, ratios[rows, k], np.where(tied, 1.0, nan)),
            gap=np.where(defined, sigp[rows, k] - sigp[rows, k + 1], np.where(tied, 0.0, nan)),
            eig_gap=np.where(defined, lamp[rows, k] - lamp[rows, k + 1], np.where(tied, 0.0, nan)),
            edge_ratio=np.where(has_edge, sigp[rows, k + 1] / sigp[rows, k + 2], nan),
            g23=lamp[:, 1] - lamp[:, 2],
            weighted_k_star=np.where(defined, weighted + 1, 0),
            k_q=np.where(m > 0, np.count_nonzero(cumulative < (q * total)[:, None], axis=1) + 1, 0),
            pc1_fraction=np.where(m > 0, lam[:, 0] / total, nan),
            neighbour_gaps=neighbour_gaps(lam, tol),
            status=status,
        )


def _spectrum_fields(s: _Spectra, q: float) -> dict:
    """The ``spectrum`` fields of a batch result, from ``_spectra``."""
    return dict(
        eigenvalues=s.lam,
        sigmas=s.sig,
        tol=s.tol,
        n_positive=s.m,
        k_star=s.k_star,
        gap_ratio=s.gap_ratio,
        gap=s.gap,
        eig_gap=s.eig_gap,
        edge_ratio=s.edge_ratio,
        g23=s.g23,
        weighted_k_star=s.weighted_k_star,
        q=float(q),
        k_q=s.k_q,
        pc1_fraction=s.pc1_fraction,
        neighbour_gaps=s.neighbour_gaps,
        status=s.status,
    )


def _check_options(q: float, eps: float) -> None:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")


def _inverse(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``1 / x`` where ``mask``, else 0."""
    return np.divide(1.0, x, out=np.zeros_like(x), where=mask)


def _readonly(a: np.ndarray) -> np.ndarray:
    # a read-only view, so a caller's array passed in as `current` stays writable
    v = np.asarray(a).view()
    v.setflags(write=False)
    return v


@dataclass(frozen=True, eq=False)
class SpectrumBatch(Result):
    """``spectrum`` of each window of a stack, with a leading group axis.

    Fields as ``spectrum``'s (eigenvalues .. status, ``q``; the spectrum
    part of :class:`SlideBatch` too): arrays [G, n] NaN-padded where a group's spectrum is shorter (rows
    dropped as non-finite), mode numbers 0 = undefined. ``fallback``: groups
    computed by ``spectrum`` (a non-finite entry).
    """

    n: int
    eigenvalues: np.ndarray
    sigmas: np.ndarray
    tol: np.ndarray
    n_positive: np.ndarray
    k_star: np.ndarray
    gap_ratio: np.ndarray
    gap: np.ndarray
    eig_gap: np.ndarray
    edge_ratio: np.ndarray
    g23: np.ndarray
    weighted_k_star: np.ndarray
    q: float
    k_q: np.ndarray
    pc1_fraction: np.ndarray
    neighbour_gaps: np.ndarray
    status: np.ndarray
    fallback: np.ndarray

    def group(self, g: int) -> dict:
        """Group ``g``'s values as plain Python (undefined mode numbers None)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name not in self._NOT_LOGGED:
                value = getattr(self, f.name)
                value = value[g] if isinstance(value, np.ndarray) else value
                out[f.name] = plain(value.item() if isinstance(value, np.generic) else value)  # np.str_ too
        for name in ("k_star", "weighted_k_star", "k_q"):
            out[name] = out[name] or None
        return out


@dataclass(frozen=True, eq=False)
class SlideBatch(SpectrumBatch):
    """One slide of ``G`` groups, every per-group value with a leading ``G`` axis.

    Arrays [G, n] are per mode (1-based mode ``j`` at index ``j - 1``), NaN
    where the per-group result has no entry (modes beyond ``n_positive`` or
    ``n_modes``, rows dropped as non-finite). Mode numbers that the per-group
    results give as None are 0 here.

    Attributes:
        n: rows of each window.
        eigenvalues .. neighbour_gaps, status: ``spectrum`` of the current
            window ``E[g, 1:, 1:]``. ``k_star``, ``weighted_k_star``, ``k_q``:
            int arrays, 0 = undefined. ``status``: string array of
            ``Spectrum.status`` values.
        q: the variance fraction of ``k_q``.
        delta_c_fro: exact ``||Delta C||_F``.
        alpha, C, squared: ``stability`` of the current window.
        A, rotation_bounds, lr: ``adiabatic`` without history (``A`` is NaN
            when ``lr`` is None or 0).
        n_modes, overlaps, subspace_overlaps, cluster_gap: ``window_overlaps``
            with ``principal_angles=False`` (``n_modes = 0``: undefined).
        measured .. level_repulsion, validity_factor: ``eigen_flow``, per mode
            of the previous window.
        fallback: groups computed by the per-group functions (a non-finite
            entry in their extended Gram).
        previous, current: ``Eigen`` of the previous and current windows
            (values with the zero tolerance applied; NaN for a fallback
            group, except the current window of one whose only non-finite
            row is the leaving one), e.g. for ``spectrum(..., eigen=)``;
            pass ``current`` as ``previous`` on the next slide. Not logged.
            With a tracker their vectors are the tracker's buffers, valid
            until its call after next.
    """

    delta_c_fro: np.ndarray
    alpha: np.ndarray
    C: float
    squared: bool
    A: np.ndarray
    rotation_bounds: np.ndarray
    lr: float
    n_modes: np.ndarray
    overlaps: np.ndarray
    subspace_overlaps: np.ndarray
    cluster_gap: np.ndarray
    measured: np.ndarray
    entering: np.ndarray
    exiting: np.ndarray
    first_order: np.ndarray
    second_order: np.ndarray
    valid: np.ndarray
    a_perp_norm2: np.ndarray
    gap_increment: np.ndarray
    gap_first_order: np.ndarray
    gap_second_order: np.ndarray
    level_repulsion: np.ndarray
    validity_factor: float
    previous: Eigen
    current: Eigen

    _NOT_LOGGED = ("previous", "current")


def spectrum_batch(grams, q: float = 0.95, *, eps: float = ENGINE_EPS) -> SpectrumBatch:
    """``spectrum(grams[g], q, eps=eps, vectors=False)`` for every window of a
    [G, n, n] stack at once, from eigenvalues alone (a batched ``eigvalsh``):
    what summaries of many groups need when no eigenvectors are wanted. A
    group with a non-finite entry falls back to ``spectrum`` (its finite
    rows).

    Raises:
        ValueError: not a [G, n, n] stack of symmetric matrices, or ``q`` /
            ``eps`` out of range (as ``spectrum``).
    """
    _check_options(q, eps)
    A, finite = _stack(grams, "grams")
    values = np.linalg.eigvalsh(A if finite.all() else np.where(finite[:, None, None], A, 0.0))
    out = dict(n=A.shape[1], **_spectrum_fields(_spectra(np.ascontiguousarray(values[:, ::-1]), q, eps), q))
    out["fallback"] = ~finite
    for g in np.flatnonzero(~finite):
        spec = spectrum(A[g], q, eps=eps, vectors=False)
        _fill_group(out, int(g), {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
    return SpectrumBatch(**{k: _readonly(v) if isinstance(v, np.ndarray) else v for k, v in out.items()})


def _given(eig, name: str, G: int, n: int):
    values, vectors = eig
    values = np.asarray(values, dtype=np.float64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float64)  # see _eigh
    if values.shape != (G, n) or vectors.shape != (G, n, n):
        raise ValueError(
            f"{name} must have values [G, n] = {[G, n]} and vectors [G, n, n] = {[G, n, n]}, "
            f"got {list(values.shape)} and {list(vectors.shape)}"
        )
    return values, vectors


def analyze_slides(
    extended_grams,
    lr: Optional[float] = None,
    previous: Optional[Eigen] = None,
    current: Optional[Eigen] = None,
    *,
    eps: float = ENGINE_EPS,
    q: float = 0.95,
    C: float = 1.0,
    squared: bool = True,
    validity_factor: float = 2.0,
    cluster_gap: Optional[float] = None,
    tracker: Optional[EigenTracker] = None,
) -> SlideBatch:
    """The per-slide analysis of ``G`` groups from their extended Grams
    ([G, n+1, n+1], row 0 the update that left, the last row the one that
    entered), vectorised over the groups.

    Per group ``g`` it equals ``spectrum(E[g, 1:, 1:], q, eps=eps)`` as
    ``current_spec``, ``spectrum(E[g, :n, :n], q, eps=eps)`` as
    ``previous_spec``, ``dc = delta_c_fro(E[g])``, ``stability(current_spec,
    dc, C, squared)``, ``adiabatic(current_spec, dc, lr)`` (no history),
    ``window_overlaps(E[g], previous_spec, current_spec, cluster_gap,
    principal_angles=False)`` and ``eigen_flow(E[g], previous_spec,
    current_spec, validity_factor)``, up to rounding of the matrix products.
    All groups are computed together, with no Python loop over them, except
    a group whose extended Gram has a non-finite entry: that one falls back to
    the per-group functions (``spectrum`` leaves the non-finite rows out,
    ``window_overlaps`` and ``eigen_flow`` are undefined) and is marked in
    ``fallback``.

    ``previous`` / ``current``: eigen-decompositions of ``E[:, :n, :n]`` /
    ``E[:, 1:, 1:]`` (eigenvalues descending, possibly tolerance-zeroed),
    computed with ``eigen_batch`` when not given; a monitor passes the last
    slide's ``SlideBatch.current`` as ``previous``. Their entries for
    fallback groups are not read. ``tracker``: an ``EigenTracker`` that
    supplies both instead (a monitor analysing every slide: the current
    windows' eigenpairs are then updated from the previous ones in
    ``O(n^2)`` per group rather than eigensolved).

    Raises:
        ValueError: not a [G, n+1, n+1] stack with n >= 1, not symmetric
            beyond rounding, ``previous`` / ``current`` of other shapes, or an
            argument out of range (as the per-group functions).
    """
    raw = np.asarray(extended_grams, dtype=np.float64)
    E, finite = _stack(raw, "extended_grams")
    G, n = E.shape[0], E.shape[1] - 1
    if n < 1:
        raise ValueError(f"extended_grams must be [G, n+1, n+1] with n >= 1, got shape {E.shape}")
    _check_options(q, eps)
    if validity_factor < 0:
        raise ValueError(f"validity_factor must be >= 0, got {validity_factor}")
    C = check_scalar(C, "C")
    lr = math.nan if lr is None else check_scalar(lr, "lr")
    gap_given = None if cluster_gap is None else check_scalar(cluster_gap, "cluster_gap")

    if tracker is not None:
        if previous is not None or current is not None:
            raise ValueError("pass either tracker or previous / current, not both")
        previous, current, rotation = tracker._advance(E, finite)
    else:
        rotation = None
    prev_vals, Up = _eigh(E[:, :n, :n], finite) if previous is None else _given(previous, "previous", G, n)
    cur_vals, Uc = _eigh(E[:, 1:, 1:], finite) if current is None else _given(current, "current", G, n)
    if not finite.all():
        # The vectorised path runs on zeros for these groups, free of NaN and
        # inf arithmetic; the fallback overwrites them. Copies: E, Up and Uc
        # may be the caller's arrays.
        E, prev_vals, cur_vals, Up, Uc = (x.copy() for x in (E, prev_vals, cur_vals, Up, Uc))
        for x in (E, prev_vals, cur_vals, Up, Uc):
            x[~finite] = 0.0
        if rotation is not None:
            rotation = np.where(finite[:, None, None], rotation, 0.0)
    prev = _spectra(prev_vals, q, eps)
    cur = _spectra(cur_vals, q, eps)
    dc = slide_norm(E[:, -1, -1], E[:, 0, 0], E[:, 0, -1])
    # Fresh [G, n, n] arrays cost page faults comparable to the arithmetic on
    # them, so the overlaps and the flow share two work buffers through out=
    # (a tracker keeps them from slide to slide).
    work = tracker._workspace() if tracker is not None else (np.empty((G, n, n)), np.empty((G, n, n)))

    rotation_bounds = gap_ratios(cur.neighbour_gaps, dc)
    with np.errstate(divide="ignore", invalid="ignore"):  # gap is NaN without a gap position, 0 when tied
        A = np.where((cur.gap > 0) & (lr > 0), dc / (lr * cur.gap * cur.gap), np.nan)
    out = dict(
        n=n,
        **_spectrum_fields(cur, q),
        delta_c_fro=dc,
        alpha=davis_kahan(rotation_bounds, C, squared),
        C=C,
        squared=bool(squared),
        A=A,
        rotation_bounds=rotation_bounds,
        lr=lr,
        **_overlap_stage(E, prev, cur, prev_vals, Up, Uc, rotation, dc, gap_given, work),
        **_flow_stage(E, prev, cur, Up, dc, validity_factor, work),
        validity_factor=float(validity_factor),
        fallback=~finite,
        # no two arrays of out may share memory: the fallback writes its groups in place
        previous=Eigen(prev.lam.copy(), Up),
        current=Eigen(cur.lam.copy(), Uc),
    )
    for g in np.flatnonzero(~finite):
        _fill_from_group(out, raw[g], int(g), n, lr, gap_given, q, eps, C, squared, validity_factor)
    return SlideBatch(**{k: Eigen(*map(_readonly, v)) if isinstance(v, Eigen) else _readonly(v) if isinstance(v, np.ndarray) else v
                         for k, v in out.items()})


def _overlap_stage(E, prev: _Spectra, cur: _Spectra, prev_vals, Up, Uc, rotation, dc, gap_given, work) -> dict:
    """``window_overlaps`` (without principal angles) of every group, over the
    modes positive in both windows:
    ``M = diag(1 / sigma_c) U_c^T E[1:, :n] U_p diag(1 / sigma_p)``."""
    G, n = prev_vals.shape
    modes, rows = np.arange(n), np.arange(G)
    work, spare = work
    n_modes = np.minimum(cur.m, prev.m)
    in_modes = modes < n_modes[:, None]
    inv_c, inv_p = _inverse(cur.sig, in_modes), _inverse(prev.sig, in_modes)
    gap_c, gap_p = cur.lam[:, :-1] - cur.lam[:, 1:], prev.lam[:, :-1] - prev.lam[:, 1:]
    gap_eff = dc.copy() if gap_given is None else np.full(G, gap_given)
    threshold = np.maximum(gap_eff, np.maximum(cur.tol, prev.tol))
    joined = (np.minimum(gap_c, gap_p) <= threshold[:, None]) & (modes[:-1] < (n_modes - 1)[:, None])
    if rotation is not None:
        # With U_c = roll(U_p Q) (the tracker's rotation) and the entering row
        # in the leaving one's slot, X_t = X_{t-1} + e_0 (a - b)^T, so
        # U_c^T E[1:, :n] U_p = Q^T (Lambda_p + r s^T) with r = U_p^T e_0 and
        # s = U_p^T X_{t-1} (a - b): M[k, j] = (Q[j, k] lambda_j + t_k s_j) / (sigma_c,k sigma_p,j), t = Q^T r.
        s = np.matmul((E[:, :n, n] - E[:, :n, 0])[:, None, :], Up)[:, 0, :]
        t = np.matmul(Up[:, :1, :], rotation)[:, 0, :]
    if rotation is not None and _slide_terms is not None:
        diag, subspace = np.empty((G, n)), np.empty((G, n))
        _slide_terms.overlaps(G, n, rotation, prev_vals, t, s, inv_c, inv_p, joined, diag, subspace)
    else:
        if rotation is None:
            np.multiply(Up, inv_p[:, None, :], out=work)
            np.matmul(E[:, 1:, :n], work, out=spare)
            M = np.matmul(Uc.transpose(0, 2, 1), spare, out=work)
        else:
            M = np.multiply(rotation.transpose(0, 2, 1), prev_vals[:, None, :], out=work)
            M += np.multiply(t[:, :, None], s[:, None, :], out=spare)
            M *= inv_p[:, None, :]
        M *= inv_c[:, :, None]
        diag = np.abs(np.diagonal(M, axis1=1, axis2=2))
        # Contiguous runs of joined neighbours share a label, unique across groups;
        # a cluster's block of M is where the row and column labels agree.
        label = np.concatenate((np.zeros((G, 1), np.intp), np.cumsum(~joined, axis=1)), axis=1) + n * rows[:, None]
        M *= M
        M *= label[:, :, None] == label[:, None, :]
        block_sums = np.bincount(label.ravel(), M.sum(axis=2).ravel(), G * n)[label]
        size = np.bincount(label.ravel(), minlength=G * n)[label]
        subspace = np.where(size > 1, np.sqrt(block_sums / size), diag)
    return dict(
        n_modes=n_modes,
        overlaps=np.where(in_modes, np.minimum(diag, 1.0), np.nan),
        subspace_overlaps=np.where(in_modes, np.minimum(subspace, 1.0), np.nan),
        cluster_gap=gap_eff,
    )


def _flow_stage(E, prev: _Spectra, cur: _Spectra, Up, dc, validity_factor, work) -> dict:
    """``eigen_flow`` of every group, over the previous window's positive
    modes; ``v_j.a = u_j^T E[:n, n] / sigma_j``."""
    G, n = prev.lam.shape
    modes, rows = np.arange(n), np.arange(G)
    work, spare = work
    # the previous window's gap position k* (1-based): modes j0 = k* - 1 and j1 = k* (0-based)
    j0 = np.maximum(prev.k_star - 1, 0)
    j1 = np.minimum(j0 + 1, n - 1)
    positive = modes < prev.m[:, None]
    va, vb = (np.matmul(E[:, [n, 0], :n], Up) * _inverse(prev.sig, positive)[:, None, :]).transpose(1, 0, 2)
    entering, exiting = va * va, vb * vb
    first = entering - exiting
    a_perp2 = np.where(prev.m > 0, np.maximum(E[:, n, n] - entering.sum(axis=1), 0.0), np.nan)
    null_space = np.divide(a_perp2[:, None] * entering, prev.lam, out=np.zeros((G, n)), where=positive)
    with np.errstate(divide="ignore", invalid="ignore"):  # v_k^T dC v_j for the gap pair k, j = j0, j1
        pair = va[rows, j0] * va[rows, j1] - vb[rows, j0] * vb[rows, j1]
        repulsion = 2.0 * pair**2 / (prev.lam[rows, j0] - prev.lam[rows, j1])
    if _slide_terms is not None:
        coupled = np.empty((G, n))
        _slide_terms.flow(G, n, np.ascontiguousarray(va), np.ascontiguousarray(vb), prev.lam, prev.tol, coupled)
    else:
        coupling = np.multiply(va[:, :, None], va[:, None, :], out=spare)  # v_k^T dC v_j at [k, j]
        coupling -= np.multiply(vb[:, :, None], vb[:, None, :], out=work)
        denom = np.subtract(prev.lam[:, None, :], prev.lam[:, :, None], out=work)  # lambda_j - lambda_k at [k, j]
        # tied pairs (and pairs of null modes) get an infinite denominator, as in eigen_flow
        tol = prev.tol[:, None, None]
        denom[(denom <= tol) & (denom >= -tol)] = np.inf
        coupling *= coupling
        coupling /= denom
        coupled = coupling.sum(axis=1)
    second = first + coupled + null_space
    pgaps = prev.neighbour_gaps
    measured = cur.lam - prev.lam
    has_k = prev.k_star > 0

    def at_gap(x):
        return np.where(has_k, x[rows, j0] - x[rows, j1], np.nan)

    def pad(x):
        return np.where(positive, x, np.nan)

    return dict(
        measured=measured,
        entering=pad(entering),
        exiting=pad(exiting),
        first_order=pad(first),
        second_order=pad(second),
        valid=positive & (pgaps > validity_factor * dc[:, None]) & (pgaps > prev.tol[:, None]),
        a_perp_norm2=a_perp2,
        gap_increment=at_gap(measured),
        gap_first_order=at_gap(first),
        gap_second_order=at_gap(second),
        level_repulsion=np.where(has_k, repulsion, np.nan),
    )


def _fill_from_group(out: dict, E: np.ndarray, g: int, n: int, lr, cluster_gap, q, eps, C, squared, validity_factor):
    """Overwrite group ``g`` of ``out`` with the per-group functions' results."""
    spec = spectrum(E[1:, 1:], q, eps=eps)
    dc = delta_c_fro(E)
    parts = [
        spec,
        stability(spec, dc, C, squared),
        adiabatic(spec, dc, 0.0 if math.isnan(lr) else lr),
        window_overlaps(E, cluster_gap=cluster_gap, principal_angles=False, eps=eps),
        eigen_flow(E, validity_factor=validity_factor, eps=eps),
    ]
    # later parts win: the spectrum's k_star and neighbour_gaps, not the flow's (previous window's)
    _fill_group(out, g, {f.name: getattr(part, f.name) for part in parts[::-1] for f in dataclasses.fields(part)})
    out["previous"].values[g] = out["previous"].vectors[g] = np.nan  # not computed
    if spec.n == n:
        out["current"].values[g] = spec.eigenvalues
        out["current"].vectors[g] = spec.vectors
    else:
        out["current"].values[g] = np.nan
        out["current"].vectors[g] = np.nan


def _fill_group(out: dict, g: int, values: dict) -> None:
    """Overwrite group ``g`` of the arrays of ``out`` with a per-group
    result's ``values`` (by field name; None mode numbers as 0, arrays
    NaN-padded)."""
    for name in ("k_star", "weighted_k_star", "k_q"):
        values[name] = values[name] or 0
    for name, array in out.items():
        if not isinstance(array, np.ndarray) or name == "fallback":
            continue
        x = np.asarray(values[name])
        if array.ndim == 1:
            array[g] = x
        else:
            array[g] = False if array.dtype == bool else np.nan
            array[g, : x.size] = x
