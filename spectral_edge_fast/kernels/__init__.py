"""Backend registry and dispatch for the engine's inner-product kernels.

Every backend implements the same six ops on the same flat layout (below);
``reference`` defines them in float64 and every other backend is tested
against it. The ops are ``torch.library`` custom ops (:mod:`.ops`: schema,
argument checks and fake implementation written once), so that
``torch.compile`` traces a backend call as one opaque node.

Flat layout
-----------
* ``P`` numbers per update, in a fixed order, split into ``G`` contiguous
  groups by ``bounds = (0, o_1, ..., o_G = P)`` (a tuple of Python ints, so
  no backend ever needs a host-device copy to read it).
* ``ring``: ``[W, P]`` tensor, float32 or bfloat16, one update per row.
* ``snapshot``: ``[P]`` float32 (float64 when the parameters are float64):
  the parameters at the previous update, kept at parameter precision because
  ``theta - snapshot`` cancels (docs/numerics.md#the-snapshot-and-the-ring).
* ``params``: a sequence of contiguous 1-D tensors (views of the model's
  parameters, any floating dtype) whose lengths add up to ``P``.

Ops (all results float64 on the ring's device)
-----------------------------------------------
* ``gather(params, snapshot, out)``: ``out = cat(params) - snapshot`` cast to
  ``out.dtype``; then ``snapshot = cat(params)``.
* ``slide(ring, row, slot, bounds) -> [G, W+1]``: let ``a`` be ``row`` rounded
  to ``ring.dtype``. ``out[g, i] = <a, ring[i]>`` over group ``g`` with
  ``ring`` as it was *before* the call (so ``out[g, slot]`` is ``a . b`` with
  the leaving row ``b``), ``out[g, W] = <a, a>``; then ``ring[slot] = a``.
* ``step(params, snapshot, ring, slot, bounds) -> [G, W+1]``: ``gather`` into
  the slot and ``slide``, fused into one pass over memory where the backend
  can; the same result as ``gather`` into a float32 row then ``slide``.
* ``project(ring, vec, bounds) -> [G, W]``: ``out[g, i] = <vec, ring[i]>``.
* ``combine(ring, coeffs) -> [P] float32``: ``ring^T coeffs``.
* ``gram(x) -> [W, W]``: ``x x^T`` for ``x`` of shape ``[W, P]``.

Sketch mode adds ``sketch(views, segs, groups, out, scratch)``: ``out = S
cat(views)`` in float64 (:mod:`.sketch`); backends without a kernel of their
own run its torch implementation.

Accumulation: products in float32 over chunks of at most a few 10^4
elements, chunk partials summed in float64, in a fixed order (no atomics), so
the same inputs give the same bits on every run.
"""
from __future__ import annotations

import importlib
from typing import Dict, Sequence, Tuple

import torch

from . import ops

Bounds = Tuple[int, ...]

# Preference order of "auto": the first available backend for the device wins.
_ORDER = {
    "cpu": ("cpp", "torch"),
    "cuda": ("cuda", "triton", "torch"),
}
_MODULES = {
    "reference": "spectral_edge_fast.kernels.reference",
    "torch": "spectral_edge_fast.kernels.torch_ops",
    "cpp": "spectral_edge_fast.kernels.native",
    "cuda": "spectral_edge_fast.kernels.native",
    "triton": "spectral_edge_fast.kernels.triton_ops",
}
_cache: Dict[str, object] = {}


