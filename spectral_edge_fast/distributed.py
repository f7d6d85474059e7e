"""Shard groups: who holds which numbers, and the SUM all-reduce of partial
inner products. Per-group inner products add over disjoint blocks of the
flat space, so one all-reduce of ``groups x (W+1)`` numbers per slide makes
every rank see the Gram of the whole model. That holds only if every rank
built its window alike and holds its own part of each parameter, which
:func:`agree_on_setup` checks once at construction; ``project`` and
``combine`` likewise raise on every rank when one rank's input differs."""
from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

from .layout import ParamLayout, _local


def rank_and_world(process_group) -> Tuple[int, int]:
    """This process's rank and the group's size; (0, 1) without a group."""
    if process_group is None:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialised; call init_process_group first")
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def all_reduce_sum(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """In-place SUM over the group. Asynchronous on NCCL: ``wait`` only orders
    the current stream after the collective, the host does not block."""
    if process_group is None:
        return tensor
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group, async_op=True).wait()
    return tensor


def all_reduce_counted(tensor: torch.Tensor, counter: int, drift: torch.Tensor, process_group) -> torch.Tensor:
    """SUM of ``tensor`` over the group (a new tensor), and of ``counter`` and
    its square beside it: ``world * sum c^2 - (sum c)^2`` is 0 exactly when
    every rank passed the same ``counter``, else it is added to ``drift`` (a
    device scalar read with the Gram). No host synchronisation: the counter
    goes in by ``fill_`` and the check stays on the device."""
    if process_group is None:
        return tensor
    _, world = rank_and_world(process_group)
    n = tensor.numel()
    buf = torch.empty(n + 2, dtype=torch.float64, device=tensor.device)
    buf[:n].copy_(tensor.reshape(-1))
    buf[n].fill_(float(counter))
    buf[n + 1].fill_(float(counter) ** 2)
    all_reduce_sum(buf, process_group)
    drift.add_((buf[n + 1] * world - buf[n] * buf[n]).abs())
    return buf[:n].view(tensor.shape)


def agree_on_setup(settings: dict, layout: ParamLayout, process_group) -> None:
    """Raise the same ``ValueError`` on every rank when the ranks' windows
    were built differently; a mismatch would otherwise hang or abort in the
    first slide's all-reduce, or silently sum unrelated numbers.

    Must agree: ``settings`` (window, every, storage dtype), the world size,
    the groups and every parameter's name, full shape and whether it is
    sharded. Must add up: each parameter's numbers held over all ranks make
    its full size (so each group's local sizes add up to its global size), and
    the ranks that hold part of a parameter put it in the same group.

    Two fixed-size all_gathers, once at construction, on the parameters'
    device (the one the per-step all-reduce uses, so this works wherever
    training does; ``all_gather_object`` would use the current CUDA device,
    wrong on ranks that never called ``set_device``): first a digest of what
    must agree and the length of its description; then each rank's holdings,
    whose shape is the same everywhere once the digests agree, or else the
    descriptions themselves, so every rank can name the differences. All ranks
    see the same digests, hence take the same branch and raise the same error."""
    _, world = rank_and_world(process_group)
    if world == 1:
        return
    setup = {
        **settings,
        "world size": world,
        "groups": list(layout.groups),
        "parameters": [[name, list(p.shape), _local(p)[1]] for name, p in zip(layout.names, layout.params)],
    }
    text = json.dumps(setup).encode()
    digest = np.frombuffer(hashlib.blake2b(text, digest_size=32).digest(), dtype="<i8").tolist()
    device = layout.device
    heads = _all_gather(torch.tensor(digest + [len(text)], dtype=torch.int64, device=device), process_group)
    if (heads[:, :-1] != heads[0, :-1]).any():
        padded = torch.zeros(int(heads[:, -1].max()), dtype=torch.uint8, device=device)
        padded[: len(text)] = torch.tensor(list(text), dtype=torch.uint8)
        rows = _all_gather(padded, process_group)
        setups = [json.loads(bytes(row[:n].tolist())) for row, n in zip(rows, heads[:, -1].tolist())]
        raise ValueError(
            f"GramWindow setup differs across ranks: {_differences(setups)}; build the window with the same "
            "settings and parameters on every rank of the process_group"
        )
    # Each parameter's local numbers and the group they sit in (-1: none here).
    n = len(layout.params)
    held, group = [0] * n, [-1] * n
    cursor = 0
    for pc in layout.pieces:
        held[pc.index] += pc.length
        group[pc.index] = bisect_right(layout.bounds, cursor) - 1
        cursor += pc.length
    rows = _all_gather(torch.tensor(held + group, dtype=torch.int64, device=device), process_group).tolist()
    problems = []
    for i, (name, p) in enumerate(zip(layout.names, layout.params)):
        counts = [row[i] for row in rows]
        if sum(counts) != p.numel():
            problems.append(
                f"parameter {name!r} {tuple(p.shape)} has {p.numel()} numbers but the ranks hold {sum(counts)} "
                f"({_spread(list(enumerate(counts)))})"
            )
        groups = [(r, repr(layout.groups[row[n + i]])) for r, row in enumerate(rows) if row[i]]
        if len({g for _, g in groups}) > 1:
            problems.append(f"parameter {name!r} is in group {_spread(groups)}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ValueError(
            f"GramWindow shards do not add up across ranks: {shown}; every number must be held by exactly one rank "
            "of the process_group (a DTensor's mesh, and the group FSDP or DeepSpeed ZeRO-3 shards over, must span "
            "the process_group, and every other parameter must be replicated on all of its ranks). A model sharded "
            "within groups and replicated across them (FSDP's HYBRID_SHARD, HSDP): pass its shard group, e.g. "
            "mesh.get_group('shard'), as process_group; each replica then computes the same Gram"
        )


