"""Triton kernels: CUDA devices, or the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, used by the tests).

Design (bytes per op; ``s`` is the ring's element size, ``P`` the flat size):

* ``slide``/``project``/``gather``/``step`` share one streaming kernel,
  ``_pass_kernel``: one program per chunk of a table built once per
  ``bounds`` (and, for the ops that read the parameters, per parameter list)
  and cached on the device. A chunk never crosses a group boundary, a
  parameter-tensor boundary, or the global ``chunk`` grid. Each program loads
  its slice of the source (the row, or the parameters and the snapshot), every
  ring row as a ``[W_BLOCK, BLOCK]`` tile, and keeps a float32 accumulator per
  row; the chunk's sums go to a ``[n_chunks, W(+1)]`` table of partials that
  ``_sum_chunks_kernel`` adds per group in float64, chunk by chunk in order
  (deterministic, no atomics).

  - ``slide``: reads ``a`` (4P) and the ring (W·s·P), writes the slot (s·P).
  - ``project``: reads the vector and the ring, writes nothing of size P.
  - ``gather``: reads the parameters, reads and writes the snapshot, writes
    ``out``: one pass over the parameters for hundreds of tensors, through a
    table of their addresses (one launch per parameter dtype).
  - ``step``: ``gather`` and ``slide`` fused: the update is formed in
    registers and never stored as a float32 row, which saves the 8P bytes of
    writing and re-reading it: reads the parameters, the snapshot (read and
    written) and the ring, and writes the slot.

* ``combine``: reads the ring (W·s·P), writes 4P.
* ``gram``: reads ``x`` once per pair of row blocks (once for ``W <= 64``).

Tile sizes are fixed per row count instead of autotuned: autotuning re-runs a
kernel, and ``slide``, ``gather`` and ``step`` update the ring slot and the
snapshot in place. Interior tiles of a chunk are loaded without a mask, on
``BLOCK``-aligned offsets, so that the compiler can vectorise them; only the
partial tiles at a chunk's ends are masked. Loads of the ring rows vectorise
when its row stride is a multiple of 16 elements.
"""
from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np
import torch

from . import Backend, Bounds, upload
from .sketch import OFFSET_SALT, sketch_work

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # the kernels below are plain functions then, never launched
    triton = tl = None
    _MISSING = f"triton is not installed ({exc}); install it with pip install 'spectral-edge-fast[triton]'"

    def _jit(fn=None, **_):
        return fn if fn is not None else (lambda f: f)
else:
    _MISSING = ""
    _jit = triton.jit


