"""Shard groups: who holds which numbers, and the SUM all-reduce of partial
inner products. Per-group inner products add over disjoint blocks of the
flat space, so one all-reduce of ``groups x (W+1)`` numbers per slide makes
every rank see the Gram of the whole model."""
from __future__ import annotations

from typing import Tuple

import torch


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


def is_writer() -> bool:
    """True on the process that writes logs: rank 0 of the default group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
