"""torch.distributed: every rank scores its own shard of the data; the accumulators (and example and
batch counts) are all-reduced once at the end, so every rank returns the scores of the whole data."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def process_group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_accumulators(accumulators: Sequence) -> None:
    """Sum the running sums and counts of every :class:`ChannelAccumulator` over all ranks (two
    collectives: one flat buffer of sums, one of counts and first-bad-batch flags)."""
    if not process_group_active() or not accumulators:
        return
    dist = torch.distributed
    names = ("sum_s", "sum_abs", "sum_sq", "sum_batch_sq", "sum_group")
    parts = [getattr(a, n) for a in accumulators for n in names if getattr(a, n) is not None]
    flat = torch.cat([p.reshape(-1) for p in parts])
    dist.all_reduce(flat)
    offset = 0
    for p in parts:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    device = accumulators[0].sum_s.device
    counts = torch.tensor([[a.examples, a.batches] for a in accumulators], dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    flags = torch.cat([a.first_bad for a in accumulators])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # >= 0 where any rank saw a non-finite value
    offset = 0
    for a, (examples, batches) in zip(accumulators, counts.tolist()):
        a.examples, a.batches = examples, batches
        a.first_bad.copy_(flags[offset : offset + a.first_bad.numel()])
        offset += a.first_bad.numel()
