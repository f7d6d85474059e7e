"""ParamLayout: which tensors, in what order, in which group, and which slice
of each this process holds.

The flat space concatenates the (local parts of the) parameters group by
group, so every group is one contiguous range ``bounds[g]:bounds[g+1]`` and a
per-group inner product is a sum over one range. Inner products add over
disjoint blocks, which is what makes per-group Grams, and sharding, exact.
"""
from __future__ import annotations

import operator
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch

GroupSpec = Union[str, None, Callable[[str], str]]
_INDEX = re.compile(r"^\d+$")
_WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def auto_group(name: str) -> str:
    """One group per repeated block, the rest by parent module.

    A block is an indexed child (of a ``ModuleList`` or ``Sequential``) that
    holds named submodules, at any depth: ``layers.3.attn.q.weight`` ->
    ``layers.3``; ``transformer.h.11.mlp.w`` -> ``transformer.h.11``;
    ``0.attn.q.weight`` (a bare ``Sequential`` of blocks) -> ``0``;
    ``0.mlp.0.weight`` -> ``0``. Without one, the first index below the top
    level (``layers.3.weight`` -> ``layers.3``, ``1.0.weight`` -> ``1.0``),
    else the parent module: ``embed.weight`` -> ``embed``, ``head.bias`` ->
    ``head``, a top-level ``scale`` -> ``scale``."""
    path = name.split(".")[:-1]  # the owning module
    for i in range(len(path) - 1):
        if _INDEX.match(path[i]) and not _INDEX.match(path[i + 1]):
            return ".".join(path[: i + 1])
    for i in range(1, len(path)):
        if _INDEX.match(path[i]):
            return ".".join(path[: i + 1])
    return ".".join(path) or name


def strip_wrappers(name: str) -> str:
    """``name`` without the components that wrappers add: leading ``module.``
    (DDP) and ``_orig_mod.`` (``torch.compile``), and ``_orig_mod.``,
    ``_fsdp_wrapped_module.`` (FSDP1), ``_checkpoint_wrapped_module.``
    (activation checkpointing) at any depth; so groups and saved states are
    the same with and without them."""
    parts = name.split(".")
    while len(parts) > 1 and (parts[0] == "module" or parts[0] in _WRAPPERS):
        parts = parts[1:]
    return ".".join([p for p in parts[:-1] if p not in _WRAPPERS] + parts[-1:])


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


