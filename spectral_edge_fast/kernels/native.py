"""Backends ``cpp`` (CPU tensors) and ``cuda`` (CUDA tensors) on the compiled
extension ``spectral_edge_fast._C``, whose kernels are the functions of its
submodules ``cpu`` and ``cuda``; the custom ops of :mod:`.ops` call them.

Importing this module never fails: when the extension is missing, was built
against another torch, or was built without CUDA, ``available(device)`` says
so and the registry falls back to the next backend.

Every op that walks the flat space takes a *plan*: the int64 ``[n, 5]`` table
of chunks (tensor, offset, flat, length, group) cut at tensor and group
boundaries. It depends only on the tensor sizes and the bounds, so it is built
once per layout and, for CUDA, uploaded once per device (pinned memory,
non-blocking copy): the per-step path makes no host-device copy and no
synchronisation, and can be captured in a CUDA graph once warmed up.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Tuple

import numpy as np
import torch

from . import Backend, upload
from .sketch import sketch_work

BUILD_HINT = "build it with `python setup.py build_ext --inplace` (or `make build`)"


def _load_library():
    """``(module, "")``, or ``(None, reason)`` when the extension cannot be used."""
    spec = importlib.util.find_spec("spectral_edge_fast._C")
    if spec is None or spec.origin is None:
        return None, f"the compiled extension spectral_edge_fast._C is missing; {BUILD_HINT}"
    try:
        return importlib.import_module("spectral_edge_fast._C"), ""
    except ImportError as exc:
        return None, f"spectral_edge_fast._C failed to load ({exc}); rebuild it against torch {torch.__version__}"


_C, LOAD_ERROR = _load_library()


@functools.lru_cache(maxsize=64)
def _plan(sizes: Tuple[int, ...], bounds: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    return upload(_C.plan(list(sizes), list(bounds)), device)


CUDA_SKETCH_SPAN = 8192  # elements per block of the CUDA sketch kernel (32 per thread)


@functools.lru_cache(maxsize=16)
def _sketch_work(segs: bytes, groups: bytes, sizes: Tuple[int, ...], out_size: int, device: torch.device) -> torch.Tensor:
    """The CUDA sketch kernel's work table for these tables (their bytes),
    view sizes and output size: checked, then uploaded once per device like
    a plan."""
    rows = sketch_work(np.frombuffer(segs, dtype=np.int64), np.frombuffer(groups, dtype=np.int64), sizes, out_size,
                       CUDA_SKETCH_SPAN)
    return upload(torch.from_numpy(rows), device)


class NativeBackend(Backend):
    def __init__(self, name: str):
        self.name = name
        self._device_type = "cpu" if name == "cpp" else "cuda"

    def available(self, device: torch.device) -> Tuple[bool, str]:
        device = torch.device(device)
        if _C is None:
            return False, LOAD_ERROR
        if device.type != self._device_type:
            return False, f"backend {self.name!r} runs on {self._device_type} tensors, not {device.type}"
        if self._device_type == "cuda":
            if not _C.built_with_cuda():
                if torch.version.cuda is None:
                    return False, f"spectral_edge_fast._C was built without CUDA: torch {torch.__version__} is a CPU-only build"
                return False, (
                    "spectral_edge_fast._C was built without CUDA; rebuild with nvcc on PATH "
                    "(SEF_FORCE_CUDA=1 builds the CUDA kernels without a visible GPU)"
                )
            if not torch.cuda.is_available():
                return False, "torch sees no CUDA device"
        return True, ""

    def _kernels(self):
        return getattr(_C, self._device_type)

    def _gather(self, params, snapshot, out) -> None:
        sizes = tuple(p.numel() for p in params)
        self._kernels().gather(params, snapshot, out, _plan(sizes, (0, sum(sizes)), out.device))

    def _slide(self, ring, row, slot, bounds):
        plan = _plan((ring.shape[1],), tuple(bounds), ring.device)
        return self._kernels().slide(ring, row, slot, plan, len(bounds) - 1)

    def _step(self, params, snapshot, ring, slot, bounds):
        plan = _plan(tuple(p.numel() for p in params), tuple(bounds), ring.device)
        return self._kernels().step(params, snapshot, ring, slot, plan, len(bounds) - 1)

    def _project(self, ring, vec, bounds):
        plan = _plan((ring.shape[1],), tuple(bounds), ring.device)
        return self._kernels().project(ring, vec, plan, len(bounds) - 1)

    def _combine(self, ring, coeffs):
        return self._kernels().combine(ring, coeffs)

    def _gram(self, x):
        return self._kernels().gram(x)

    def _sketch(self, views, segs, groups, out, scratch):
        if self._device_type == "cpu":
            _C.cpu.sketch(views, segs, groups, out, scratch)
        else:
            work = _sketch_work(segs.cpu().numpy().tobytes(), groups.cpu().numpy().tobytes(),
                                tuple(v.numel() for v in views), out.numel(), out.device)
            _C.cuda.sketch(views, work, out)


def make_backend(name: str) -> NativeBackend:
    if name not in ("cpp", "cuda"):
        raise ValueError(f"native backends are 'cpp' and 'cuda', not {name!r}")
    return NativeBackend(name)
