"""The window's eigen-decomposition carried from slide to slide
(docs/numerics.md#the-rank-two-eigen-update).

A slide drops the oldest row and column of the Gram and adds the newest: in
the old window's coordinates, with the leaving row's slot reused for the
entering one, a symmetric rank-two change ``u+ u+^T - u- u-^T``. Updating the
previous eigenpairs through two secular equations costs ``O(n^2)`` per group
(``csrc/analysis/secular.cpp``) plus two small matrix products, where a LAPACK
eigensolve costs ``O(n^3)`` with a large constant at these sizes.

Nothing here trusts the update blindly: every updated group is checked with
a random probe (residual ``|G V x - V diag(lambda) x|`` and orthogonality
``|V^T V x - x|``), and a group that fails, or that has carried
``refresh_every`` updates, is recomputed with LAPACK, so rounding cannot
accumulate without bound. Without the compiled module (``SEF_NO_EXT=1`` or
no C compiler at install) every slide is a LAPACK eigensolve.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np

from ._common import EPS
from .eigen import Eigen, _stack, eigen_batch

try:
    from . import _secular
except ImportError:  # pure-Python install: LAPACK for every slide
    _secular = None

# A probe residual beyond this many units of n * eps * |lambda|_max, or an
# orthogonality error beyond this many units of n * eps, sends the group to
# LAPACK. The probe is a standard normal x, so the residual measures about the
# Frobenius norm of G V - V diag(lambda); a healthy update gives 1-3 units,
# LAPACK's own eigh about 1.
CHECK_UNITS = 16.0

_POOL: Tuple[Optional[ThreadPoolExecutor], int] = (None, 0)


def available() -> bool:
    """Whether the compiled secular-equation update is built."""
    return _secular is not None


def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool for every tracker, grown on demand (the solver releases the GIL)."""
    global _POOL
    if _POOL[1] < workers:
        _POOL = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sef-secular"), workers)
    return _POOL[0]


def _update(values, vectors, u_plus, u_minus, out_values, out_vectors, work):
    """Solve one block of groups into ``out_*`` (``work``: [3, G, n, n]
    scratch, its last slot left holding the rotation ``Q = Q1 Q2``); returns
    the solver's failure flags.

    The entering row sits in slot 0 of the old coordinates; rolling it to the
    end (rows oldest first) is folded into the product ``V Q``."""
    G, n = values.shape
    q1, q2, Q = work
    failed = _secular.slide(G, n, values, vectors, u_plus, u_minus, out_values, q1, q2)
    np.matmul(q1, q2, out=Q)
    np.matmul(vectors[:, 1:], Q, out=out_vectors[:, :-1])
    np.matmul(vectors[:, :1], Q, out=out_vectors[:, -1:])
    return np.frombuffer(failed, dtype=np.uint8).astype(bool)


def slide_eigen(
    previous: Eigen,
    extended_grams,
    *,
    threads: Optional[int] = None,
    out: Optional[Eigen] = None,
) -> Tuple[Eigen, np.ndarray]:
    """Eigen-decomposition of the current windows ``E[:, 1:, 1:]`` from that
    of the previous windows ``E[:, :n, :n]``.

    Args:
        previous: ``Eigen`` (descending) of the leading blocks, e.g. the
            ``current`` of the last slide.
        extended_grams: [G, n+1, n+1] stack, row 0 the update that left, the
            last row the one that entered.
        threads: worker threads over groups (default: the CPU count, at most
            4); the solver and BLAS release the GIL.
        out: an ``Eigen`` of float64 C-contiguous [G, n] / [G, n, n] arrays
            to write into (must not share memory with ``previous``); fresh
            arrays otherwise.

    Returns:
        ``(current, updated)``: the decomposition, and a [G] mask of the
        groups that took the fast update (False: recomputed with LAPACK
        after a failed check, a non-finite entry, or without the compiled
        module).

    Raises:
        ValueError: shapes that do not match, or a non-symmetric stack.
    """
    E, finite = _stack(extended_grams, "extended_grams")
    return _slide(previous, E, finite, threads, out, None)[:2]


