"""ParamLayout: which tensors, in what order, in which group, and which slice
of each this process holds.

The flat space concatenates the (local parts of the) parameters group by
group, so every group is one contiguous range ``bounds[g]:bounds[g+1]`` and a
per-group inner product is a sum over one range. Inner products add over
disjoint blocks, which is what makes per-group Grams, and sharding, exact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch

GroupSpec = Union[str, None, Callable[[str], str]]
_INDEX = re.compile(r"^\d+$")


def auto_group(name: str) -> str:
    """One group per repeated block, the rest by parent module.

    ``layers.3.attn.q.weight`` -> ``layers.3``; ``transformer.h.11.mlp.w`` ->
    ``transformer.h.11``; ``embed.weight`` -> ``embed``; ``head.bias`` ->
    ``head``; a top-level ``scale`` -> ``scale``."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _INDEX.match(part) and i > 0:
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def _group_fn(groups: GroupSpec) -> Callable[[str], str]:
    if groups is None:
        return lambda name: "all"
    if callable(groups):
        return groups
    if groups == "auto":
        return auto_group
    if groups == "tensor":
        return lambda name: name
    raise ValueError(f"groups must be 'auto', 'tensor', None or a callable name -> group, got {groups!r}")


def named_tensors(params) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a module (trainable parameters), an iterable of
    tensors, or an iterable of (name, tensor); tied tensors counted once."""
    if isinstance(params, torch.nn.Module):
        items = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    else:
        items = []
        for i, item in enumerate(params):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                items.append(item)
            elif isinstance(item, torch.Tensor):
                items.append((f"param.{i}", item))
            else:
                raise TypeError(
                    f"params must be a module, tensors, or (name, tensor) pairs; item {i} is {type(item).__name__}"
                )
    seen, out = set(), []
    for name, p in items:
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    if not out:
        raise ValueError("no parameters to monitor (is every parameter frozen?)")
    return out


def _local(p: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The tensor this process holds, and whether it is a shard of a larger one."""
    to_local = getattr(p, "to_local", None)
    if to_local is not None and hasattr(p, "placements"):  # DTensor
        sharded = any(pl.is_shard() for pl in p.placements)
        return to_local(), sharded
    return p, False


@dataclass(frozen=True)
class Piece:
    """``length`` numbers of parameter ``index``'s local flat view from ``start``."""

    index: int
    start: int
    length: int


