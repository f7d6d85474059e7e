"""Shared bits of the analysis package: input validation, the one symmetric
eigendecomposition every function uses, mode gaps and clusters, and the base
class that turns result dataclasses into plain, JSON-ready dictionaries."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Tuple

import numpy as np

EPS = float(np.finfo(np.float64).eps)
# The engine accumulates every Gram entry in float32 (sums of chunk partials in
# float64): its Grams carry float32 rounding, and that is the default unit
# roundoff of the whole analysis layer. A caller with exact float64 Grams
# passes ``eps=EPS``.
ENGINE_EPS = float(np.finfo(np.float32).eps)
# LAPACK's symmetric eigensolvers are backward stable: a computed eigenvalue is
# within p(n) * eps64 * ||G||_2 of the exact one, p(n) a modest function of n.
# Measured spreads of tied eigenvalues reach about 3 units of n * eps64 *
# lambda_1 (n = 2 to 64); this many units leave a margin.
SOLVER_UNITS = 8.0

# A Gram built with float32 partial sums may differ from its transpose by a few
# float32 roundings; anything larger than this (relative to max |G_ij|) is a
# caller error, not rounding.
SYMMETRY_RTOL = 1e-6


def plain(value: Any) -> Any:
    """``value`` as plain Python types (float, int, bool, str, None, list, dict)."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


class Result:
    """Base of the frozen result dataclasses.

    ``to_dict()`` gives every field as plain Python types (NaN stays a float),
    except the fields named in ``_NOT_LOGGED`` (large matrices such as
    eigenvectors, which stay available as attributes)."""

    _NOT_LOGGED: Tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            f.name: plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in self._NOT_LOGGED
        }


def frozen_array(values, dtype=np.float64) -> np.ndarray:
    """A read-only float64 (or ``dtype``) copy, so frozen results stay frozen."""
    out = np.array(values, dtype=dtype)
    out.setflags(write=False)
    return out


def as_square(matrix, name: str = "G") -> np.ndarray:
    """``matrix`` as a float64 2-D square array; ``ValueError`` otherwise."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {a.shape}")
    return a


def as_gram(matrix, name: str = "G") -> np.ndarray:
    """Validate a Gram matrix and return its symmetrised float64 copy.

    Raises ``ValueError`` when it is not square, or when a finite entry differs
    from its transpose by more than ``SYMMETRY_RTOL * max|G_ij|`` (rounding of
    float32 partial sums is allowed and averaged away). Non-finite entries are
    left in place: each caller decides what a non-finite row means."""
    a = as_square(matrix, name)
    scale = np.abs(a).max(initial=0.0)  # NaN or inf when an entry is
    if not (math.isfinite(scale) and np.abs(a - a.T).max(initial=0.0) <= SYMMETRY_RTOL * scale):
        both = np.isfinite(a) & np.isfinite(a.T)
        scale = np.abs(a[both]).max(initial=0.0)
        asym = np.abs(a[both] - a.T[both]).max(initial=0.0)
        if asym > SYMMETRY_RTOL * scale:
            raise ValueError(
                f"{name} is not symmetric: max |{name} - {name}^T| = {asym:.3g} exceeds "
                f"{SYMMETRY_RTOL:g} * max|{name}| = {SYMMETRY_RTOL * scale:.3g}; pass the Gram "
                f"matrix X X^T of the window"
            )
    return 0.5 * (a + a.T)


def nonfinite_rows(G: np.ndarray) -> np.ndarray:
    """Indices of the rows of a symmetric ``G`` that carry a non-finite entry.

    A non-finite update makes its whole row and column NaN, so a non-finite
    diagonal marks the row; a stray non-finite entry between two otherwise
    finite rows marks both."""
    if np.isfinite(G).all():
        return np.zeros(0, dtype=np.intp)
    bad = ~np.isfinite(np.diagonal(G))
    good = np.flatnonzero(~bad)
    stray = ~np.isfinite(G[np.ix_(good, good)]).all(axis=1)
    bad[good[stray]] = True
    return np.flatnonzero(bad)


def eigh_desc(G: np.ndarray):
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric ``G``."""
    lam, U = np.linalg.eigh(G)
    return lam[::-1], U[:, ::-1]


def zero_tolerance(n: int, lam1, eps: float = ENGINE_EPS):
    """``tol = n * (eps + SOLVER_UNITS * eps64) * lambda_1``, the one
    tolerance of the analysis layer: eigenvalues at or below it count as zero,
    and eigenvalues (or gaps) closer than it count as tied.

    ``n * eps * lambda_1`` covers the rounding of the Gram's entries (``eps``
    their unit roundoff), the second term the eigensolver's own error, which
    remains for exact Grams. ``lam1``: a float or an array (one per group)."""
    return n * (eps + SOLVER_UNITS * EPS) * np.maximum(lam1, 0.0)


def neighbour_gaps(lam: np.ndarray, tol=0.0) -> np.ndarray:
    """``delta_j = min(lambda_{j-1} - lambda_j, lambda_j - lambda_{j+1})``
    along the last axis (one row per group), 0 where it is ``<= tol`` (tied).

    One-sided at the top; below the last mode lies the null space of the
    covariance (dimension ``P - n``), so ``lambda_{n+1} = 0``."""
    spacing = lam[..., :-1] - lam[..., 1:]
    below = np.concatenate((spacing, lam[..., -1:]), axis=-1)
    above = np.concatenate((np.full(lam.shape[:-1] + (min(lam.shape[-1], 1),), np.inf), spacing), axis=-1)
    gaps = np.minimum(above, below)
    return np.where(gaps > np.expand_dims(tol, -1), gaps, 0.0)


def slide_norm(aa, bb, ab):
    """Exact ``||Delta C||_F = sqrt(||a||^4 + ||b||^4 - 2 (a.b)^2)`` of a slide
    (docs/engine.md#the-size-of-a-slide) from ``|a|^2``, ``|b|^2`` and ``a.b`` (floats or arrays,
    NaN where an input is non-finite)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN below anyway
        value = np.sqrt(np.maximum(aa * aa + bb * bb - 2.0 * ab * ab, 0.0))
    return np.where(np.isfinite(aa) & np.isfinite(bb) & np.isfinite(ab), value, np.nan)


def check_scalar(value, name: str, minimum: float = 0.0) -> float:
    """``value`` as a float; ``ValueError`` below ``minimum``. NaN passes (the
    caller reports it as a status): a NaN ``delta_c_fro`` means a non-finite
    update is in the window, which is data, not a programming error."""
    x = float(value)
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x