class FlatPart:
    """A parameter of which this process holds one contiguous range inside a
    flat tensor: an original parameter in its rank's shard of an FSDP1
    ``FlatParameter`` (torch 2.x), or a DeepSpeed ZeRO-3 parameter, whose
    partition is ``ds_tensor`` (DeepSpeed 0.19). It stands in the layout for
    that parameter: ``shape`` and ``numel()`` are the full parameter's;
    :meth:`local` is the ``length`` numbers of the flat tensor from
    ``offset`` (the flat tensor's padding left out), numbers ``start`` to
    ``start + length`` of the full parameter's flat order."""

    def __init__(self, name: str, owner: torch.Tensor, shape, offset: int, length: int, start: int,
                 sharded: bool, orig: Optional[torch.Tensor] = None):
        self.name, self.owner, self.orig = name, owner, orig
        self.shape = torch.Size(shape)
        self.offset, self.length, self.start, self.sharded = offset, length, start, sharded
        self.zero = hasattr(owner, "ds_tensor")
        self._flat_numel = self._flat().numel()
        self._cached: tuple = (None, None)  # (the flat tensor's data pointer, local()), rebuilt when it moves

    def _flat(self) -> torch.Tensor:
        return self.owner.ds_tensor if self.zero else self.owner

    def numel(self) -> int:
        return self.shape.numel()

    def local(self) -> torch.Tensor:
        """This process's numbers of the parameter: shaped like it when they
        are all of it, else 1-D. Raises when the flat tensor is not in its
        sharded state (FSDP's unsharded flat parameter, inside forward and
        backward or ``summon_full_params``)."""
        flat = self._flat()
        if flat.numel() != self._flat_numel:
            raise ValueError(
                f"parameter {self.name!r}: its FSDP flat parameter holds {flat.numel()} numbers instead of this "
                f"rank's shard of {self._flat_numel} (it is unsharded: inside forward/backward or "
                "summon_full_params); step the window after the optimizer step, outside them"
            )
        ptr = flat.data_ptr()  # the cached view holds the memory it reads, so the same pointer is the same memory
        if ptr != self._cached[0]:
            part = flat.detach()[self.offset : self.offset + self.length]
            self._cached = (ptr, part.view(self.shape) if self.length == self.numel() else part)
        return self._cached[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._flat().dtype

    @property
    def device(self) -> torch.device:
        return self._flat().device

    @property
    def _version(self) -> int:  # bumped by every in-place update of the flat tensor
        return self._flat()._version

    @property
    def grad(self) -> torch.Tensor:
        """The gradient of :meth:`local`'s numbers (zeros where there is none)."""
        if self.zero:
            raise ValueError(
                f"parameter {self.name!r} is a DeepSpeed ZeRO-3 partition, whose gradient DeepSpeed's optimizer "
                "keeps; pass the gradients explicitly (each parameter's local partition, without padding)"
            )
        local = self.local()
        # use_orig_params=True: the parameter's .grad, a view of its part of the flat gradient
        g, want = (self.orig.grad, self.length) if self.orig is not None else (self.owner.grad, self._flat_numel)
        if g is None:
            return torch.zeros_like(local)
        if g.numel() != want:
            raise ValueError(
                f"parameter {self.name!r}: its FSDP gradient holds {g.numel()} numbers, not the {want} of this rank's "
                "shard (it is unsharded, as under no_sync()); read gradients after a backward that reduces them"
            )
        if self.orig is None:
            g = g[self.offset : self.offset + self.length]
        return g.detach().view(local.shape)


def _fsdp1_handles(module: Optional[torch.nn.Module]) -> dict:
    """``id`` of each FSDP1 ``FlatParameter`` in ``module`` -> (its handle,
    None), and of each original parameter it holds under
    ``use_orig_params=True`` -> (handle, its index in the flat parameter)."""
    out = {}
    for mod in module.modules() if module is not None else ():
        handle = getattr(mod, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if flat is None or not hasattr(flat, "_shard_param_infos"):
            continue
        out[id(flat)] = (handle, None)
        for i, p in enumerate(getattr(flat, "_params", None) or ()):
            out[id(p)] = (handle, i)
    return out


def _fsdp1_part(name: str, handle, i: int, orig: Optional[torch.Tensor]) -> FlatPart:
    flat = handle.flat_param
    info = flat._shard_param_infos[i]
    offset, length, start = (
        (info.offset_in_shard, info.numel_in_shard, info.intra_param_start_idx) if info.in_shard else (0, 0, 0)
    )
    # NO_SHARD: every rank holds every parameter whole, as under DDP
    return FlatPart(name, flat, flat._shapes[i], offset, length, start, handle.uses_sharded_strategy, orig)


def _zero_part(name: str, p: torch.Tensor) -> FlatPart:
    """DeepSpeed ZeRO-3 (``Init._partition_param``): the parameter's flat
    order, padded to a multiple of the partition group's size ``world``, in
    ``world`` equal contiguous parts; rank ``r`` of ``ds_process_group``
    holds part ``r`` in ``ds_tensor``, the last ranks' ending in padding."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group=p.ds_process_group), dist.get_world_size(group=p.ds_process_group)
    size = -(-p.ds_numel // world)
    if p.ds_tensor.numel() != size:
        raise ValueError(
            f"parameter {name!r}: its DeepSpeed partition ds_tensor has {p.ds_tensor.numel()} numbers, not "
            f"ceil(ds_numel / world) = ceil({p.ds_numel} / {world}) = {size} (offloaded to NVMe, or the layout of "
            "another DeepSpeed version); monitor it without parameter offloading, or under ZeRO stage 1 or 2"
        )
    start = min(rank * size, p.ds_numel)
    return FlatPart(name, p, p.ds_shape, 0, min(size, p.ds_numel - start), start, True)


def _unflatten_sharded(named: List[Tuple[str, torch.Tensor]], module: Optional[torch.nn.Module]):
    """``named`` with each FSDP1 flat parameter replaced by a :class:`FlatPart`
    per original parameter (named by its path in the model), each FSDP1
    original parameter (``use_orig_params=True``) and each ZeRO-3 parameter
    by one; raises for FSDP1 tensors given without their module."""
    handles = _fsdp1_handles(module)
    out = []
    for name, p in named:
        if hasattr(p, "ds_tensor") and hasattr(p, "ds_numel"):
            out.append((name, _zero_part(name, p)))
        elif getattr(p, "_is_flat_param", False) or getattr(p, "_fsdp_flattened", False):
            if id(p) not in handles:
                raise ValueError(
                    f"parameter {name!r} is part of an FSDP (FullyShardedDataParallel) flat parameter; pass the "
                    "FSDP-wrapped module itself, so that each original parameter's shard can be read"
                )
            handle, index = handles[id(p)]
            if index is not None:
                out.append((name, _fsdp1_part(name, handle, index, p)))
                continue
            prefix = name.rpartition(".")[0]  # the module holding the flat parameter
            for i, fqn in enumerate(p._fqns):
                full = f"{prefix}.{fqn}" if prefix else fqn
                out.append((full, _fsdp1_part(full, handle, i, None)))
        else:
            out.append((name, p))
    return out


def _check_disjoint(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raises when two monitored tensors share memory (a parameter and a view
    of it given apart): their numbers would be counted twice."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
                   for i, t in enumerate(tensors) if t.numel() > 0)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(
                f"parameters {names[i]!r} and {names[j]!r} share memory (one is a view of the other, or both of one "
                "buffer's overlapping parts): their numbers would be counted twice; monitor one of them"
            )


def _local(p: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The tensor this process holds, and whether it is a shard of a larger one."""
    if isinstance(p, FlatPart):
        return p.local(), p.sharded
    to_local = getattr(p, "to_local", None)
    if to_local is not None and hasattr(p, "placements"):  # DTensor
        sharded = any(pl.is_shard() for pl in p.placements)
        return to_local(), sharded
    return p, False


def _walk(root: torch.nn.Module, names: Sequence[str]):
    """The parameters of ``root`` at ``names`` (as ``named_parameters`` gives
    them), and the slots that lead there, every ``_modules`` entry on the way
    and each ``_parameters`` entry: ``(dicts, keys, objects held)``. Raises
    ``KeyError(name)`` for a name no longer present."""
    holders, held, params, seen = [], [], [], set()
    for name in names:
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            child = mod._modules.get(part)
            if child is None:
                raise KeyError(name)
            if (id(mod), part) not in seen:
                seen.add((id(mod), part))
                holders.append((mod._modules, part))
                held.append(child)
            mod = child
        p = mod._parameters.get(leaf)
        if p is None:
            raise KeyError(name)
        holders.append((mod._parameters, leaf))
        held.append(p)
        params.append(p)
    dicts, keys = (list(c) for c in zip(*holders))
    return params, (dicts, keys, held)


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
    placement, FSDP1 flat parameters, DeepSpeed ZeRO-3 partitions: see
    :class:`FlatPart`) are kept whole on the rank that holds them."""

    def __init__(self, params, groups: GroupSpec = "auto", rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        named = _unflatten_sharded(named_tensors(params), params if isinstance(params, torch.nn.Module) else None)
        group_of = _group_fn(groups)
        raw = [n for n, _ in named]
        clean = [strip_wrappers(n) for n in raw]
        # Wrapper-free names, unless that would give two tensors one name.
        self.names: List[str] = clean if len(set(clean)) == len(clean) else raw
        self.params: List[torch.Tensor] = [p for _, p in named]
        self.locals: List[torch.Tensor] = []
        sharded: List[bool] = []
        device = None
        for name, p in zip(self.names, self.params):
            if not p.dtype.is_floating_point:
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
            if is_shard and world == 1 and local.numel() < p.numel():  # no all-reduce would add the other ranks' parts
                raise ValueError(
                    f"parameter {name!r} is sharded: this process holds {local.numel()} of its {p.numel()} numbers; "
                    "pass process_group= (the group it is sharded over) so that every rank's part is counted"
                )
            self.locals.append(local)
            sharded.append(is_shard)
        self.device: torch.device = device
        _check_disjoint(self.names, self.locals)
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

        # What views() checks each step: the module's attribute slots that
        # lead to each parameter (a module's parameters are found again by
        # name when one is replaced), and each local tensor's data pointer,
        # number of elements and contiguity. Host metadata only: nothing
        # reads the device.
        self._module = params if isinstance(params, torch.nn.Module) else None
        self._raw_names = raw
        self._slots: Optional[Tuple[list, list, list]] = None
        if self._module is not None:
            try:
                found, slots = _walk(self._module, raw)
            except KeyError:  # a module that names parameters its own way: storage checks only
                found, slots = [], None
            if len(found) == len(self.params) and all(map(operator.is_, found, self.params)):
                self._slots = slots
        self._sig: Optional[tuple] = None  # data pointers, numbers of elements
        self._follow(self.params, self.locals)

    def views(self) -> List[torch.Tensor]:
        """1-D views of the local pieces, in flat order.

        Each call checks, from host metadata alone (no device read, no sync),
        that the monitored tensors are still those the layout describes, and
        follows them when that is sound: a module's parameter replaced by
        another (``load_state_dict(assign=True)``, a replaced submodule) is
        found again by name, and a tensor moved to new memory of the same
        shape, dtype and device (a replaced ``.data``) is read there; either
        warns once, naming the parameters. A changed shape, dtype or device
        (``meta`` included), a parameter no longer in the module, or one no
        longer contiguous (a transpose, ``channels_last``) raises, naming the
        parameter. (A reshape in place, same memory and number of elements,
        still contiguous, reads the same numbers in the same order and goes
        unremarked.) A tensor given directly that was replaced by another
        cannot be seen: pass the module to have its parameters followed."""
        # map() over unbound methods, list equality: the loops run in C. A
        # tensor with the same data pointer and number of elements that is
        # still contiguous is read as before: the same numbers in the same
        # order (a transpose in place is not contiguous).
        params, found = self.params, None
        if self._slots is not None:
            dicts, keys, held = self._slots
            if not all(map(operator.is_, map(dict.get, dicts, keys), held)):
                params, found = self._find_again()
        locals_ = params if self._plain else [_local(p)[0] for p in params]
        if (
            found is not None
            or list(map(torch.Tensor.data_ptr, locals_)) != self._sig[0]
            or list(map(torch.Tensor.numel, locals_)) != self._sig[1]
            or not all(map(torch.Tensor.is_contiguous, locals_))
        ):
            self._follow(params, locals_, found)
        return self._views

    def _find_again(self):
        """The module's parameters by name, after an attribute on the way to
        one of them was reassigned: the same name, or the same name without
        wrappers (a submodule wrapped since); with their slots and names."""
        present = {}
        for raw, _ in self._module.named_parameters():
            present.setdefault(raw, raw)
            present.setdefault(strip_wrappers(raw), raw)
        names = []
        for name, raw in zip(self.names, self._raw_names):
            now = present.get(raw, present.get(strip_wrappers(raw)))
            if now is None:
                raise ValueError(
                    f"parameter {name!r} is no longer in the module (its submodule was removed, or it was set to "
                    "None); create a new GramWindow for the changed model"
                )
            names.append(now)
        params, slots = _walk(self._module, names)
        return params, (slots, names)

    def _follow(self, params: List[torch.Tensor], locals_: List[torch.Tensor], found=None) -> None:
        """Check every tensor that differs from the last step's, then adopt
        ``params`` (and ``found``: their slots and names in the module) and
        rebuild the views; raises before changing anything."""
        sig = (list(map(torch.Tensor.data_ptr, locals_)), list(map(torch.Tensor.numel, locals_)))
        changed, old = [], self._sig
        for i, (name, p, t) in enumerate(zip(self.names, params, locals_)):
            same = old is not None and p is self.params[i] and sig[0][i] == old[0][i] and sig[1][i] == old[1][i]
            if same and t.is_contiguous():
                continue
            if t.device != self.device:
                where = "the meta device, which holds no values" if t.device.type == "meta" else str(t.device)
                raise ValueError(
                    f"parameter {name!r} moved from {self.device} to {where}; "
                    "create a new GramWindow where the parameters are trained"
                )
            if tuple(t.shape) != self.shapes[i]:
                raise ValueError(
                    f"parameter {name!r} changed shape from {self.shapes[i]} to {tuple(t.shape)}; "
                    "create a new GramWindow for the changed model"
                )
            if t.dtype != self.dtypes[i]:
                raise ValueError(
                    f"parameter {name!r} changed dtype from {self.dtypes[i]} to {t.dtype}; "
                    "create a new GramWindow for the changed model"
                )
            if not t.is_contiguous():
                raise ValueError(
                    f"parameter {name!r} of shape {tuple(t.shape)} is not contiguous (strides {t.stride()}: a "
                    "transpose, or channels_last); the window reads parameters in their contiguous order: "
                    "make it contiguous again (p.data = p.data.contiguous(), or "
                    "model.to(memory_format=torch.contiguous_format))"
                )
            changed.append(name)
        if old is not None and changed:
            shown = ", ".join(repr(n) for n in changed[:5])
            shown += f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            warnings.warn(
                f"GramWindow: parameter {shown} was replaced or moved to new memory; following it (the next update "
                "is its new value minus the snapshot taken before the change)",
                RuntimeWarning,
                stacklevel=4,
            )
        self.params, self.locals, self._sig = list(params), list(locals_), sig
        if found is not None:
            self._slots, self._raw_names = found
        self._plain = all(map(operator.is_, self.locals, self.params))
        self._views = [self.locals[pc.index].detach().view(-1)[pc.start : pc.start + pc.length] for pc in self.pieces]

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