class ParamLayout:
    """The flat space of one process.

    With ``rank``/``world`` > 1, tensors that every rank holds in full
    (replicated, as under DDP) are split into ``world`` contiguous parts of
    their concatenation and each rank keeps one, so that every number is
    counted exactly once by the SUM all-reduce; shards (DTensor with a Shard
    placement) are kept whole on the rank that holds them."""

    def __init__(self, params, groups: GroupSpec = "auto", rank: int = 0, world: int = 1):
        named = named_tensors(params)
        group_of = _group_fn(groups)
        self.names: List[str] = [n for n, _ in named]
        self.params: List[torch.Tensor] = [p for _, p in named]
        self.locals: List[torch.Tensor] = []
        sharded: List[bool] = []
        device = None
        for name, p in named:
            if not torch.is_floating_point(p):
                raise TypeError(f"parameter {name!r} has dtype {p.dtype}; only floating-point tensors can be monitored")
            local, is_shard = _local(p)
            if device is None:
                device = local.device
            elif local.device != device:
                raise ValueError(
                    f"parameter {name!r} is on {local.device} but earlier ones are on {device}; "
                    "monitor the parameters of one device per GramWindow"
                )
            if not local.is_contiguous():
                raise ValueError(f"parameter {name!r} is not contiguous; call .contiguous() on it before monitoring")
            self.locals.append(local)
            sharded.append(is_shard)
        self.device: torch.device = device
        self.shapes = [tuple(t.shape) for t in self.locals]
        self.dtypes = [t.dtype for t in self.locals]
        self.full_shapes = [tuple(p.shape) for p in self.params]

        # Group order: first appearance; tensors stably sorted by group.
        group_names: List[str] = []
        tensor_group = []
        for name in self.names:
            g = str(group_of(name))
            if g not in group_names:
                group_names.append(g)
            tensor_group.append(group_names.index(g))
        self.groups = group_names
        order = sorted(range(len(self.names)), key=lambda i: tensor_group[i])

        # Replicated tensors: this rank's share of their concatenation.
        rep_total = sum(self.locals[i].numel() for i in order if not sharded[i])
        lo, hi = rep_total * rank // world, rep_total * (rank + 1) // world
        pieces: List[Piece] = []
        bounds = [0]
        cursor = rep = 0
        for g in range(len(group_names)):
            for i in (i for i in order if tensor_group[i] == g):
                n = self.locals[i].numel()
                if sharded[i]:
                    start, length = 0, n
                else:
                    start = max(lo - rep, 0)
                    length = max(min(hi - rep, n) - start, 0)
                    rep += n
                if length > 0:
                    pieces.append(Piece(i, start, length))
                    cursor += length
            bounds.append(cursor)
        self.pieces: Tuple[Piece, ...] = tuple(pieces)
        self.bounds: Tuple[int, ...] = tuple(bounds)
        self.numel = cursor  # local P
        self.total_numel = sum(p.numel() for p in self.params)
        self.snapshot_dtype = torch.float64 if any(d == torch.float64 for d in self.dtypes) else torch.float32
        self._views: Optional[List[torch.Tensor]] = None
        self._ptrs: Tuple[int, ...] = ()

    def views(self) -> List[torch.Tensor]:
        """1-D views of the local pieces, in flat order; rebuilt when a
        parameter's storage moved (``model.to()``, a replaced ``.data``).
        Raises if a parameter's shape or device changed since construction."""
        locals_ = [_local(p)[0] for p in self.params]
        ptrs = tuple(t.data_ptr() for t in locals_)
        if self._views is None or ptrs != self._ptrs:
            for name, t, shape in zip(self.names, locals_, self.shapes):
                if tuple(t.shape) != shape:
                    raise ValueError(
                        f"parameter {name!r} changed shape from {shape} to {tuple(t.shape)}; "
                        "create a new window (or reset()) after changing the model"
                    )
                if t.device != self.device:
                    raise ValueError(f"parameter {name!r} moved from {self.device} to {t.device}; create a new window")
            self._views = [locals_[pc.index].detach().view(-1)[pc.start : pc.start + pc.length] for pc in self.pieces]
            self._ptrs = ptrs
            self.locals = locals_
        return self._views

    def flatten(self, tensors: Sequence[torch.Tensor], dtype=torch.float32) -> torch.Tensor:
        """This process's flat vector of ``tensors`` shaped like the parameters
        (full tensors or local shards), e.g. gradients for ``project``."""
        tensors = list(tensors)
        if len(tensors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} tensors shaped like the parameters, got {len(tensors)}")
        parts = []
        for pc in self.pieces:
            t, _ = _local(tensors[pc.index])
            if t.numel() != self.locals[pc.index].numel():
                raise ValueError(
                    f"tensor for {self.names[pc.index]!r} has {t.numel()} elements, expected {self.locals[pc.index].numel()}"
                )
            parts.append(t.detach().reshape(-1)[pc.start : pc.start + pc.length].to(device=self.device, dtype=dtype))
        if not parts:
            return torch.zeros(0, dtype=dtype, device=self.device)
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Tensors shaped like the local parameters, zero outside this
        process's pieces (an all-reduce SUM of them across ranks completes
        the replicated ones)."""
        out = [torch.zeros(shape, dtype=flat.dtype, device=flat.device) for shape in self.shapes]
        cursor = 0
        for pc in self.pieces:
            out[pc.index].view(-1)[pc.start : pc.start + pc.length] = flat[cursor : cursor + pc.length]
            cursor += pc.length
        return out
