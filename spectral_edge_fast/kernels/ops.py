"""The engine's ops as ``torch.library`` custom ops, ``torch.ops.spectral_edge_fast.*``.

Each op is defined here once: its schema, its argument checks and its fake
implementation (shapes only, so that ``torch.compile`` traces a call without
running it). The first argument names the backend instance
(:attr:`Backend.key`); the eager implementation checks the arguments, then
runs that backend's ``_gather``, ``_slide``, ... So every backend raises the
same error for the same bad input, at trace time too, and a compiled graph
holds each call as one opaque node that runs the backend's kernels as in
eager mode. The ops are not differentiable: autograd passes them through.
"""
from __future__ import annotations

import operator
import weakref
from typing import Sequence

import torch

NAMESPACE = "spectral_edge_fast"
SCHEMAS = {
    "gather": "(str backend, Tensor[] params, Tensor(a!) snapshot, Tensor(b!) out) -> ()",
    "slide": "(str backend, Tensor(a!) ring, Tensor row, SymInt slot, int[] bounds) -> Tensor",
    "step": "(str backend, Tensor[] params, Tensor(a!) snapshot, Tensor(b!) ring, SymInt slot, int[] bounds) -> Tensor",
    "project": "(str backend, Tensor ring, Tensor vec, int[] bounds) -> Tensor",
    "combine": "(str backend, Tensor ring, Tensor coeffs) -> Tensor",
    "gram": "(str backend, Tensor x) -> Tensor",
}

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
RING_DTYPES = (torch.float32, torch.bfloat16)
SNAPSHOT_DTYPES = (torch.float32, torch.float64)
# Rows convert exactly to float32, in which the kernels form the update: a
# float64 row would be rounded twice (through float32) on its way to a
# bfloat16 ring, where the reference rounds once.
ROW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FLOAT_SET = frozenset(FLOATS)
_DEVICE_AND_DTYPE = operator.attrgetter("device", "dtype")

_lib = torch.library.Library(NAMESPACE, "DEF")
_live: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()


def register(backend) -> str:
    """The key by which the ops find ``backend``; held weakly."""
    key = f"{type(backend).__name__}@{id(backend):x}"  # its name may be set only by __init__
    _live[key] = backend
    return key


def _backend(key: str, device: torch.device):
    backend = _live.get(key)
    if backend is None:
        raise RuntimeError(f"no live backend {key!r}; get one with spectral_edge_fast.kernels.get_backend()")
    ok, reason = backend.available(device)
    if not ok:
        raise RuntimeError(f"backend {backend.name!r} is not available on {device.type}: {reason}")
    return backend


# -- argument checks, one per kind of argument ----------------------------------------------


def _names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _dtype(op: str, what: str, t: torch.Tensor, allowed) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{op}: {what} must be {_names(allowed)}, got {t.dtype}")


def _matrix(op: str, t: torch.Tensor, what: str = "ring"):
    """A ``[W, P]`` float32 or bfloat16 matrix with contiguous, non-overlapping rows."""
    if t.dim() != 2:
        raise ValueError(f"{op}: {what} must be 2-D [W, P], got shape {tuple(t.shape)}")
    _dtype(op, what, t, RING_DTYPES)
    rows, cols = t.shape
    if cols > 1 and t.stride(1) != 1:
        raise ValueError(f"{op}: {what} rows must be contiguous (stride(1) == 1), got strides {t.stride()}")
    if rows > 1 and t.stride(0) < cols:
        raise ValueError(f"{op}: {what} rows overlap (stride(0) = {t.stride(0)} < P = {cols})")
    return rows, cols


def _vector(op: str, what: str, t: torch.Tensor, size, device: torch.device, allowed) -> None:
    if t.device != device:
        raise ValueError(f"{op}: {what} is on {t.device}, expected {device} like the other arguments")
    if t.dim() != 1 or t.numel() != size:
        raise ValueError(f"{op}: {what} must be 1-D with P = {size} elements, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {what} must be contiguous")
    _dtype(op, what, t, allowed)


