"""Spectrum diagnostics of one window's Gram matrix (docs/math.md#spectrum)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ._common import (
    ENGINE_EPS,
    Result,
    as_gram,
    eigh_desc,
    frozen_array,
    neighbour_gaps,
    nonfinite_rows,
    zero_tolerance,
)


@dataclass(frozen=True, eq=False)
class Spectrum(Result):
    """Eigen-structure and gap diagnostics of ``G = X X^T``.

    Mode numbers ``j`` are 1-based (as in the paper); arrays are indexed by
    ``j - 1``. Undefined floats are NaN and undefined integers None, and
    ``status`` / ``reason`` say why.

    Attributes:
        n: rows analysed (the finite rows of ``G``).
        eigenvalues: ``lambda_1 >= ... >= lambda_n``; values ``<= tol`` are 0.
        sigmas: ``sigma_j = sqrt(lambda_j)``.
        vectors: ``u_j`` as columns (n x n), over the analysed rows; not logged.
        rows: indices into ``G`` of the analysed rows; not logged.
        nonfinite_rows: indices of rows left out for carrying NaN/inf.
        tol: zero and tie threshold ``_common.zero_tolerance``:
            ``n * (eps + 8 eps64) * lambda_1``.
        n_positive: number of eigenvalues ``> tol``.
        k_star: ``argmax_{j, lambda_{j+1} > tol} sigma_j / sigma_{j+1}``.
        gap_ratio: ``R = sigma_{k*} / sigma_{k*+1}``.
        k_margin: how decisive ``k*`` is: ``R`` over the largest ratio at
            another position (the runner-up; 1 when there is none), see
            ``k_margin``.
        gap: ``sigma_{k*} - sigma_{k*+1}``.
        eig_gap: ``lambda_{k*} - lambda_{k*+1}``.
        edge_ratio: ``sigma_{k*+1} / sigma_{k*+2}`` (the edge one further out).
        g23: ``lambda_2 - lambda_3`` (``lambda_j = 0`` beyond ``n``: the
            covariance has a null space).
        weighted_k_star: ``argmax_j (sigma_j / sum sigma) (sigma_j / sigma_{j+1})``.
        q, k_q: variance rank ``min{k : sum_{j<=k} lambda_j >= q sum lambda}``.
        pc1_fraction: ``lambda_1 / sum lambda``.
        neighbour_gaps: ``delta_j`` (docs/math.md#neighbour-gaps; null space below ``lambda_n``).
        status: ``"ok"``; ``"partial"`` (``edge_ratio`` undefined);
            ``"nonfinite_rows"`` (computed on the finite rows only);
            ``"tied"`` (all positive eigenvalues within ``tol``: no gap
            position, ``R = 1``); ``"undefined"`` (fewer than two positive
            eigenvalues: every gap quantity undefined). When several apply the
            first of undefined, tied, nonfinite_rows, partial wins and
            ``reason`` lists them all.
    """

    n: int
    eigenvalues: np.ndarray
    sigmas: np.ndarray
    vectors: np.ndarray
    rows: Tuple[int, ...]
    nonfinite_rows: Tuple[int, ...]
    tol: float
    n_positive: int
    k_star: Optional[int]
    gap_ratio: float
    k_margin: float
    gap: float
    eig_gap: float
    edge_ratio: float
    g23: float
    weighted_k_star: Optional[int]
    q: float
    k_q: Optional[int]
    pc1_fraction: float
    neighbour_gaps: np.ndarray
    status: str
    reason: str

    _NOT_LOGGED = ("vectors", "rows")

    @property
    def window_rows(self) -> int:
        """Rows of the ``G`` this was computed from, non-finite ones included."""
        return len(self.rows) + len(self.nonfinite_rows)


_STATUS_ORDER = ("undefined", "tied", "nonfinite_rows", "partial")


def k_margin(sigmas, k_star: Optional[int]) -> float:
    """``sigma_{k*} / sigma_{k*+1}`` over the largest ``sigma_j / sigma_{j+1}``
    at another position ``j`` (1 when ``k*`` is the only position), over the
    positive ``sigmas`` (descending; zeros and NaN padding are left out).
    Near 1 the gap is no clearer than its runner-up (a flat spectrum, whose
    ``k*`` wanders); NaN when ``k_star`` is None."""
    s = np.asarray(sigmas, dtype=np.float64)
    s = s[np.isfinite(s) & (s > 0)]
    if k_star is None or not 1 <= k_star < s.size:
        return math.nan
    ratios = s[:-1] / s[1:]
    others = np.delete(ratios, k_star - 1)
    return float(ratios[k_star - 1] / others.max(initial=1.0))


def spectrum(G, q: float = 0.95, *, eps: float = ENGINE_EPS, vectors: bool = True, eigen=None) -> Spectrum:
    """Spectrum diagnostics of a window's Gram matrix ``G`` (n x n, rows oldest first).

    Args:
        G: symmetric PSD Gram matrix. Rows/columns that carry NaN or inf (a
            non-finite update) are left out and listed in ``nonfinite_rows``.
        q: variance fraction for ``k_q``, in (0, 1].
        eps: unit roundoff of the Gram's entries. Eigenvalues at or below
            ``tol = n * (eps + 8 eps64) * lambda_1`` count as zero and
            eigenvalues closer than it as tied (``_common.zero_tolerance``:
            the Gram's rounding plus the eigensolver's error). The default is
            float32's, the precision the engine accumulates in, so
            ``spectrum(window.gram())`` gives the monitor's answer; with a
            finer ``eps`` the float32 rounding noise of a rank-deficient
            window would count as tiny positive eigenvalues and fake a huge
            gap ratio. Pass ``eps=_common.EPS`` (float64's) only for Grams
            computed exactly in float64.
        vectors: with False, only eigenvalues are computed (about 2.5x
            faster at W = 64) and ``vectors`` is an empty ``(n, 0)`` array;
            enough for every scalar here and for ``stability`` and
            ``adiabatic``, not for overlaps, projections or flow.
        eigen: ``(values, vectors)`` of ``G`` already computed (values
            descending, e.g. one group of ``SlideBatch.current``): no
            eigensolve. Only for a finite ``G``.

    Raises:
        ValueError: ``G`` not square, not symmetric beyond rounding, ``q``
            outside (0, 1], ``eps`` not in [0, 1), or ``eigen`` given for a
            ``G`` of another size or with non-finite rows.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    A = as_gram(G)
    bad = nonfinite_rows(A)
    rows = np.arange(A.shape[0])
    reasons = {}
    if bad.size:
        rows = np.setdiff1d(rows, bad)
        A = A[np.ix_(rows, rows)]
        reasons["nonfinite_rows"] = f"rows {bad.tolist()} are non-finite: computed on the {rows.size} finite rows"
    n = A.shape[0]
    if eigen is not None:
        lam, U = (np.asarray(x, dtype=np.float64) for x in eigen)
        if bad.size or lam.shape != (n,) or U.shape != (n, n):
            raise ValueError(
                f"eigen must hold values [{n}] and vectors [{n}, {n}] of a finite G; got {lam.shape} and "
                f"{U.shape}, non-finite rows {bad.tolist()}"
            )
    elif vectors:
        lam, U = eigh_desc(A) if n else (np.zeros(0), np.zeros((0, 0)))
    else:
        lam, U = np.linalg.eigvalsh(A)[::-1] if n else np.zeros(0), np.zeros((n, 0))
    tol = float(zero_tolerance(n, lam[0] if n else 0.0, eps))
    lam = np.where(lam > tol, lam, 0.0)
    sig = np.sqrt(lam)
    m = int(np.count_nonzero(lam))
    cumulative = np.cumsum(lam)
    total = float(cumulative[-1]) if n else 0.0

    nan = math.nan
    k_star = weighted = None
    gap_ratio = gap = eig_gap = edge_ratio = nan
    if m < 2:
        why = "no finite rows" if n == 0 else "one row" if n == 1 else "all-zero Gram" if m == 0 else "rank one"
        reasons["undefined"] = f"{why}: the gap quantities need two positive eigenvalues (n={n}, positive={m})"
    elif lam[0] - lam[m - 1] <= tol:
        reasons["tied"] = f"all {m} positive eigenvalues are tied within tol={tol:.3g}: no gap position"
        gap_ratio, gap, eig_gap = 1.0, 0.0, 0.0
    else:
        ratios = sig[: m - 1] / sig[1:m]
        k = int(np.argmax(ratios))  # exact ties go to the smaller j
        k_star = k + 1
        gap_ratio = float(ratios[k])
        gap = float(sig[k] - sig[k + 1])
        eig_gap = float(lam[k] - lam[k + 1])
        weighted = int(np.argmax(sig[: m - 1] * ratios)) + 1
        if k + 2 < m:
            edge_ratio = float(sig[k + 1] / sig[k + 2])
        else:
            reasons["partial"] = f"edge_ratio undefined: sigma_{k_star + 2} is zero (positive={m})"

    padded = np.concatenate((lam, np.zeros(3)))
    status = next((s for s in _STATUS_ORDER if s in reasons), "ok")
    return Spectrum(
        n=n,
        eigenvalues=frozen_array(lam),
        sigmas=frozen_array(sig),
        vectors=frozen_array(U),
        rows=tuple(rows.tolist()),
        nonfinite_rows=tuple(bad.tolist()),
        tol=float(tol),
        n_positive=m,
        k_star=k_star,
        gap_ratio=gap_ratio,
        k_margin=k_margin(sig[:m], k_star),
        gap=gap,
        eig_gap=eig_gap,
        edge_ratio=edge_ratio,
        g23=float(padded[1] - padded[2]) if n else nan,
        weighted_k_star=weighted,
        q=float(q),
        k_q=int(np.searchsorted(cumulative, q * total)) + 1 if m else None,
        pc1_fraction=float(lam[0] / total) if m else nan,
        neighbour_gaps=frozen_array(neighbour_gaps(lam, tol)),
        status=status,
        reason="; ".join(reasons[s] for s in _STATUS_ORDER if s in reasons),
    )
