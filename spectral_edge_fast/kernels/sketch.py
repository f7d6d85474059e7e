"""The signed bucket sketch ``S theta`` (docs/engine.md#sketch-mode): its hash
and the torch implementation every backend without a kernel of its own runs.

Tables (built once per layout by :class:`spectral_edge_fast.sketch.SketchPlan`):

* ``segs``, int64 ``[n, 6]``: ``(view, start, length, key, coord, group)``,
  ``length`` elements of ``views[view]`` from ``start`` whose coordinates are
  ``coord, coord + 1, ...``, hashed with the tensor's ``key``.
* ``groups``, int64 ``[G, 7]``: ``(out, m, identity, seg_begin, seg_end,
  numel, parts)``: group ``g`` writes ``out[out : out + m]`` from segment
  rows ``seg_begin:seg_end`` holding ``numel`` elements; an identity group
  puts coordinate ``c`` in bucket ``c`` with sign +1; ``parts`` is how many
  pieces the C++ kernel sums separately before adding them in order.

A hashed group's coordinates come in blocks of ``L = block_length(m)``:
coordinate ``c`` (block ``b = c // L``, position ``r = c % L``) goes to bucket
``(o_b + r) mod m``, with the block's offset ``o_b = sketch_bucket(
sketch_hash(key + OFFSET_SALT, b), m)``, and has sign ``-1`` if
``sketch_hash(key, c)`` is odd: a block fills one or two runs of contiguous
buckets, each element with its own random sign (csrc/kernels/sketch.h).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
CHUNK = 1 << 20  # elements hashed at once by the torch implementation on a GPU,
CPU_CHUNK = 1 << 16  # and on the CPU, where its int64 temporaries then stay in cache (3x faster)
MAX_BLOCK = 1024  # the longest block of coordinates in contiguous buckets (kSketchMaxBlock)
OFFSET_SALT = 0x9E3779B97F4A7C15  # added to a tensor's key for its blocks' offsets (kSketchOffsetSalt)


def _mul32(x, c: int):
    return (x * c) & MASK32


def sketch_hash(key: int, coord):
    """The 32-bit hash of coordinates ``coord`` (an int64 torch tensor or a
    uint64 NumPy array) of the tensor with 64-bit ``key``: what
    ``sef::sketch_hash`` computes, in int64 arithmetic kept to 32 bits."""
    key &= (1 << 64) - 1
    lo, hi = key & MASK32, key >> 32
    if isinstance(coord, np.ndarray):
        coord = coord.astype(np.uint64)
        x = ((coord & np.uint64(MASK32)) ^ np.uint64(lo)) + (((coord >> np.uint64(32)) * np.uint64(0x9E3779B9)) & np.uint64(MASK32))
        x = (x + np.uint64(hi)) & np.uint64(MASK32)
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x85EBCA6B)) & np.uint64(MASK32)
        x ^= x >> np.uint64(13)
        x = (x * np.uint64(0xC2B2AE35)) & np.uint64(MASK32)
        return x ^ (x >> np.uint64(16))
    x = (((coord & MASK32) ^ lo) + _mul32(coord >> 32, 0x9E3779B9) + hi) & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def sketch_bucket(h, m: int):
    """The bucket ``(h * m) >> 32`` in ``[0, m)`` of 32-bit hashes ``h``."""
    if isinstance(h, np.ndarray):
        return (h * np.uint64(m)) >> np.uint64(32)
    return (h * m) >> 32


def block_length(m: int) -> int:
    """``L``: the largest power of two at most ``m``, and at most ``MAX_BLOCK``."""
    return min(MAX_BLOCK, 1 << (int(m).bit_length() - 1))


def block_offsets(key: int, blocks, m: int):
    """The first bucket of each block in ``blocks`` (block indices, an int64
    torch tensor or a uint64 NumPy array) of the tensor with ``key``."""
    return sketch_bucket(sketch_hash((key + OFFSET_SALT) & MASK64, blocks), m)


def buckets_and_signs(key: int, start: int, length: int, m: int, device=None):
    """Bucket and sign (+1 or -1), int64 tensors on ``device``, of the
    coordinates ``start .. start + length - 1`` of a hashed group: each
    block's offset hashed once, its buckets laid out from it."""
    c = torch.arange(start, start + length, dtype=torch.int64, device=device)
    sign = 1 - 2 * (sketch_hash(key, c) & 1)
    L = block_length(m)
    first, last = start // L, (start + length - 1) // L
    offsets = block_offsets(key, torch.arange(first, last + 1, dtype=torch.int64, device=device), m)
    bucket = (offsets[:, None] + torch.arange(L, dtype=torch.int64, device=device)).remainder_(m).reshape(-1)
    return bucket[start % L : start % L + length], sign