def _params(op: str, params: Sequence[torch.Tensor], size, device: torch.device) -> None:
    # The per-step path checks hundreds of tensors: first all at once, with
    # C-level loops (a Python loop cost more than the kernels of small
    # models); the loop below only names the first bad tensor.
    kinds = set(map(_DEVICE_AND_DTYPE, params))
    if all(d == device and t in _FLOAT_SET for d, t in kinds) and all(map(torch.Tensor.is_contiguous, params)):
        total = sum(map(torch.Tensor.numel, params))
        if total != size:
            raise ValueError(f"{op}: params hold {total} elements, expected P = {size}")
        return
    for i, p in enumerate(params):
        what = f"params[{i}]"
        if p.device != device:
            raise ValueError(f"{op}: {what} is on {p.device}, expected {device} like the other arguments")
        _dtype(op, what, p, FLOATS)
        if not p.is_contiguous():
            raise ValueError(f"{op}: {what} must be contiguous")

def _slot(op: str, slot, rows) -> None:
    if not (0 <= slot and slot < rows):
        raise ValueError(f"{op}: slot {slot} is outside the ring's {rows} rows")


def _bounds(op: str, bounds: Sequence[int], size) -> None:
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != size or any(b > e for b, e in zip(bounds[:-1], bounds[1:])):
        shown = ", ".join(map(str, bounds[:8])) + (", ..." if len(bounds) > 8 else "")
        raise ValueError(f"{op}: bounds must rise from 0 to P = {size} without decreasing; got ({shown})")


# -- the ops: checks (returning the device the backend runs on) and result shapes ----------


def _check_gather(params, snapshot, out):
    size = out.numel()
    _vector("gather", "out", out, size, out.device, RING_DTYPES)
    _vector("gather", "snapshot", snapshot, size, out.device, SNAPSHOT_DTYPES)
    _params("gather", params, size, out.device)
    return out.device


def _check_slide(ring, row, slot, bounds):
    rows, cols = _matrix("slide", ring)
    _vector("slide", "row", row, cols, ring.device, ROW_DTYPES)
    _slot("slide", slot, rows)
    _bounds("slide", bounds, cols)
    return ring.device


def _check_step(params, snapshot, ring, slot, bounds):
    rows, cols = _matrix("step", ring)
    _vector("step", "snapshot", snapshot, cols, ring.device, SNAPSHOT_DTYPES)
    _params("step", params, cols, ring.device)
    _slot("step", slot, rows)
    _bounds("step", bounds, cols)
    return ring.device


check_step = _check_step


def _check_project(ring, vec, bounds):
    _, cols = _matrix("project", ring)
    _vector("project", "vec", vec, cols, ring.device, FLOATS)
    _bounds("project", bounds, cols)
    return ring.device


def _check_combine(ring, coeffs):
    rows, _ = _matrix("combine", ring)
    if coeffs.device != ring.device:
        raise ValueError(f"combine: coeffs is on {coeffs.device}, expected {ring.device} like the ring")
    if coeffs.dim() != 1 or coeffs.numel() != rows:
        raise ValueError(f"combine: coeffs must be 1-D with one entry per ring row ({rows}), got shape {tuple(coeffs.shape)}")
    _dtype("combine", "coeffs", coeffs, FLOATS)
    return ring.device


def _check_gram(x):
    _matrix("gram", x, "x")
    return x.device


def _groups_by(ring, bounds, cols):
    return ring.new_empty((len(bounds) - 1, cols), dtype=torch.float64)


_RESULTS = {
    "gather": lambda params, snapshot, out: None,
    "slide": lambda ring, row, slot, bounds: _groups_by(ring, bounds, ring.shape[0] + 1),
    "step": lambda params, snapshot, ring, slot, bounds: _groups_by(ring, bounds, ring.shape[0] + 1),
    "project": lambda ring, vec, bounds: _groups_by(ring, bounds, ring.shape[0]),
    "combine": lambda ring, coeffs: ring.new_empty(ring.shape[1], dtype=torch.float32),
    "gram": lambda x: x.new_empty((x.shape[0], x.shape[0]), dtype=torch.float64),
}
_CHECKS = {
    "gather": _check_gather,
    "slide": _check_slide,
    "step": _check_step,
    "project": _check_project,
    "combine": _check_combine,
    "gram": _check_gram,
}


def _define(name: str) -> None:
    check, result, method = _CHECKS[name], _RESULTS[name], "_" + name

    def run(key, *args):
        backend = _backend(key, check(*args))
        with torch.no_grad():  # the torch ops of a Python backend would record history
            return getattr(backend, method)(*args)

    def fake(key, *args):
        _backend(key, check(*args))
        return result(*args)

    _lib.define(name + SCHEMAS[name])
    _lib.impl(name, run, "CompositeExplicitAutograd")
    _lib.impl(name, torch.library.fallthrough_kernel, "Autograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_lib)


for _name in SCHEMAS:
    _define(_name)
