"""Eigen-decompositions of stacks of Gram matrices, one per group, in the
analysis layer's order (eigenvalues descending)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import SYMMETRY_RTOL


class Eigen(NamedTuple):
    """Eigen-decompositions of a stack of symmetric matrices: ``values``
    [G, n] descending, ``vectors`` [G, n, n] with the matching eigenvectors
    as columns."""

    values: np.ndarray
    vectors: np.ndarray


def _stack(grams, name: str):
    """``grams`` as a symmetrised float64 [G, n, n] stack and the mask of its
    all-finite groups. The symmetry test is ``_common.as_gram``'s, per group,
    over the entries finite on both sides of the diagonal."""
    a = np.asarray(grams, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"{name} must be a [G, n, n] stack of square matrices, got shape {a.shape}")
    at = a.transpose(0, 2, 1)
    finite = np.isfinite(a).all(axis=(1, 2))
    if finite.all() and np.array_equal(a, at):
        return a, finite  # exactly symmetric: symmetrising would return the same values
    with np.errstate(invalid="ignore"):
        work = a - at
        asym = np.abs(work, out=work).max(axis=(1, 2), initial=0.0)
        scale = np.maximum(a.max(axis=(1, 2), initial=0.0), -a.min(axis=(1, 2), initial=0.0))
        if not finite.all():
            b = a[~finite]
            bt = b.transpose(0, 2, 1)
            both = np.isfinite(b) & np.isfinite(bt)
            scale[~finite] = np.where(both, np.abs(b), 0.0).max(axis=(1, 2), initial=0.0)
            asym[~finite] = np.where(both, np.abs(b - bt), 0.0).max(axis=(1, 2), initial=0.0)
        bad = np.flatnonzero(asym > SYMMETRY_RTOL * scale)
        if bad.size:
            g = int(bad[0])
            raise ValueError(
                f"{name} is not symmetric in groups {bad.tolist()}: in group {g} max |E - E^T| = "
                f"{asym[g]:.3g} exceeds {SYMMETRY_RTOL:g} * max|E| = {SYMMETRY_RTOL * scale[g]:.3g}; "
                f"pass Gram matrices X X^T"
            )
        sym = np.add(a, at, out=work)  # the difference is spent: reuse its buffer
        sym *= 0.5
        return sym, finite


def _eigh(A: np.ndarray, finite: np.ndarray) -> Eigen:
    # One failed matrix makes the batched eigh raise for the whole stack, so
    # non-finite groups are solved as zeros and reported as NaN.
    clean = finite.all()
    if not clean:
        A = A.copy()
        A[~finite] = 0.0
    lam, U = np.linalg.eigh(A)
    # contiguous copies: analyze_slides is markedly slower on reversed (negative-stride) views
    lam, U = np.ascontiguousarray(lam[:, ::-1]), np.ascontiguousarray(U[:, :, ::-1])
    if not clean:
        lam[~finite] = np.nan
        U[~finite] = np.nan
    return Eigen(lam, U)


def eigen_batch(grams) -> Eigen:
    """Eigen-decompositions of a [G, n, n] stack of Grams, descending (the
    batched form of ``_common.eigh_desc``). Groups with a non-finite entry get
    NaN values and vectors.

    Raises:
        ValueError: not a 3-D stack of square matrices, or not symmetric
            beyond rounding (``_common.SYMMETRY_RTOL``).
    """
    return _eigh(*_stack(grams, "grams"))