def sketch_torch(views: Sequence[torch.Tensor], segs: torch.Tensor, groups: torch.Tensor, out: torch.Tensor) -> None:
    """``out = S theta`` in float64 with torch ops on the views' device,
    ``CHUNK`` (``CPU_CHUNK``) elements at a time (nothing P-sized is made)."""
    out.zero_()
    device = out.device
    chunk = CPU_CHUNK if device.type == "cpu" else CHUNK
    g_rows = groups.tolist()
    for view, start, length, key, coord, group in segs.tolist():
        base, m, identity = g_rows[group][0], g_rows[group][1], g_rows[group][2]
        for s in range(0, length, chunk):
            n = min(chunk, length - s)
            x = views[view][start + s : start + s + n].double()
            if identity:
                out[base + coord + s : base + coord + s + n] += x
            else:
                bucket, sign = buckets_and_signs(key, coord + s, n, m, device)
                out.index_add_(0, bucket + base, x * sign)


SKETCH_WORK_COLS = 8  # view, start, length, coord, key, out, m, log2 of the block length (-1: identity group)


def sketch_work(segs: np.ndarray, groups: np.ndarray, sizes: Sequence[int], out_size: int, span: int) -> np.ndarray:
    """The work table of the sketch kernels (the Triton and CUDA
    ones'), int64 ``[n, SKETCH_WORK_COLS]``: the segments of ``segs``
    (:mod:`.sketch`) cut into rows of at most ``span`` elements, each row
    ``(view, start, length, coord, key, out, m, log2 L)`` with its group's
    ``out`` and ``m`` and ``L = block_length(m)``, or -1 for an identity
    group. The kernels read and write where the rows say without checking, so
    this raises a ValueError naming the first segment or group whose reads
    would leave the views (of ``sizes``), whose writes would leave ``out``
    (of ``out_size`` numbers), or, for an identity group, whose segments
    overlap."""
    seg = np.asarray(segs, dtype=np.int64).reshape(-1, 6)
    grp = np.asarray(groups, dtype=np.int64).reshape(-1, 7)
    view, start, length, key, coord, group = seg.T
    out, m, identity = grp[:, 0], grp[:, 1], grp[:, 2] != 0
    sizes = np.asarray(sizes, dtype=np.int64)
    ok = (view >= 0) & (view < len(sizes)) & (start >= 0) & (length >= 0) & (coord >= 0) & (group >= 0) & (group < len(grp))
    ok[ok] = start[ok] + length[ok] <= sizes[view[ok]]
    if not ok.all():
        raise ValueError(f"sketch: segment {int(np.flatnonzero(~ok)[0])} does not fit the views or the groups")
    fits = (m >= 1) & (m <= 1 << 32) & (out >= 0) & (out + m <= out_size)
    # an identity group's coordinates are its buckets, each in one segment (its add is not atomic)
    fits[group[identity[group] & (coord + length > m[group])]] = False
    runs = np.flatnonzero(identity[group] & (length > 0))
    runs = runs[np.lexsort((coord[runs], group[runs]))]
    overlap = (group[runs[1:]] == group[runs[:-1]]) & (coord[runs[1:]] < coord[runs[:-1]] + length[runs[:-1]])
    fits[group[runs[1:][overlap]]] = False
    if not fits.all():
        raise ValueError(f"sketch: group {int(np.flatnonzero(~fits)[0])} does not fit its segments or out")
    pieces = -(-length // span)
    idx = np.repeat(np.arange(len(seg)), pieces)
    skip = (np.arange(len(idx)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * span
    g = group[idx]
    log2_block = np.array([block_length(int(x)).bit_length() - 1 for x in m], dtype=np.int64)
    rows = np.stack([view[idx], start[idx] + skip, np.minimum(span, length[idx] - skip), coord[idx] + skip, key[idx],
                     out[g], m[g], np.where(identity[g], -1, log2_block[g])], axis=1)
    return rows.reshape(-1, SKETCH_WORK_COLS).astype(np.int64)