def _interpreting() -> bool:
    """Whether ``triton.jit`` makes interpreted kernels (CPU only); read once,
    as it does when it decorates. Releases before ``triton.knobs`` read the
    variable directly."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    return bool(knobs.runtime.interpret) if knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"


_INTERPRET = _interpreting()

CHUNK = 1 << 15  # elements summed in float32 per program before the float64 sum
# Elements of the ring a program loads per iteration: on a GPU 8 per thread at
# 8 warps (larger tiles cost registers, so resident programs, for no more bytes
# in flight); the interpreter pays per operation, not per element.
_TILE = 1 << 14 if _INTERPRET else 2048
_SKETCH_BLOCK = 1 << 12 if _INTERPRET else 1024  # elements of one sketch tile
_MAX_ROWS = 128  # one program holds all the rows of the ring in registers
GRAM_PARTIAL_BYTES = 64 << 20  # the most float64 partials gram holds
# Position = the code of a parameter dtype in the chunk table.
_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TABLE_COLS = 5  # start, end, parameter dtype code, parameter address, parameter's flat start
_TABLE_CACHE = 16  # tables kept per backend (one per bounds and parameter list, one per sketch layout)
# Explicit, so that results do not change with Triton's default (which 3.10 turns off).
_LAUNCH = {"enable_fp_fusion": True}
# OFFSET_SALT's 32-bit halves for the sketch kernel (Triton reads a global only as a constexpr)
_SALT_LO, _SALT_HI = OFFSET_SALT & 0xFFFFFFFF, OFFSET_SALT >> 32
if tl is not None:
    _SALT_LO, _SALT_HI = tl.constexpr(_SALT_LO), tl.constexpr(_SALT_HI)
_TL_DTYPES = {} if tl is None else {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
                                    torch.float16: tl.float16, torch.float64: tl.float64}


@_jit
def _rounded(x, DTYPE: tl.constexpr):
    """``x`` cast to ``DTYPE``, rounding to nearest even like torch's ``.to``.
    To bfloat16 on the bits: Triton's interpreter truncates (and flushes
    subnormals), and one definition keeps the CPU tests and the GPU on the
    same bits."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        even = bits + 0x7FFF + ((bits >> 16) & 1)
        bits = tl.where(x != x, bits | 0x400000, even) >> 16  # a NaN stays a (quiet) NaN
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@_jit
def _tile(acc, acc_self, base, start, end, src, shift, snap_ptr, out_ptr, ring_ptr, ring_stride, W, slot,
          FROM_PARAMS: tl.constexpr, DOTS: tl.constexpr, WRITE: tl.constexpr, MASKED: tl.constexpr,
          W_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """One ``BLOCK`` of flat positions from ``base``: the source, then either
    the dots with every ring row (and the slot write) or the store to ``out``."""
    offs = base + tl.arange(0, BLOCK)
    if MASKED:
        m = (offs >= start) & (offs < end)
    else:
        m = tl.full([BLOCK], 1, tl.int1)  # constant: the loads still vectorise
    x = tl.load(src + (offs - shift), mask=m, other=0.0)
    if FROM_PARAMS:
        theta = x.to(snap_ptr.dtype.element_ty)
        delta = theta - tl.load(snap_ptr + offs, mask=m, other=0.0)
    else:
        delta = x
    if DOTS:
        rows = tl.arange(0, W_BLOCK)
        ptrs = ring_ptr + rows.to(tl.int64)[:, None] * ring_stride + offs[None, :]
        live = (rows < W)[:, None] & m[None, :]
        r = tl.load(ptrs, mask=live, other=0.0)
    # The snapshot and the ring's slot are read, then written, by the same
    # program, but Triton may give a load and the store of the same element to
    # different threads: without this barrier one warp's store can overtake
    # another's load (seen on an H100: the leaving row, or a zero update, read
    # back). All of the tile's loads complete before any of its stores.
    tl.debug_barrier()
    if FROM_PARAMS:
        tl.store(snap_ptr + offs, theta, mask=m)
    if DOTS:
        if WRITE:
            a_ring = _rounded(delta.to(tl.float32), ring_ptr.dtype.element_ty)
            a = a_ring.to(tl.float32)
            acc_self += a * a
        else:
            a = delta.to(tl.float32)
        acc += r.to(tl.float32) * a[None, :]
        if WRITE:
            is_slot = live & (rows == slot)[:, None]
            tl.store(ptrs, tl.broadcast_to(a_ring[None, :], [W_BLOCK, BLOCK]), mask=is_slot)
    else:
        tl.store(out_ptr + offs, _rounded(delta, out_ptr.dtype.element_ty), mask=m)
    return acc, acc_self


@_jit(do_not_specialize=["slot"])
def _pass_kernel(tab_ptr, src_ptr, snap_ptr, out_ptr, ring_ptr, part_ptr, ring_stride, W, slot, n_cols,
                 PARAM_CODE: tl.constexpr, PARAM_DTYPE: tl.constexpr, DOTS: tl.constexpr, WRITE: tl.constexpr,
                 W_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """One program per chunk ``[start, end)`` of the table. The source is the
    flat vector ``src_ptr`` (``PARAM_CODE < 0``) or the parameters of dtype
    code ``PARAM_CODE``, whose addresses are in the table."""
    pid = tl.program_id(0)
    entry = tab_ptr + pid * 5  # _TABLE_COLS
    start = tl.load(entry)
    end = tl.load(entry + 1)
    if PARAM_CODE >= 0:
        if tl.load(entry + 2) != PARAM_CODE:
            return  # a chunk of another dtype: another launch takes it
        src = tl.load(entry + 3).to(tl.pointer_type(PARAM_DTYPE))
        shift = tl.load(entry + 4)
    else:
        src = src_ptr
        shift = 0
    acc = tl.zeros([W_BLOCK, BLOCK], tl.float32)
    acc_self = tl.zeros([BLOCK], tl.float32)
    lo = tl.cdiv(start, BLOCK) * BLOCK
    hi = end // BLOCK * BLOCK
    for base in range(lo, hi, BLOCK):  # whole aligned tiles, unmasked
        acc, acc_self = _tile(acc, acc_self, tl.multiple_of(base, BLOCK), start, end, src, shift, snap_ptr, out_ptr,
                              ring_ptr, ring_stride, W, slot, PARAM_CODE >= 0, DOTS, WRITE, False, W_BLOCK, BLOCK)
    if start < lo:  # the partial tile at the start (the whole chunk, if it lies inside one tile)
        acc, acc_self = _tile(acc, acc_self, lo - BLOCK, start, end, src, shift, snap_ptr, out_ptr, ring_ptr,
                              ring_stride, W, slot, PARAM_CODE >= 0, DOTS, WRITE, True, W_BLOCK, BLOCK)
    if (hi < end) & (hi >= lo):  # the partial tile at the end
        acc, acc_self = _tile(acc, acc_self, hi, start, end, src, shift, snap_ptr, out_ptr, ring_ptr,
                              ring_stride, W, slot, PARAM_CODE >= 0, DOTS, WRITE, True, W_BLOCK, BLOCK)
    if DOTS:
        rows = tl.arange(0, W_BLOCK)
        part = part_ptr + pid * n_cols
        tl.store(part + rows, tl.sum(acc, axis=1), mask=rows < W)
        if WRITE:
            tl.store(part + W, tl.sum(acc_self, axis=0))


@_jit
def _sum_chunks_kernel(part_ptr, first_ptr, out_ptr, n_cols, C_BLOCK: tl.constexpr, COL_BLOCK: tl.constexpr):
    """``out[g] = sum(part[first[g]:first[g+1]])`` in float64, in a fixed order."""
    g = tl.program_id(0)
    cols = tl.program_id(1) * COL_BLOCK + tl.arange(0, COL_BLOCK)
    c0 = tl.load(first_ptr + g)
    c1 = tl.load(first_ptr + g + 1)
    acc = tl.zeros([C_BLOCK, COL_BLOCK], tl.float64)
    for c in range(c0, c1, C_BLOCK):
        rows = c + tl.arange(0, C_BLOCK)
        live = (rows < c1)[:, None] & (cols < n_cols)[None, :]
        acc += tl.load(part_ptr + rows[:, None] * n_cols + cols[None, :], mask=live, other=0.0).to(tl.float64)
    tl.store(out_ptr + g * n_cols + cols, tl.sum(acc, axis=0), mask=cols < n_cols)


@_jit
def _combine_kernel(ring_ptr, coef_ptr, out_ptr, W, P, ring_stride, W_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """``out[j] = sum_i coef[i] ring[i, j]`` in float32 for one block of ``j``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, W_BLOCK)
    coef = tl.load(coef_ptr + rows, mask=rows < W, other=0.0)
    live = (rows < W)[:, None] & (offs < P)[None, :]
    r = tl.load(ring_ptr + rows.to(tl.int64)[:, None] * ring_stride + offs[None, :], mask=live, other=0.0)
    tl.store(out_ptr + offs, tl.sum(r.to(tl.float32) * coef[:, None], axis=0), mask=offs < P)


@_jit
def _gram_kernel(x_ptr, part_ptr, W, P, x_stride, chunk, per_span, R_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """Partial ``x x^T`` of one span of ``per_span`` chunks of columns, for one
    pair of row blocks: float32 products summed per chunk, the chunks added in
    float64 in order. Products in float32 (IEEE, not TF32): the Gram is rare,
    and one float32 path is also the one the interpreter checks (its bfloat16
    dot is wrong)."""
    s = tl.program_id(0)
    ri = tl.program_id(1) * R_BLOCK + tl.arange(0, R_BLOCK)
    rj = tl.program_id(2) * R_BLOCK + tl.arange(0, R_BLOCK)
    xi = x_ptr + ri.to(tl.int64)[:, None] * x_stride
    xj = x_ptr + rj.to(tl.int64)[:, None] * x_stride
    total = tl.zeros([R_BLOCK, R_BLOCK], tl.float64)
    first = s.to(tl.int64) * per_span
    for c in range(first, first + per_span):
        start = c * chunk
        stop = tl.minimum(start + chunk, P)
        acc = tl.zeros([R_BLOCK, R_BLOCK], tl.float32)
        for base in range(start, stop, BLOCK):
            offs = base + tl.arange(0, BLOCK)
            a = tl.load(xi + offs[None, :], mask=(ri < W)[:, None] & (offs < stop)[None, :], other=0.0)
            b = tl.load(xj + offs[None, :], mask=(rj < W)[:, None] & (offs < stop)[None, :], other=0.0)
            acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
        total += acc.to(tl.float64)
    part = part_ptr + s.to(tl.int64) * W * W
    tl.store(part + ri[:, None] * W + rj[None, :], total, mask=(ri < W)[:, None] & (rj < W)[None, :])


@_jit
def _sketch_hash(c, key_lo, key_hi):
    """``sef::sketch_hash(key, c)`` (csrc/kernels/sketch.h) of int64
    coordinates ``c >= 0`` in uint32 lanes, the key as its two 32-bit halves
    (int64 scalars in [0, 2^32))."""
    x = (c & 0xFFFFFFFF).to(tl.uint32) ^ key_lo.to(tl.uint32)
    x = x + (c >> 32).to(tl.uint32) * 0x9E3779B9 + key_hi.to(tl.uint32)
    x ^= x >> 16
    x *= 0x85EBCA6B
    x ^= x >> 13
    x *= 0xC2B2AE35
    return x ^ (x >> 16)


@_jit(do_not_specialize=["first"])
def _sketch_kernel(work_ptr, src_ptr, addr_ptr, out_ptr, first, VIEW_DTYPE: tl.constexpr, FROM_TABLE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """One program per row of the work table (:func:`sketch_work`): its
    elements' signed values added in float64 into ``out``. A hashed element
    goes to bucket ``(o_b + r) mod m`` of block ``b = c >> log2 L``, position
    ``r``: a block's elements are consecutive buckets (one or two runs,
    wrapping at m), so neighbouring lanes add to neighbouring addresses. The
    atomic adds of different programs land in any order, so the last bits of
    a bucket vary from run to run (docs/numerics.md#sketch-mode). An identity
    group's coordinates are each in one row only: a plain add."""
    row = work_ptr + (first + tl.program_id(0)).to(tl.int64) * 8  # SKETCH_WORK_COLS
    start = tl.load(row + 1)
    n = tl.load(row + 2)
    coord = tl.load(row + 3)
    key = tl.load(row + 4)
    out = out_ptr + tl.load(row + 5)
    m = tl.load(row + 6)
    log2_block = tl.load(row + 7)
    if FROM_TABLE:
        src = tl.load(addr_ptr + tl.load(row)).to(tl.pointer_type(VIEW_DTYPE))
    else:
        src = src_ptr
    src += start
    # the sign hash's key and the offset hash's, key + OFFSET_SALT mod 2^64, as 32-bit halves
    key_lo = key & 0xFFFFFFFF
    key_hi = (key >> 32) & 0xFFFFFFFF
    salted = key_lo + _SALT_LO
    off_lo = salted & 0xFFFFFFFF
    off_hi = (key_hi + _SALT_HI + (salted >> 32)) & 0xFFFFFFFF
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        live = offs < n
        x = tl.load(src + offs, mask=live, other=0.0).to(tl.float64)
        c = coord + offs
        if log2_block < 0:
            ptrs = out + c
            tl.store(ptrs, tl.load(ptrs, mask=live, other=0.0) + x, mask=live)
        else:
            h_off = _sketch_hash(c >> log2_block, off_lo, off_hi)
            bucket = ((h_off.to(tl.uint64) * m.to(tl.uint64)) >> 32).to(tl.int64) + (c & ((1 << log2_block) - 1))
            bucket = tl.where(bucket >= m, bucket - m, bucket)
            negative = (_sketch_hash(c, key_lo, key_hi) & 1) != 0
            tl.atomic_add(out + bucket, tl.where(negative, -x, x), mask=live, sem="relaxed")


class _Chunks:
    """A chunk table on the device: ``table`` ``[n, 5]`` int64 rows (start,
    end, parameter dtype code, parameter address, parameter's flat start) in
    flat order, ``first`` ``[G+1]``: group ``g`` owns chunks
    ``first[g]:first[g+1]``, and ``codes``: the parameter dtype codes present."""

    def __init__(self, bounds: Bounds, chunk: int, device, params: Sequence[torch.Tensor] = ()):
        size = bounds[-1]
        sizes = np.array([p.numel() for p in params], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        keep = sizes > 0
        cuts = np.unique(np.concatenate([np.asarray(bounds, dtype=np.int64), np.arange(0, size, chunk, dtype=np.int64),
                                         starts[keep]]))
        lo, hi = cuts[:-1], cuts[1:]
        rows = np.zeros((len(lo), _TABLE_COLS), dtype=np.int64)
        rows[:, 0], rows[:, 1] = lo, hi
        if len(params):
            owner = np.flatnonzero(keep)[np.searchsorted(starts[keep], lo, side="right") - 1]
            codes = np.array([_PARAM_DTYPES.index(p.dtype) for p in params], dtype=np.int64)
            rows[:, 2] = codes[owner]
            rows[:, 3] = np.array([p.data_ptr() for p in params], dtype=np.uint64).view(np.int64)[owner]
            rows[:, 4] = starts[owner]
            self.codes = sorted(set(rows[:, 2].tolist()))
        else:
            self.codes = []
        self.n = len(lo)
        self.table = upload(torch.from_numpy(rows), device)
        self.first = upload(torch.from_numpy(np.searchsorted(lo, bounds).astype(np.int64)), device)


def _check_views(views: Sequence[torch.Tensor], device) -> None:
    for i, v in enumerate(views):
        if v.dtype not in _PARAM_DTYPES or v.device != device or not v.is_contiguous():
            raise ValueError(f"sketch: views[{i}] must be a contiguous float32, bfloat16, float16 or float64 "
                             f"tensor on {device}, got a {'' if v.is_contiguous() else 'non-contiguous '}"
                             f"{v.dtype} tensor on {v.device}")


class _SketchWork:
    """:func:`sketch_work` on the device, its rows ordered by their view's
    dtype: ``launches`` holds ``(dtype code, first row, rows)``, one kernel
    launch each; ``addresses`` the views' addresses when there are several
    (one view is passed to the kernel itself)."""

    def __init__(self, views: Sequence[torch.Tensor], segs, groups, out: torch.Tensor, span: int):
        _check_views(views, out.device)
        rows = sketch_work(segs.cpu().numpy(), groups.cpu().numpy(), [v.numel() for v in views], out.numel(), span)
        codes = np.array([_PARAM_DTYPES.index(v.dtype) for v in views], dtype=np.int64)[rows[:, 0]]
        order = np.argsort(codes, kind="stable")
        codes, counts = np.unique(codes[order], return_counts=True)
        firsts = np.cumsum(counts) - counts
        self.launches = [(int(c), int(f), int(n)) for c, f, n in zip(codes, firsts, counts)]
        self.table = upload(torch.from_numpy(np.ascontiguousarray(rows[order])), out.device)
        self.addresses = self.table
        if len(views) > 1:
            ptrs = np.array([v.data_ptr() for v in views], dtype=np.uint64).view(np.int64)
            self.addresses = upload(torch.from_numpy(ptrs), out.device)


def _tiles(rows: int):
    """``(W_BLOCK, BLOCK)``: all rows, and columns to make a tile of about
    ``_TILE`` elements: at least 32 (128 contiguous bytes in float32), at most
    4096 (a chunk of a tiny tensor costs the interpreter a whole tile)."""
    w_block = triton.next_power_of_2(rows)
    return w_block, max(32, min(4096, _TILE // w_block))


def _check_rows(rows: int) -> None:
    if not 1 <= rows <= _MAX_ROWS:
        raise ValueError(f"the triton backend handles rings of 1 to {_MAX_ROWS} rows, got W={rows}; "
                         "use the torch backend for wider windows")


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, chunk: int = CHUNK):
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.chunk = chunk
        self._tables: collections.OrderedDict = collections.OrderedDict()

    def available(self, device):
        if _MISSING:
            return False, _MISSING
        if device.type == "cuda":
            if _INTERPRET:
                return False, "TRITON_INTERPRET=1 runs Triton kernels on the CPU only; unset it for CUDA tensors"
            if not torch.cuda.is_available():
                return False, "no CUDA device is available to torch"
            return True, ""
        if device.type == "cpu":
            if _INTERPRET:
                return True, ""
            return False, "Triton kernels run on CUDA devices; on the CPU only in interpreter mode (TRITON_INTERPRET=1)"
        return False, f"the triton backend does not support {device.type} devices"

    def _chunks(self, bounds: Bounds, device, params: Sequence[torch.Tensor] = ()) -> _Chunks:
        """The cached chunk table, built and uploaded (synchronously) once per
        key, so that the per-step path only looks it up: call each op once
        before capturing it in a CUDA graph."""
        key = (device, tuple(bounds), self.chunk, tuple((p.data_ptr(), p.numel(), p.dtype) for p in params))
        return self._cached(key, lambda: _Chunks(tuple(bounds), self.chunk, device, params))

    def _cached(self, key, build):
        """The table under ``key``, built by ``build()`` on a miss; the
        ``_TABLE_CACHE`` most recently used are kept."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = build()
            while len(self._tables) > _TABLE_CACHE:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def _sketch_work(self, views, segs, groups, out) -> _SketchWork:
        """The cached work table (built, checked and uploaded synchronously
        once per key, as :meth:`_chunks`), keyed by the tables' contents and
        the views' sizes, dtypes and, when there are several, addresses (one
        view, a new flat vector each call, is checked each call)."""
        if out.dtype != torch.float64 or not out.is_contiguous():
            raise ValueError(f"sketch: out must be a contiguous float64 tensor, got {out.dtype}")
        if len(views) == 1:
            _check_views(views, out.device)
            views_key = (views[0].numel(), views[0].dtype)
        else:
            views_key = tuple((v.data_ptr(), v.numel(), v.dtype) for v in views)
        key = ("sketch", out.device, out.numel(), self.chunk, segs.cpu().numpy().tobytes(),
               groups.cpu().numpy().tobytes(), views_key)
        return self._cached(key, lambda: _SketchWork(views, segs, groups, out, self.chunk))

    def _sum_chunks(self, part: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """``[G, n_cols]`` float64: group g sums the rows ``first[g]:first[g+1]`` of ``part``."""
        groups, n_cols = first.numel() - 1, part.shape[1]
        out = torch.empty(groups, n_cols, dtype=torch.float64, device=part.device)
        col_block = min(64, triton.next_power_of_2(n_cols))
        if groups and n_cols:
            _sum_chunks_kernel[(groups, triton.cdiv(n_cols, col_block))](
                part, first, out, n_cols, C_BLOCK=max(16, 2048 // col_block), COL_BLOCK=col_block, **_LAUNCH)
        return out

    def _pass(self, chunks: _Chunks, src, snapshot, out, ring, slot=0, *, dots, write, codes=(-1,)):
        """Launch ``_pass_kernel`` over ``chunks``, once per parameter dtype code
        in ``codes`` (-1: the source is the flat vector ``src``). A tensor
        argument that the mode does not read or write may be any tensor.
        Returns the chunk partials ``[n, W(+1)]`` when ``dots``."""
        rows = ring.shape[0] if dots else 1
        n_cols = rows + 1 if write else rows
        part = torch.empty(chunks.n if dots else 0, n_cols, dtype=torch.float32, device=snapshot.device)
        w_block, block = _tiles(rows)
        for code in codes if chunks.n else ():
            param_dtype = _TL_DTYPES[_PARAM_DTYPES[code] if code >= 0 else src.dtype]
            _pass_kernel[(chunks.n,)](
                chunks.table, src, snapshot, out, ring if dots else out, part, ring.stride(0) if dots else 0,
                rows, slot, n_cols, PARAM_CODE=code, PARAM_DTYPE=param_dtype, DOTS=dots, WRITE=write,
                W_BLOCK=w_block, BLOCK=block, num_warps=8, **_LAUNCH)
        return part

    # ops, on arguments checked by the custom ops --------------------------

    def _gather(self, params, snapshot, out):
        chunks = self._chunks((0, snapshot.numel()), snapshot.device, params)
        self._pass(chunks, snapshot, snapshot, out, None, dots=False, write=True, codes=chunks.codes)

    def _slide(self, ring, row, slot, bounds):
        _check_rows(ring.shape[0])
        chunks = self._chunks(bounds, ring.device)
        part = self._pass(chunks, row, row, row, ring, slot, dots=True, write=True)
        return self._sum_chunks(part, chunks.first)

    def _step(self, params, snapshot, ring, slot, bounds):
        _check_rows(ring.shape[0])
        chunks = self._chunks(bounds, ring.device, params)
        part = self._pass(chunks, snapshot, snapshot, snapshot, ring, slot, dots=True, write=True, codes=chunks.codes)
        return self._sum_chunks(part, chunks.first)

    def _project(self, ring, vec, bounds):
        _check_rows(ring.shape[0])
        chunks = self._chunks(bounds, ring.device)
        part = self._pass(chunks, vec, vec, vec, ring, dots=True, write=False)
        return self._sum_chunks(part, chunks.first)

    def _combine(self, ring, coeffs):
        rows, size = ring.shape
        _check_rows(rows)
        coeffs = coeffs.to(torch.float32).contiguous()
        out = torch.empty(size, dtype=torch.float32, device=ring.device)
        w_block, block = _tiles(rows)
        if size:
            _combine_kernel[(triton.cdiv(size, block),)](ring, coeffs, out, rows, size, ring.stride(0),
                                                        W_BLOCK=w_block, BLOCK=block, num_warps=8, **_LAUNCH)
        return out

    def _gram(self, x):
        rows, size = x.shape
        r_block = min(64, max(16, triton.next_power_of_2(rows)))
        n_blocks = triton.cdiv(rows, r_block)
        # Spans of whole chunks, as many as GRAM_PARTIAL_BYTES of float64
        # partials hold (one if a single W x W Gram is larger): a longer x
        # gets longer spans, not more partials.
        n_chunks = triton.cdiv(size, self.chunk)
        per_span = max(1, triton.cdiv(n_chunks, max(1, GRAM_PARTIAL_BYTES // (8 * rows * rows))))
        spans = triton.cdiv(n_chunks, per_span)
        part = torch.empty(spans, rows * rows, dtype=torch.float64, device=x.device)
        if spans and rows:
            _gram_kernel[(spans, n_blocks, n_blocks)](x, part, rows, size, x.stride(0), self.chunk, per_span,
                                                      R_BLOCK=r_block, BLOCK=64, num_warps=4, **_LAUNCH)
        first = torch.arange(2, device=x.device) * spans  # one group: spans [0, spans)
        return self._sum_chunks(part, first).view(rows, rows)

    def _sketch(self, views, segs, groups, out, scratch):
        work = self._sketch_work(views, segs, groups, out)
        out.zero_()
        for code, first, count in work.launches:
            _sketch_kernel[(count,)](work.table, views[0], work.addresses, out, first,
                                     VIEW_DTYPE=_TL_DTYPES[_PARAM_DTYPES[code]], FROM_TABLE=len(views) > 1,
                                     BLOCK=_SKETCH_BLOCK, num_warps=4, **_LAUNCH)


def make_backend(name):
    return TritonBackend()
