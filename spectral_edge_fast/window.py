"""GramWindow: the rolling-window Gram matrix of parameter updates, kept
incrementally on the parameters' device.

Per slide (docs/engine.md#the-slide): one fused pass over the parameters and the
ring computes the inner products of the entering update ``a`` with every row,
including the leaving row ``b`` (read before it is overwritten), per group;
the small device-side Gram is then updated in place. Nothing on this path
waits for the device: the host only keeps counters.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .analysis._common import slide_norm
from .distributed import (
    agree_on_coefficients,
    agree_on_setup,
    all_reduce_counted,
    all_reduce_or_raise,
    rank_and_world,
    sum_replicated,
)
from .config import SKETCH_M, WindowOptions, resolve
from .kernels import get_backend
from .kernels.ops import check_step
from .layout import ParamLayout
from .sketch import MAX_PARTS, SketchPlan, gram_std_error, group_numels, sketch_summary

ROW_ALIGN = 64


def free_bytes(device: torch.device) -> Optional[int]:
    """Bytes a new buffer can take on ``device``, None where unknown. On a
    GPU, what the driver has free plus what torch's allocator holds unused
    (it frees its cache and retries before failing an allocation)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type not in ("cpu", "mps"):  # host memory says nothing about this device's
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def _padded(P: int) -> int:
    """Ring row length: P rounded up to a multiple of ``ROW_ALIGN`` elements,
    so every row starts aligned and the kernels' ring loads vectorise (the
    padding is never read)."""
    return -(-max(P, 1) // ROW_ALIGN) * ROW_ALIGN


def window_bytes(
    P: int, groups: int, window: int, storage_dtype: torch.dtype, snapshot_dtype: torch.dtype
) -> Dict[str, int]:
    """Bytes of each buffer of a window over ``P`` local numbers: what
    :meth:`GramWindow.memory_bytes` reports and the constructor checks."""
    return {
        "ring": window * _padded(P) * storage_dtype.itemsize,
        "snapshot": P * snapshot_dtype.itemsize,
        "gram": groups * window * window * 8,
        "left": groups * (window + 1) * 8,
        "take": window * window * 4,  # the int32 indices that place a slide's row
        "scratch": P * 4,  # the float32 row a backend may gather the update into
    }


def sketch_bytes(size: int, scratch: int, groups: int, window: int, storage_dtype: torch.dtype) -> Dict[str, int]:
    """Bytes of each buffer of a sketch-mode window whose rows hold ``size``
    numbers (the groups' buckets): no part depends on P."""
    return {
        "ring": window * _padded(size) * storage_dtype.itemsize,
        "snapshot": size * 8,  # S theta at the last update, float64
        "gram": groups * window * window * 8,
        "left": groups * (window + 1) * 8,
        "take": window * window * 4,
        "scratch": size * (8 + 4) + scratch * 8,  # the new S theta, the float32 row, the kernel's part buckets
    }


def chronological_slots(count: int, window: int) -> List[int]:
    """Ring slots of the filled rows, oldest first (update k sits at k % W)."""
    start = count % window if count > window else 0
    return [(start + k) % window for k in range(min(count, window))]


class GramState:
    """A host copy of a window's small state: every Gram the analysis needs,
    as float64 NumPy arrays, oldest row first."""

    def __init__(self, gram: np.ndarray, left: np.ndarray, count: int, window: int, groups: List[str],
                 sketch: Optional[tuple] = None):
        self._gram = gram  # [G, W, W], slot order
        self.sketch = sketch  # sketch mode: (m, 1/m_g per group, 0 where a group is kept exactly)
        self._left = left  # [G, W+1]: the leaving row's old Gram row, then a.b
        self.count = count
        self.window = window
        self.groups = groups
        self.n = min(count, window)
        self.order = chronological_slots(count, window)

    def _index(self, group: Optional[str]):
        if group is None:
            return slice(None)
        try:
            return self.groups.index(group)
        except ValueError:
            raise KeyError(f"unknown group {group!r}; groups are {self.groups}") from None

    def _sum(self, arr: np.ndarray, group: Optional[str]) -> np.ndarray:
        sel = arr[self._index(group)]
        return sel.sum(axis=0) if group is None else sel

    def gram(self, group: Optional[str] = None) -> np.ndarray:
        g = self._sum(self._gram, group)
        return g[np.ix_(self.order, self.order)].copy()

    def group_grams(self) -> Dict[str, np.ndarray]:
        return {name: self.gram(name) for name in self.groups}

    def extended_gram(self, group: Optional[str] = None) -> np.ndarray:
        """(n+1)x(n+1) Gram of the leaving update and the window, oldest first:
        row 0 is the update that just left (zeros while the window fills)."""
        return self._extended(self._sum(self._gram, group), self._sum(self._left, group))

    def extended_grams(self) -> np.ndarray:
        """``[G, n+1, n+1]``: :meth:`extended_gram` of every group, in the
        order of ``groups`` (their sum is the global one)."""
        return self._extended(self._gram, self._left)

    def _extended(self, gram: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Extended Grams from slot-order ``gram`` [..., W, W] and ``left`` [..., W+1]."""
        n = self.n
        out = np.zeros(gram.shape[:-2] + (n + 1, n + 1))
        if n == 0:
            return out
        order = np.asarray(self.order)
        out[..., 1:, 1:] = gram[..., order[:, None], order[None, :]]
        b_row = left[..., order]
        b_row[..., -1] = left[..., -1]  # b . a
        out[..., 0, 0] = left[..., order[-1]]  # |b|^2: the old diagonal entry of the slot a took
        out[..., 0, 1:] = b_row
        out[..., 1:, 0] = b_row
        return out

    def delta_c_fro(self, group: Optional[str] = None) -> float:
        """Exact ``||a a^T - b b^T||_F`` of the last slide (docs/engine.md#the-size-of-a-slide)."""
        if self.n == 0:
            return 0.0
        e = self.extended_gram(group)
        return float(slide_norm(e[-1, -1], e[0, 0], e[0, -1]))

    def finite_rows(self) -> np.ndarray:
        """Mask of the window's rows (oldest first) whose update was finite."""
        return np.isfinite(np.diagonal(self.gram()))

    def sketch_error(self) -> Optional[dict]:
        """In sketch mode, the record's ``sketch`` entry (``m``, the groups
        kept exactly, ``rel_err``: the estimated standard error of the Gram's
        entries relative to the Gram, in Frobenius norm); None otherwise."""
        if self.sketch is None:
            return None
        m, inv_m = self.sketch
        return sketch_summary(self._group_grams(), inv_m, m)

    def gram_std_error(self) -> Optional[np.ndarray]:
        """In sketch mode, the estimated standard error of each entry of
        :meth:`gram` (n x n, oldest first; docs/numerics.md#sketch-mode);
        None otherwise."""
        return None if self.sketch is None else gram_std_error(self._group_grams(), self.sketch[1])

    def _group_grams(self) -> np.ndarray:
        order = self.order
        return self._gram[:, order][:, :, order]


class GramReadback:
    """Device-to-host copies started without waiting; ``wait()`` finishes them."""

    def __init__(self, gram: torch.Tensor, left: torch.Tensor, count: int, window: int, groups: List[str],
                 sketch: Optional[tuple] = None, drift: Optional[torch.Tensor] = None):
        self._meta = (count, window, groups, sketch)
        drift = torch.zeros((), dtype=torch.float64, device=gram.device) if drift is None else drift
        if gram.device.type == "cuda":
            self._gram = torch.empty(gram.shape, dtype=gram.dtype, pin_memory=True)
            self._left = torch.empty(left.shape, dtype=left.dtype, pin_memory=True)
            self._drift = torch.empty((), dtype=drift.dtype, pin_memory=True)
            self._gram.copy_(gram, non_blocking=True)
            self._left.copy_(left, non_blocking=True)
            self._drift.copy_(drift, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._gram, self._left, self._drift, self._event = gram.clone(), left.clone(), drift.clone(), None

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def wait(self) -> GramState:
        if self._event is not None:
            self._event.synchronize()
        if float(self._drift) != 0:
            raise RuntimeError("the ranks' windows slid at different step counts, so their partial Grams were summed "
                               "across different updates: every rank must call GramWindow.step (SpectralMonitor.step) "
                               "once after each optimizer step, from windows built or resumed at the same step")
        return GramState(self._gram.numpy(), self._left.numpy(), *self._meta)


class GramWindow:
    """The last ``window`` updates of the monitored parameters and their Gram
    matrices, kept incrementally.

    Args:
        params: an ``nn.Module`` (its parameters trainable when the window
            is built, found again by name when replaced), an iterable of
            tensors, or an iterable of ``(name, tensor)``. Each step checks
            that they are still the tensors the window was built on (see
            ``ParamLayout.views``).
        options: a :class:`~spectral_edge_fast.config.WindowOptions` (or
            any options object: its window fields are taken); its fields may
            also be given, or overridden, as keywords:
        window: ``W``, rows kept (an integer of any integer type, 2 or more).
        every: stride ``s``: an update is ``theta_t - theta_{t-s}``, formed
            every ``s`` calls of :meth:`step`.
        groups: "auto" (one group per repeated block, embeddings and head
            their own), "tensor", None (one group) or a callable name -> group;
            names come without wrapper prefixes (``_orig_mod.``, ``module.``).
        storage_dtype: the ring's dtype, ``torch.float32`` or
            ``torch.bfloat16`` (the snapshot always stays at parameter
            precision). With bf16, every Gram is that of the rows as stored.
        backend: "auto" or a name from :func:`spectral_edge_fast.backends`.
        sketch: None, or ``m``: sketch mode (docs/engine.md#sketch-mode),
            each group's update kept as its signed bucket sketch in ``R^m``
            (a group of at most ``m`` numbers exactly), so memory does not
            depend on P; every Gram is then an unbiased estimate, and
            :meth:`combine` raises.
        process_group: a torch.distributed group over which the parameters
            are sharded (DTensor) or replicated (DDP: each rank then stores
            1/world of the ring); partial inner products are SUM-reduced
            (in sketch mode, the partial sketches: each rank holds the ring).

    The snapshot is taken at construction: the first :meth:`step` after the
    first optimizer step forms the first update. ``options`` holds the
    resolved :class:`~spectral_edge_fast.config.WindowOptions`.
    """

    def __init__(self, params, options: Optional[WindowOptions] = None, *, process_group=None, **overrides):
        self.options = resolve(WindowOptions, options, overrides, "GramWindow")
        window, every, storage_dtype = self.options.window, self.options.every, self.options.storage_dtype
        self.window, self.every, self.storage_dtype = window, every, storage_dtype
        self.process_group = process_group
        rank, world = rank_and_world(process_group)
        self.layout = ParamLayout(params, self.options.groups, rank=rank, world=world)
        self.device = self.layout.device
        self.backend = get_backend(self.options.backend, self.device)
        # Once, before any buffer: ranks built differently all raise here instead of hanging in a slide.
        self.sketch = self.options.sketch
        agree_on_setup({"window": window, "every": every, "storage_dtype": str(storage_dtype), "sketch": self.sketch},
                       self.layout, process_group)
        self._plan = SketchPlan(self.layout, self.options.groups, self.sketch) if self.sketch else None
        self._check_memory()
        G = len(self.layout.groups)
        if self._plan is None:
            P = self.layout.numel
            self._snapshot = torch.empty(P, dtype=self.layout.snapshot_dtype, device=self.device)
            self._bounds = self.layout.bounds
        else:  # rows of sketches: the snapshot is S theta, float64 so that S theta_t - S theta_{t-s} cancels exactly
            P = self._plan.size
            self._snapshot = torch.zeros(P, dtype=torch.float64, device=self.device)
            self._sketched = torch.zeros(P, dtype=torch.float64, device=self.device)
            self._row = torch.zeros(P, dtype=torch.float32, device=self.device)
            self._scratch = torch.zeros(self._plan.scratch, dtype=torch.float64, device=self.device)
            self._bounds = self._plan.bounds
        self._ring = torch.zeros((window, _padded(P)), dtype=storage_dtype, device=self.device)[:, :P]
        self._gram = torch.zeros((G, window, window), dtype=torch.float64, device=self.device)
        self._left = torch.zeros((G, window + 1), dtype=torch.float64, device=self.device)
        # > 0 once ranks reduced slides made at different step counts (all_reduce_counted): read with the Gram
        self._drift = torch.zeros((), dtype=torch.float64, device=self.device)
        # What _apply needs, made once (each indexing op costs host time every
        # step): row `slot` of _take is 0..W-1 with W in place `slot`.
        self._take = torch.arange(window, dtype=torch.int32, device=self.device).repeat(window, 1)
        self._take.diagonal().fill_(window)
        self._folds = (
            [self._gram.select(1, s) for s in range(window)],
            [self._gram.select(2, s) for s in range(window)],
            list(self._take),
            self._left.narrow(1, 0, window),
            self._left.select(1, window),
        )
        self.reset()

    # -- sizes -------------------------------------------------------------
    @property
    def groups(self) -> List[str]:
        return list(self.layout.groups)

    @property
    def numel(self) -> int:
        """P: numbers per update over the whole model (all ranks)."""
        return self.layout.total_numel

    @property
    def n(self) -> int:
        return min(self.count, self.window)

    @property
    def dims(self) -> List[int]:
        """Each group's row length over all ranks, the dimension its Gram's
        rows live in: its number of parameters, or in sketch mode
        ``min(that, m)`` (what a null model of the spectrum is taken at)."""
        if self._plan is not None:
            return list(self._plan.group_m)
        return group_numels(self.layout, self.options.groups)

    def memory_bytes(self) -> int:
        """Bytes this window needs on its device: the ring (rows padded), the
        snapshot, the ``[G, W, W]`` Gram, the leaving row, the ``[W, W]``
        int32 slide indices and the step's float32 scratch row
        (:func:`window_bytes`, which the constructor checks against free
        memory); in sketch mode, the buffers of :func:`sketch_bytes`, none of
        them P-sized."""
        return sum(self._bytes().values())

    def _bytes(self) -> Dict[str, int]:
        if self._plan is not None:
            return sketch_bytes(self._plan.size, self._plan.scratch, len(self.layout.groups), self.window,
                                self.storage_dtype)
        return window_bytes(self.layout.numel, len(self.layout.groups), self.window, self.storage_dtype,
                            self.layout.snapshot_dtype)

    def _check_memory(self) -> None:
        parts = self._bytes()
        need, free = sum(parts.values()), free_bytes(self.device)
        if free is None or need <= free:
            return
        P, W, G = self.layout.numel, self.window, len(self.layout.groups)
        ring = "bf16" if self.storage_dtype == torch.bfloat16 else "fp32"
        if self._plan is not None:
            raise MemoryError(
                f"sketch mode at W={W} with sketch={self.sketch} over {G} groups needs {_gb(need)} "
                f"({_gb(parts['ring'])} of ring in {ring}) but only {_gb(free)} is free on {self.device}; "
                "use a smaller sketch, a smaller window or fewer groups"
            )
        gram, rest = parts["gram"] + parts["left"] + parts["take"], parts["snapshot"] + parts["scratch"]
        if gram >= max(parts["ring"], rest):
            advice = f"the {G} Gram(s) of W x W float64 dominate: use a smaller window"
            advice += ", or fewer groups (groups=None)" if G > 1 else ""
        elif parts["ring"] >= rest:
            advice = "the ring dominates: use " + ("storage_dtype=torch.bfloat16, " if ring == "fp32" else "")
            advice += "a smaller window, fewer parameters, or shard the ring over a process_group"
        else:
            advice = "the snapshot dominates: monitor fewer parameters, or shard them over a process_group"
        if gram < max(parts["ring"], rest):  # P-sized parts dominate: sketch mode holds none
            sizes = group_numels(self.layout, self.options.groups)
            sketched = sketch_bytes(sum(min(n, SKETCH_M) for n in sizes), MAX_PARTS * SKETCH_M, G, W, self.storage_dtype)
            advice += (f"; or sketch mode, sketch={SKETCH_M}, which needs {_gb(sum(sketched.values()))} at any P "
                       "(its Grams are estimates: docs/engine.md#sketch-mode)")
        raise MemoryError(
            f"P={P:.3g} at W={W} needs {_gb(need)} ({_gb(parts['ring'])} of ring in {ring}, "
            f"{_gb(gram)} of Gram for {G} groups with its indices, {_gb(rest)} "
            f"of snapshot and scratch row) but only {_gb(free)} is free on {self.device}; {advice}"
        )

    # -- the per-step path --------------------------------------------------
    def reset(self) -> None:
        """Forget every update and take a new snapshot of the parameters."""
        self.count = 0
        self._calls = 0
        self._checked_views = None
        self._ring.zero_()
        self._gram.zero_()
        self._left.zero_()
        self._drift.zero_()
        views = self.layout.views()
        if self._plan is not None:
            self._snapshot.copy_(self._sketch(views, self._plan.segs, 0))
        elif views:
            self._snapshot.copy_(torch.cat(views))

    def _sketch(self, views: Sequence[torch.Tensor], segs: torch.Tensor, counter: int) -> torch.Tensor:
        """``S theta`` of the whole model: this process's partial sketch,
        SUM-reduced over the group (``counter``: see ``all_reduce_counted``)."""
        self.backend.sketch(views, segs, self._plan.groups, self._sketched, self._scratch)
        return all_reduce_counted(self._sketched, counter, self._drift, self.process_group)

    # Never traced: its host counters and the layout's storage check would
    # make a compiled caller recompile every step; it runs eagerly between
    # the compiled parts.
    @torch.compiler.disable
    def step(self, at: Optional[int] = None) -> bool:
        """Call after each optimizer step. Every ``every`` calls, forms the
        update ``theta - snapshot`` and slides the window; returns True then.
        ``at``: the training step, which must be the same on every rank of the
        process group at each slide (default: the calls counted by the
        window); ranks that slide at different steps make the next readback
        raise instead of giving a Gram summed across different updates."""
        self._calls += 1
        if self._calls % self.every:
            return False
        at = self._calls if at is None else at
        slot = self.count % self.window
        views = self.layout.views()
        if self._plan is not None:
            new = self._sketch(views, self._plan.segs, at)
            torch.sub(new, self._snapshot, out=self._row)
            self._snapshot.copy_(new)
            self._apply(self.backend.slide(self._ring, self._row, slot, self._bounds), slot)
            return True
        if views is not self._checked_views:  # a new list (construction, followed parameters): check it once
            check_step(views, self._snapshot, self._ring, slot, self.layout.bounds)
            self._checked_views = views
        partials = self.backend.step_checked_once(views, self._snapshot, self._ring, slot, self.layout.bounds)
        self._apply(partials, slot, at)
        return True

    def push(self, update) -> None:
        """Slide in an update given directly: tensors shaped like the
        parameters, or one flat tensor of this process's ``P`` numbers."""
        if isinstance(update, torch.Tensor) and update.dim() == 1 and len(self.layout.params) != 1:
            if update.numel() != self.layout.numel:
                raise ValueError(f"flat update has {update.numel()} numbers, expected {self.layout.numel}")
            row = update.to(device=self.device, dtype=torch.float32)
        else:
            row = self.layout.flatten([update] if isinstance(update, torch.Tensor) else update)
        slot = self.count % self.window
        if self._plan is not None:
            row = self._sketch([row], self._plan.flat_segs, self.count).float()
            self._apply(self.backend.slide(self._ring, row, slot, self._bounds), slot)
            return
        self._apply(self.backend.slide(self._ring, row, slot, self.layout.bounds), slot, self.count)

    def _apply(self, partials: torch.Tensor, slot: int, counter: Optional[int] = None) -> None:
        """Fold one slide's ``[G, W+1]`` inner products into the device Gram
        (``counter`` given: partial products of this rank's numbers,
        SUM-reduced, the ranks' counters compared)."""
        if counter is not None:
            partials = all_reduce_counted(partials, counter, self._drift, self.process_group)
        rows, cols, take, left_row, left_ab = self._folds
        left_row.copy_(rows[slot])
        left_ab.copy_(partials.select(1, slot))
        row = partials.index_select(1, take[slot])  # a.a, column W, on the diagonal
        rows[slot].copy_(row)
        cols[slot].copy_(row)
        self.count += 1

    # -- reading the Gram ---------------------------------------------------
    def readback(self) -> GramReadback:
        """Start copying the small state to the host; ``.wait()`` gives a
        :class:`GramState`. On a GPU the copies are non-blocking into pinned
        memory, so a monitor can start one and read it steps later."""
        sketch = None if self._plan is None else (self.sketch, self._plan.scaled())
        return GramReadback(self._gram, self._left, self.count, self.window, self.groups, sketch, self._drift)

    def state(self) -> GramState:
        return self.readback().wait()

    def gram(self) -> np.ndarray:
        """n x n float64 Gram of the window, oldest row first."""
        return self.state().gram()

    def group_grams(self) -> Dict[str, np.ndarray]:
        return self.state().group_grams()

    def extended_gram(self, group: Optional[str] = None) -> np.ndarray:
        return self.state().extended_gram(group)

    def delta_c_fro(self, group: Optional[str] = None) -> float:
        return self.state().delta_c_fro(group)

    # -- projections ---------------------------------------------------------
    def _order(self) -> List[int]:
        return chronological_slots(self.count, self.window)

    def project(self, tensors: Sequence[torch.Tensor], per_group: bool = False):
        """``p = X y`` for ``y`` given as tensors shaped like the parameters
        (a gradient, say): length-n float64 array, oldest first, or
        ``{group: array}`` with ``per_group``. In sketch mode, ``(S X)(S y)``:
        ``y`` is sketched like the updates."""
        if self._plan is not None:
            sy = all_reduce_or_raise(
                lambda: self._sketch_flat(self.layout.flatten(tensors, dtype=torch.float64)),
                (self._plan.size,), self.device, self.process_group, "project()",
            )
            partials = self.backend.project(self._ring, sy.float(), self._bounds)
        else:
            partials = all_reduce_or_raise(
                lambda: self.backend.project(self._ring, self.layout.flatten(tensors), self.layout.bounds),
                (len(self.layout.groups), self.window), self.device, self.process_group, "project()",
            )
        p = partials.cpu().numpy()[:, self._order()]
        if per_group:
            return {name: p[g].copy() for g, name in enumerate(self.layout.groups)}
        return p.sum(axis=0)

    def _sketch_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """This process's partial sketch of a flat vector of its numbers."""
        out = torch.zeros(self._plan.size, dtype=torch.float64, device=self.device)
        self.backend.sketch([flat], self._plan.flat_segs, self._plan.groups, out, self._scratch)
        return out

    def combine(self, coeffs) -> List[torch.Tensor]:
        """``X^T c`` for ``c`` (length n, oldest first), as float32 tensors
        shaped like the parameters (local shards for DTensor parameters).
        Exact mode only: a sketch-mode window does not keep the rows."""
        if self._plan is not None:
            raise ValueError(
                f"combine() needs the window's rows in full, but this window keeps their sketches (sketch={self.sketch}); "
                "build the GramWindow with sketch=None to combine its rows"
            )
        c = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        agree_on_coefficients(c, self.window, self.device, self.process_group)
        if c.shape[0] != self.n:
            raise ValueError(f"expected {self.n} coefficients (one per row of the window), got {c.shape[0]}")
        slot_coeffs = np.zeros(self.window)
        slot_coeffs[self._order()] = c
        flat = self.backend.combine(self._ring, torch.from_numpy(slot_coeffs).to(self.device))
        out = self.layout.unflatten(flat)
        sum_replicated(out, self.layout, self.process_group)
        return out

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "window": self.window,
            "every": self.every,
            "storage_dtype": str(self.storage_dtype),
            "sketch": self.sketch,
            "groups": self.groups,
            "bounds": list(self.layout.bounds),
            "names": list(self.layout.names),  # with the shapes, what a refused state is told by
            "shapes": [list(shape) for shape in self.layout.full_shapes],
            "rank": self.layout.rank,
            "world": self.layout.world,
            "pieces": self._pieces(),
            "count": self.count,
            "calls": self._calls,
            "ring": self._ring.clone(),
            "snapshot": self._snapshot.clone(),
            "gram": self._gram.clone(),
            "left": self._left.clone(),
        }

    def _pieces(self) -> List[List[int]]:
        return [[pc.index, pc.start, pc.length] for pc in self.layout.pieces]

    def _check_rank(self, state: dict) -> None:
        """A sharded window's state holds one rank's slice of the ring: it
        must come back to the rank that holds the same slice."""
        rank, world = self.layout.rank, self.layout.world
        if "pieces" not in state:  # saved before states recorded their rank
            if world > 1:
                raise ValueError(
                    f"this window state does not say which rank saved it, so rank {rank} of {world} cannot check "
                    "that it holds this rank's slice of the ring; save the window again with this version"
                )
            return
        if (state.get("rank"), state.get("world")) != (rank, world):
            raise ValueError(
                f"this window state holds rank {state.get('rank')}'s slice of the ring (world {state.get('world')}), "
                f"not rank {rank}'s (world {world}); each rank must load the state it saved"
            )

    def _other_parameters(self, state: dict) -> Optional[str]:
        """How the parameters of ``state`` differ from this window's, by name
        and shape (None for a state saved without them, or the same ones)."""
        if "names" not in state:
            return None
        theirs = dict(zip(state["names"], map(tuple, state["shapes"])))
        mine = dict(zip(self.layout.names, self.layout.full_shapes))

        def listed(names, shapes):
            shown = ", ".join(f"{n!r} {shapes[n]}" for n in names[:5])
            return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        gone = [n for n in theirs if n not in mine]
        new = [n for n in mine if n not in theirs]
        parts = [f"parameter {n!r} has shape {theirs[n]} in the state, {mine[n]} here"
                 for n in theirs if n in mine and theirs[n] != mine[n]]
        if gone:
            parts.append(f"parameter {listed(gone, theirs)} is in the state but not monitored here (frozen, or renamed?)")
        if new:
            parts.append(f"parameter {listed(new, mine)} is monitored here but not in the state")
        return "; ".join(parts) + ": build the window over the parameters it was saved with" if parts else None

    def load_state_dict(self, state: dict) -> None:
        """Restore a window saved by :meth:`state_dict`; it then continues
        bit-identically. Refuses a state from a different layout."""
        if "analyze_every" in state:
            raise ValueError("this is a SpectralMonitor state, not a GramWindow state: load it with monitor.load_state_dict(state)")
        self._check_rank(state)
        for key, mine in (
            ("window", self.window),
            ("every", self.every),
            ("storage_dtype", str(self.storage_dtype)),
            ("sketch", self.sketch),
            ("groups", self.groups),
            ("bounds", list(self.layout.bounds)),
        ):
            if state.get(key) != mine:
                other = self._other_parameters(state) if key in ("groups", "bounds") else None
                raise ValueError(f"state_dict does not match this window: "
                                 + (other or f"{key} is {state.get(key)!r}, expected {mine!r}"))
        if state.get("pieces", self._pieces()) != self._pieces():  # a state without pieces is one process's whole layout
            raise ValueError("state_dict does not match this window: it holds other slices of the parameters")
        self._ring.copy_(state["ring"])
        self._snapshot.copy_(state["snapshot"])
        self._gram.copy_(state["gram"])
        self._left.copy_(state["left"])
        self.count, self._calls = int(state["count"]), int(state["calls"])
