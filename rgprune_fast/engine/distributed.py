"""torch.distributed: every rank scores its own shard of the data; running sums are all-reduced once
at the end (by the criteria accumulators, through :func:`all_reduce_`), so every rank returns the
scores of the whole data. With the random gradient, rank r draws from ``seed + r``."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def process_group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_seed(seed: int) -> int:
    """The seed of this rank's random draws: ranks draw apart."""
    return seed + (torch.distributed.get_rank() if process_group_active() else 0)


def all_reduce_(tensors: Sequence[torch.Tensor], op: str = "sum") -> None:
    """Sum (``op="sum"``) or maximum (``"max"``) of each tensor over all ranks, in place, in one
    collective (the tensors share a dtype and device). A no-op without a process group."""
    if not process_group_active() or not tensors:
        return
    dist = torch.distributed
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
