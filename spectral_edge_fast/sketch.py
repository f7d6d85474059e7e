"""Sketch mode (docs/engine.md#sketch-mode): each group's update ``delta`` is
kept as ``S delta`` in ``R^m``, with ``S`` the block-shifted signed sketch:
coordinate ``c`` of a tensor has a random sign, and its block of ``L =
min(1024, 2^floor(log2 m))`` coordinates fills ``L`` consecutive buckets
(wrapping at ``m``) from a random offset; signs and offsets come from a
counter-based hash of the tensor's name and ``c``, its flat index in the full,
unsharded tensor (spectral_edge_fast.kernels.sketch). So nothing P-sized is
stored, and every sharding of the same parameters gives the same ``S``. A
group of at most ``m`` numbers (over all ranks) is kept exactly: its
coordinates are its buckets.

``<Sa, Sb>`` is an unbiased estimate of ``<a, b>`` with variance
``sum_{i<j in different blocks} (a_i b_j + a_j b_i)^2 / m``, at most
``(|a|^2 |b|^2 + <a, b>^2 - 2 sum_i a_i^2 b_i^2) / m`` and close to it when
``P >> L`` (docs/numerics.md#sketch-mode); :func:`gram_std_error` estimates
that bound from the sketched Gram.
"""
from __future__ import annotations

import hashlib
from typing import List, Tuple

import numpy as np
import torch

from .layout import FlatPart, ParamLayout, _group_fn, _local

SEED = 0  # one S for every window, so that runs and ranks agree
MAX_PARTS = 16  # the most pieces one group's elements are summed in (csrc/kernels/sketch.h)
PART_PER_BUCKET = 16  # elements per bucket below which a group is not split further


