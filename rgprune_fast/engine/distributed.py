"""torch.distributed: every rank scores its own shard of the data; running sums are all-reduced once at
the end (by the criteria accumulators, through :func:`all_reduce_`), so every rank returns the scores of
the whole data. With the random gradient, rank r draws from ``seed + r``.

A model sharded with FSDP2 (``fully_shard``; any model whose parameters are DTensors) runs collectives
inside its forward and backward (the all-gather of each layer's weights), so the ranks must run the same
forwards: :class:`Lockstep` makes them agree before every batch that each has one, and raises on every
rank, instead of waiting for ever, when the shards hold different numbers of batches (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .interrupts import interruptible


def process_group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_seed(seed: int) -> int:
    """The seed of this rank's random draws: ranks draw apart."""
    return seed + (torch.distributed.get_rank() if process_group_active() else 0)


def all_reduce_(tensors: Sequence[torch.Tensor], op: str = "sum") -> None:
    """Sum (``op="sum"``) or maximum (``"max"``) of each tensor over all ranks, in place, in one
    collective (the tensors share a dtype; those on other devices than the first, as in a
    ``device_map``-split model, travel to it and back). A no-op without a process group."""
    if not process_group_active() or not tensors:
        return
    dist = torch.distributed
    flat = torch.cat([t.reshape(-1).to(tensors[0].device) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def sharded_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter of ``model`` that is a DTensor (FSDP2 ``fully_shard``, tensor
    parallelism: its forward runs collectives), or ``None``."""
    if not process_group_active():
        return None
    from torch.distributed.tensor import DTensor

    return next((name for name, p in model.named_parameters() if isinstance(p, DTensor)), None)


UNEVEN = (
    "the ranks ran out of batches at different points ({where}, or failed reading it): the model is sharded "
    "(FSDP2 / DTensor parameters) and its forward gathers weights from every rank, so every rank must score the "
    "same number of batches. Give each rank an equal share, e.g. DistributedSampler(dataset, drop_last=True) "
    "with one batch size, or equal-length splits"
)


class Lockstep:
    """The batches of a :class:`~.batching.BatchStream` (same ``first`` and ``total``), with the ranks
    agreeing, before the first batch and before each further one, that every rank has a batch: one tiny
    all-reduce per batch (next to the per-layer all-gathers of a sharded forward). A rank with no batch
    at all, or one whose data raise, raises its own error and the others a ``RuntimeError``, before any rank
    runs a forward the others would not join."""

    def __init__(self, open_stream: Callable[[], object], device: torch.device):
        self._device = device
        try:
            self._stream = open_stream()
        except Exception:  # no batch (EmptyDataError) or unreadable data: the others raise too, not wait
            self._agree(False)
            raise
        self._check(True, 1)
        self.first, self.total = self._stream.first, self._stream.total

    def _agree(self, have: bool) -> bool:
        """Whether every rank has a batch, or none has (``False``: some have, some not)."""
        flags = torch.tensor([int(have), int(not have)], device=self._device)
        interruptible(all_reduce_, [flags], "max")  # waiting for a slower rank: Ctrl-C acts at once
        return not bool(flags.min() > 0)

    def _check(self, have: bool, number: int) -> None:
        if not self._agree(have):
            where = f"batch {number}: {'this rank has it, another has not' if have else 'another rank has it'}"
            raise RuntimeError(UNEVEN.format(where=where))

    def __iter__(self) -> Iterator:
        batches = iter(self._stream)
        yield next(batches)  # the first batch, agreed on above
        number = 1
        while True:
            number += 1
            try:
                batch = next(batches, None)
            except Exception:
                self._agree(False)
                raise
            self._check(batch is not None, number)
            if batch is None:
                return
            yield batch