def _slide(previous, E, finite, threads, out, work):
    """``slide_eigen`` on a validated stack: ``(current, updated, rotation)``,
    the rotation ``Q`` ([G, n, n], in ``work``) with ``current.vectors =
    roll(previous.vectors @ Q)`` (rows rolled so the entering update comes
    last), or None without the fast update."""
    G, n = E.shape[0], E.shape[1] - 1
    lam = np.asarray(previous.values, dtype=np.float64)
    V = np.asarray(previous.vectors, dtype=np.float64)
    if lam.shape != (G, n) or V.shape != (G, n, n):
        raise ValueError(
            f"previous must hold values [G, n] and vectors [G, n, n] for G={G}, n={n}; got "
            f"{lam.shape} and {V.shape}"
        )
    if out is None:
        out = Eigen(np.empty((G, n)), np.empty((G, n, n)))
    elif out.values.shape != (G, n) or out.vectors.shape != (G, n, n):
        raise ValueError(f"out must hold [G, n] and [G, n, n] arrays for G={G}, n={n}")
    current = E[:, 1:, 1:]
    # a sum is non-finite when any entry is (unit vectors cannot overflow it)
    ok = finite & np.isfinite(lam.sum(axis=1)) & np.isfinite(V.sum(axis=(1, 2)))
    if _secular is None or n < 2 or not ok.any():
        fresh = eigen_batch(current)
        out.values[...], out.vectors[...] = fresh.values, fresh.vectors
        return out, np.zeros(G, bool), None

    every = bool(ok.all())
    idx = slice(None) if every else np.flatnonzero(ok)
    Eo = E if every else E[idx]
    m = Eo.shape[0]
    # In the old window's coordinates the entering row takes the leaving
    # row's slot 0: the change is e0 a^T + a e0^T = u+ u+^T - u- u-^T with
    # u+- = (e0 +- a/|a|) sqrt(|a| / 2).
    a = np.empty((m, n))
    a[:, 0] = 0.5 * (Eo[:, n, n] - Eo[:, 0, 0])
    a[:, 1:] = Eo[:, n, 1:n] - Eo[:, 0, 1:n]
    norm = np.linalg.norm(a, axis=1)
    scale = np.sqrt(0.5 * norm)
    u_plus = np.divide(a * scale[:, None], norm[:, None], out=np.zeros_like(a), where=norm[:, None] > 0)
    u_minus = -u_plus
    u_plus[:, 0] += scale
    u_minus[:, 0] += scale
    lam_o = np.ascontiguousarray(lam if every else lam[idx])
    V_o = np.ascontiguousarray(V if every else V[idx])
    if every:
        values, vectors = out
    else:
        values, vectors = np.empty((m, n)), np.empty((m, n, n))
    if work is None or work.shape[1] < m or work.shape[2:] != (n, n):
        work = np.empty((3, m, n, n))

    workers = max(1, min(threads or min(os.cpu_count() or 1, 4), m // 8 or 1))
    bounds = np.linspace(0, m, workers + 1).astype(int)
    blocks = [slice(s, e) for s, e in zip(bounds[:-1], bounds[1:])]

    target = current if every else current[idx]

    def solve(b):  # the check too, while the block is in cache
        failed = _update(lam_o[b], V_o[b], u_plus[b], u_minus[b], values[b], vectors[b], work[:, b])
        return failed | ~_check(target[b], values[b], vectors[b])

    flags = [solve(blocks[0])] if workers == 1 else list(_pool(workers).map(solve, blocks))
    failed = np.concatenate(flags)
    if every:
        updated = ~failed
    else:
        out.values[idx], out.vectors[idx] = values, vectors
        updated = np.zeros(G, bool)
        updated[idx] = ~failed
    redo = np.flatnonzero(~updated)
    if redo.size:
        fresh = eigen_batch(current[redo])
        out.values[redo], out.vectors[redo] = fresh.values, fresh.vectors
    rotation = work[2, :m]
    if not every or redo.size:
        rotation = _rotation(V, out.vectors, np.empty((G, n, n)) if not every else rotation, redo if every else None)
    return out, updated, rotation


def _rotation(previous_vectors, current_vectors, out, groups=None):
    """``Q = previous^T roll(current)`` (rows rolled back: the entering update
    to slot 0), for ``groups`` (all when None) of ``out``."""
    sel = slice(None) if groups is None else groups
    ring = np.roll(current_vectors[sel], 1, axis=1)
    out[sel] = np.matmul(previous_vectors[sel].transpose(0, 2, 1), ring)
    return out


_PROBES = {}


def _check(G: np.ndarray, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Per group, whether ``(values, vectors)`` pass the probe test (see the
    module docstring); a fixed probe keeps the test reproducible."""
    n = values.shape[1]
    x = _PROBES.get(n)
    if x is None:
        x = _PROBES[n] = np.random.default_rng(n).standard_normal(n)
    y = vectors @ x
    residual = np.linalg.norm(np.matmul(G, y[..., None])[..., 0] - np.matmul(vectors, (values * x)[..., None])[..., 0], axis=1)
    orthogonal = np.linalg.norm(np.matmul(y[:, None, :], vectors)[:, 0] - x, axis=1)
    unit = n * EPS
    scale = np.abs(values).max(axis=1)
    with np.errstate(invalid="ignore"):
        return (residual <= CHECK_UNITS * unit * scale) & (orthogonal <= CHECK_UNITS * unit) & np.isfinite(values).all(axis=1)


class EigenTracker:
    """Eigen-decompositions of a stack of sliding windows, carried across slides.

    ``step(E)`` returns the decompositions of the previous and current windows
    of the extended Grams ``E``. When ``E``'s leading blocks are the trailing
    blocks of the last call's (the window slid by one), the previous is
    reused and the current comes from ``slide_eigen``; otherwise both are
    eigensolved. Each group is recomputed with LAPACK at least every
    ``refresh_every`` updates (staggered over groups, so no slide pays for
    all of them).

    The tracker writes into three buffers in turn (fresh memory costs page
    faults comparable to the update itself): arrays returned by ``step``
    stay valid until the call after next returns; copy what you keep longer.
    """

    def __init__(self, refresh_every: int = 256, threads: Optional[int] = None):
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = int(refresh_every)
        self.threads = threads
        self.updated = 0  # group-slides that took the fast update
        self.solved = 0  # group-slides eigensolved by LAPACK
        self.reset()

    def reset(self) -> None:
        """Forget the carried decompositions (the next ``step`` eigensolves)."""
        self._shape = None
        self._current: Optional[Eigen] = None
        self._age = self._trailing = self._work = self._scratch = None
        self._buffers = []
        self._turn = 0

    def _follows(self, E: np.ndarray) -> bool:
        if self._shape != E.shape:
            return False
        lead, last = E[:, :-1, :-1], self._trailing
        # equal_nan=True costs 20 times the plain test: only when that fails
        # (a non-finite row stays in the window, NaN != NaN)
        if np.array_equal(lead, last) or np.array_equal(lead, last, equal_nan=True):
            return True
        scale = np.nanmax(np.abs(last), initial=0.0)
        with np.errstate(invalid="ignore"):
            diff = np.where(np.isnan(lead) & np.isnan(last), 0.0, np.abs(lead - last))
            return bool(diff.max(initial=0.0) <= 16 * EPS * scale)

    def _workspace(self):
        """Two [G, n, n] scratch buffers for ``analyze_slides``, kept across slides."""
        if self._scratch is None:
            self._scratch = np.empty((2,) + self._work.shape[1:])
        return self._scratch

    def step(self, extended_grams) -> Tuple[Eigen, Eigen]:
        """``(previous, current)``: decompositions of ``E[:, :n, :n]`` and ``E[:, 1:, 1:]``."""
        return self._advance(*_stack(extended_grams, "extended_grams"))[:2]

    @property
    def current(self) -> Optional[Eigen]:
        """The decomposition of the last ``step``'s current windows."""
        return self._current

    def _advance(self, E: np.ndarray, finite: np.ndarray):
        """``step`` on a validated stack; also returns the rotation of
        ``_slide`` (valid until the next call), or None after eigensolves."""
        G, n = E.shape[0], E.shape[1] - 1
        rotation = None
        if self._follows(E):
            previous = self._current
            self._turn = (self._turn + 1) % len(self._buffers)
            current, updated, rotation = _slide(previous, E, finite, self.threads, self._buffers[self._turn], self._work)
            self._age += 1
            stale = np.flatnonzero(updated & (self._age >= self.refresh_every))
            if stale.size:
                fresh = eigen_batch(E[stale, 1:, 1:])
                current.values[stale], current.vectors[stale] = fresh.values, fresh.vectors
                updated[stale] = False
                if rotation is not None:
                    _rotation(previous.vectors, current.vectors, rotation, stale)
            self._age[~updated] = 0
            self.updated += int(updated.sum())
            self.solved += int(G - updated.sum())
        else:
            previous = eigen_batch(E[:, :n, :n])
            current = eigen_batch(E[:, 1:, 1:])
            self._shape = E.shape
            self._age = (np.arange(G) * self.refresh_every) // max(G, 1)
            self._trailing = np.empty((G, n, n))
            self._work = np.empty((3, G, n, n))
            self._scratch = None
            self._buffers = [previous, current, Eigen(np.empty((G, n)), np.empty((G, n, n)))]
            self._turn = 1
            self.solved += 2 * G
        np.copyto(self._trailing, E[:, 1:, 1:])
        self._current = current
        return previous, current, rotation