def tensor_key(name: str, seed: int = SEED) -> int:
    """The hash key of the tensor called ``name`` (wrapper-free), as a signed
    int64 (the bits of a 64-bit key)."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _runs(p: torch.Tensor) -> List[Tuple[int, int, int]]:
    """``(local start, global start, length)``: the runs of the local tensor
    of ``p`` that are contiguous in ``p``'s full flat order (one run unless
    ``p`` is a DTensor sharded along a dimension other than the first)."""
    if isinstance(p, FlatPart):  # one range of the full flat order, padding left out
        return [(0, p.start, p.length)] if p.length else []
    local, sharded = _local(p)
    if not sharded:
        return [(0, 0, local.numel())]
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    full = tuple(p.shape)
    if local.numel() == 0:
        return []
    k = len(full) - 1  # the last dimension the shard does not span
    while k > 0 and shape[k] == full[k]:
        k -= 1
    run = int(np.prod(shape[k:]))
    gstride = np.cumprod((full[1:] + (1,))[::-1])[::-1]  # the full tensor's strides
    lead = np.indices(shape[:k]).reshape(k, -1) if k else np.zeros((0, 1), dtype=np.int64)
    starts = ((lead + np.asarray(offset[:k]).reshape(k, 1)) * gstride[:k].reshape(k, 1)).sum(axis=0)
    starts = starts + offset[k] * gstride[k]
    return [(i * run, int(s), run) for i, s in enumerate(starts.tolist())]


def _tensor_groups(layout: ParamLayout, groups) -> List[int]:
    group_of = _group_fn(groups)
    return [layout.groups.index(str(group_of(name))) for name in layout.names]


def group_numels(layout: ParamLayout, groups) -> List[int]:
    """Each group's numbers over all ranks (``groups``: the layout's spec)."""
    out = [0] * len(layout.groups)
    for g, p in zip(_tensor_groups(layout, groups), layout.params):
        out[g] += p.numel()
    return out


class SketchPlan:
    """The tables of :func:`spectral_edge_fast.kernels.sketch.sketch_torch` for
    ``layout``'s views (``segs``) and for one flat vector of this process's
    numbers (``flat_segs``, what ``project`` sketches), the groups' table, and
    ``bounds``: where each group's buckets lie in a sketched row."""

    def __init__(self, layout: ParamLayout, groups, m: int, seed: int = SEED):
        self.m = m
        tensor_group = _tensor_groups(layout, groups)
        G = len(layout.groups)
        full = [0] * G  # each group's numbers over all ranks
        base = {}  # each tensor's first coordinate in its group's full concatenation (the layout's order)
        for i in sorted(range(len(layout.params)), key=lambda i: tensor_group[i]):
            base[i] = full[tensor_group[i]]
            full[tensor_group[i]] += layout.params[i].numel()
        # a group of empty tensors keeps one bucket, always 0: the kernels take no group of none
        self.group_m = [max(n, 1) if n <= m else m for n in full]
        self.identity = [n <= m for n in full]
        self.bounds = tuple(np.concatenate(([0], np.cumsum(self.group_m))).tolist())
        self.size = self.bounds[-1]
        runs = {}
        segs, flat_segs, rows = [], [], [[self.bounds[g], self.group_m[g], int(self.identity[g]), 0, 0, 0, 1] for g in range(G)]
        flat = 0
        for v, pc in enumerate(layout.pieces):
            g = tensor_group[pc.index]
            if pc.index not in runs:
                runs[pc.index] = _runs(layout.params[pc.index])
            key = 0 if self.identity[g] else tensor_key(layout.names[pc.index], seed)
            shift = base[pc.index] if self.identity[g] else 0
            for lstart, gstart, length in runs[pc.index]:
                # the part of this run inside the piece
                a, b = max(lstart, pc.start), min(lstart + length, pc.start + pc.length)
                if a >= b:
                    continue
                coord = shift + gstart + (a - lstart)
                segs.append([v, a - pc.start, b - a, key, coord, g])
                flat_segs.append([0, flat + a - pc.start, b - a, key, coord, g])
            flat += pc.length
        for g in range(G):
            mine = [i for i, s in enumerate(segs) if s[5] == g]
            if mine:
                rows[g][3:5] = [mine[0], mine[-1] + 1]
            else:
                rows[g][3:5] = [len(segs), len(segs)]
            rows[g][5] = sum(segs[i][2] for i in mine)
            if not self.identity[g]:
                rows[g][6] = int(min(MAX_PARTS, max(1, rows[g][5] // (PART_PER_BUCKET * self.group_m[g]))))
        empty = torch.zeros((0, 6), dtype=torch.int64)
        self.segs = torch.tensor(segs, dtype=torch.int64) if segs else empty
        self.flat_segs = torch.tensor(flat_segs, dtype=torch.int64) if flat_segs else empty
        self.groups = torch.tensor(rows, dtype=torch.int64).reshape(G, 7)
        # room for the most parts of the largest group, whatever P: memory is that of m alone
        self.scratch = MAX_PARTS * max([r[1] for r in rows if not r[2]], default=0) or 1

    def scaled(self) -> np.ndarray:
        """``1 / m_g`` per group, 0 for a group kept exactly: the factor of
        :func:`gram_std_error`."""
        return np.asarray([0.0 if ident else 1.0 / m for m, ident in zip(self.group_m, self.identity)])


def gram_std_error(grams: np.ndarray, inv_m: np.ndarray) -> np.ndarray:
    """Estimated standard error of each entry of the sum of the sketched
    group Grams ``grams`` ``[G, n, n]``: ``sqrt(sum_g (G_ii G_jj + G_ij^2) / m_g)``,
    an upper bound: the variance of docs/numerics.md#sketch-mode without the
    terms that only lower it (``sum_i a_i^2 b_i^2`` and the pairs within a
    block, about ``L / P`` of the pairs of a group of ``P`` numbers)."""
    d = np.diagonal(grams, axis1=1, axis2=2)
    var = (d[:, :, None] * d[:, None, :] + grams**2) * np.asarray(inv_m).reshape(-1, 1, 1)
    return np.sqrt(np.clip(var.sum(axis=0), 0.0, None))


def sketch_summary(grams: np.ndarray, inv_m: np.ndarray, m: int) -> dict:
    """A record's ``sketch`` entry: ``m``, the groups kept exactly, and
    ``rel_err``: the estimated standard error of the Gram's entries relative
    to the Gram, ``|SE|_F / |G|_F``."""
    se = gram_std_error(grams, inv_m)
    total = np.linalg.norm(grams.sum(axis=0))
    rel = float(np.linalg.norm(se) / total) if total > 0 and np.isfinite(total) else None
    return {"m": int(m), "exact_groups": int((np.asarray(inv_m) == 0).sum()), "rel_err": rel}