class Backend:
    """One implementation of the engine's ops.

    The public methods call the custom ops of :mod:`.ops`, which check the
    arguments once for every backend and then run the subclass's ``_gather``,
    ``_slide``, ``_project``, ``_combine``, ``_gram`` and ``_step`` (by
    default ``_gather`` into a float32 scratch row then ``_slide``) on
    arguments known to be valid. ``key`` names the instance in an op call."""

    name = "base"

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.key = ops.register(self)
        return self

    def available(self, device: torch.device) -> Tuple[bool, str]:
        return True, ""

    # -- the ops ---------------------------------------------------------------------------
    def gather(self, params: Sequence[torch.Tensor], snapshot: torch.Tensor, out: torch.Tensor) -> None:
        torch.ops.spectral_edge_fast.gather(self.key, list(params), snapshot, out)

    def slide(self, ring: torch.Tensor, row: torch.Tensor, slot: int, bounds: Bounds) -> torch.Tensor:
        return torch.ops.spectral_edge_fast.slide(self.key, ring, row, slot, list(bounds))

    def step(self, params, snapshot, ring, slot, bounds) -> torch.Tensor:
        return torch.ops.spectral_edge_fast.step(self.key, list(params), snapshot, ring, slot, list(bounds))

    def step_checked_once(self, params, snapshot, ring, slot, bounds) -> torch.Tensor:
        """``step`` without the op, for an eager caller that owns ``snapshot``,
        ``ring`` and ``bounds`` and ran :func:`.ops.check_step` on them and on
        this ``params`` list (the window: once per list of views). The op's
        dispatch and checks cost more host time than a small model's kernels."""
        with torch.no_grad():
            return self._step(params, snapshot, ring, slot, bounds)

    def project(self, ring: torch.Tensor, vec: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        return torch.ops.spectral_edge_fast.project(self.key, ring, vec, list(bounds))

    def combine(self, ring: torch.Tensor, coeffs) -> torch.Tensor:
        return torch.ops.spectral_edge_fast.combine(self.key, ring, torch.as_tensor(coeffs, device=ring.device))

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.spectral_edge_fast.gram(self.key, x)

    def sketch(self, views: Sequence[torch.Tensor], segs: torch.Tensor, groups: torch.Tensor, out: torch.Tensor,
               scratch: torch.Tensor) -> None:
        """``out = S cat(views)`` in float64, the signed bucket sketch of the
        tables ``segs`` and ``groups`` (:mod:`.sketch`); ``scratch`` holds the
        C++ kernel's part buckets. Called directly by the window (never traced)."""
        with torch.no_grad():
            self._sketch(list(views), segs, groups, out, scratch)

    # -- implementations, called by the ops on checked arguments ----------------------------
    def _gather(self, params, snapshot, out) -> None:
        raise NotImplementedError

    def _slide(self, ring, row, slot, bounds) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, params, snapshot, ring, slot, bounds) -> torch.Tensor:
        row = torch.empty(ring.shape[1], dtype=torch.float32, device=ring.device)
        self._gather(params, snapshot, row)
        return self._slide(ring, row, slot, bounds)

    def _project(self, ring, vec, bounds) -> torch.Tensor:
        raise NotImplementedError

    def _combine(self, ring, coeffs) -> torch.Tensor:
        raise NotImplementedError

    def _gram(self, x) -> torch.Tensor:
        raise NotImplementedError

    def _sketch(self, views, segs, groups, out, scratch) -> None:
        from .sketch import sketch_torch

        sketch_torch(views, segs, groups, out)


def upload(table: torch.Tensor, device) -> torch.Tensor:
    """A host table (a plan, a work table) on ``device`` without making the
    host wait: on a GPU through pinned memory, the copy queued on the stream
    (a copy from pageable memory would synchronise)."""
    device = torch.device(device)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def _load(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_MODULES)} or 'auto'")
    if name not in _cache:
        try:
            module = importlib.import_module(_MODULES[name])
            _cache[name] = module.make_backend(name)
        except Exception as exc:  # an optional dependency or the extension is missing
            _cache[name] = exc
    return _cache[name]


def _device_type(device) -> str:
    return torch.device(device).type if device is not None else "cpu"


def backend_status(name: str, device="cpu") -> Tuple[bool, str]:
    backend = _load(name)
    if isinstance(backend, Exception):
        return False, f"{type(backend).__name__}: {backend}"
    return backend.available(torch.device(device))


def backends(device=None) -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend, on ``device``
    (default: the CPU, or the current CUDA device for ``cuda`` and ``triton``)."""
    out = {}
    for name in _MODULES:
        dev = device
        if dev is None:
            dev = "cuda" if name in ("cuda", "triton") else "cpu"
        out[name] = backend_status(name, dev)
    return out


def get_backend(name: str = "auto", device="cpu") -> Backend:
    """The backend called ``name`` for ``device``; "auto" picks the fastest
    available one. Raises a RuntimeError naming the reason when unavailable."""
    dev_type = _device_type(device)
    if name == "auto":
        for candidate in _ORDER.get(dev_type, ("torch",)):
            ok, _ = backend_status(candidate, device)
            if ok:
                return _load(candidate)
        return _load("torch")
    ok, reason = backend_status(name, device)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available on {dev_type}: {reason}")
    return _load(name)