def all_reduce_or_raise(compute: Callable[[], torch.Tensor], shape, device, process_group, what: str) -> torch.Tensor:
    """SUM all-reduce of ``compute()``, a float64 tensor of ``shape``. Ranks
    where ``compute`` raises (input that does not fit their parameters) still
    take part, with zeros, and then re-raise; the others raise naming them,
    instead of waiting in the all-reduce until the group's timeout. Reads one
    flag per rank on the host: for results the caller reads there anyway
    (``project``), never on the per-step path."""
    rank, world = rank_and_world(process_group)
    try:
        local, failed = compute(), None
    except Exception as exc:
        local, failed = torch.zeros(shape, dtype=torch.float64, device=device), exc
    if world > 1:
        flags = torch.zeros(world, dtype=torch.float64, device=device)
        flags[rank] = failed is not None
        local = all_reduce_sum(torch.cat([local.reshape(-1), flags]), process_group)
        bad = [r for r, f in enumerate(local[-world:].tolist()) if f]
        if bad and failed is None:
            raise RuntimeError(f"{what} failed on {_ranks(bad)} (its error says why); the other ranks stopped with it")
        local = local[:-world].reshape(shape)
    if failed is not None:
        raise failed
    return local


def agree_on_coefficients(coeffs: np.ndarray, window: int, device, process_group) -> None:
    """Raise the same error on every rank unless ``combine``'s coefficients
    are the same everywhere: ``X^T c`` is summed over the ranks' parts of
    ``X``, so different ``c`` would mix, and a length wrong on one rank only
    would leave the others waiting. One all-gather of ``window + 1`` numbers
    (count, then the first ``window`` coefficients, NaN-padded)."""
    _, world = rank_and_world(process_group)
    if world == 1:
        return
    row = np.full(window + 1, np.nan)
    row[0] = len(coeffs)
    row[1 : 1 + min(len(coeffs), window)] = coeffs[:window]
    rows = _all_gather(torch.from_numpy(row).to(device), process_group).numpy()
    differ = [i for i in range(window + 1) if not all(np.array_equal(rows[0, i], v, equal_nan=True) for v in rows[:, i])]
    if not differ:
        return
    if differ[0] == 0:
        detail = f"the number of coefficients is {_spread(list(enumerate(rows[:, 0].astype(int).tolist())))}"
    else:
        detail = f"coefficient {differ[0] - 1} is {_spread(list(enumerate(rows[:, differ[0]].tolist())))}"
    raise ValueError(f"combine() coefficients differ across ranks: {detail}; pass the same coefficients on every rank")


def sum_replicated(tensors: List[torch.Tensor], layout: ParamLayout, process_group) -> None:
    """Complete ``combine``'s tensors in place: each replicated parameter was
    split over the ranks, so its parts are SUM-reduced; a shard is whole on
    its rank (adding other ranks' shards to it would mix unrelated numbers,
    or abort on uneven shards)."""
    if process_group is None:
        return
    for t, p in zip(tensors, layout.params):
        if not _local(p)[1]:
            all_reduce_sum(t, process_group)


def _all_gather(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """``[world, *tensor.shape]`` on the host: every rank's ``tensor``."""
    import torch.distributed as dist

    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(out, tensor, group=process_group)
    return torch.stack(out).cpu()


def _ranks(ranks: Sequence[int]) -> str:
    """``rank 2``, ``ranks 0, 1, 3``; runs of three or more as ``4-9``."""
    runs: List[List[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


def _spread(values: Sequence[Tuple[int, object]]) -> str:
    """``4 on ranks 0, 1, 3 but 8 on rank 2`` from ``(rank, value)`` pairs,
    values in the order of their first rank."""
    by_value: dict = {}
    for rank, value in values:
        by_value.setdefault(str(value), []).append(rank)
    parts = [f"{value} on {_ranks(ranks)}" for value, ranks in by_value.items()]
    return parts[0] + (" but " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _differences(setups: List[dict]) -> str:
    """What differs between the ranks' setup descriptions; for the lists
    (groups, parameters) their lengths and the first entry that differs."""
    show = {
        "groups": ("group", repr),
        "parameters": ("parameter", lambda e: f"{e[0]!r} {tuple(e[1])} " + ("sharded" if e[2] else "replicated")),
    }
    parts = []
    for key in setups[0]:
        values = [s[key] for s in setups]
        if all(v == values[0] for v in values):
            continue
        if key not in show:
            parts.append(f"{key} is {_spread(list(enumerate(values)))}")
            continue
        label, fmt = show[key]
        lengths = [len(v) for v in values]
        if len(set(lengths)) > 1:
            parts.append(f"the number of {key} is {_spread(list(enumerate(lengths)))}")
        i = next(i for i in range(max(lengths)) if len({repr(v[i]) if i < len(v) else None for v in values}) > 1)
        entries = [(r, fmt(v[i]) if i < len(v) else "absent") for r, v in enumerate(values)]
        parts.append(f"{label} {i} is {_spread(entries)}")
    return "; ".join(parts)


def is_writer() -> bool:
    """True on the process that writes logs: rank 0 of the default group, or,
    before the group exists, the process a launcher (torchrun) numbered 0 in
    ``RANK``: a monitor built before ``init_process_group`` made every rank a
    writer of one directory."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")
