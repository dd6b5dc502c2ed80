"""Running sums of one scoring call, per scored unit spec, on the model's device; read back once.

Every scorer folds each batch's ``s[N, C]`` (and, for ``molchanov_group``, the weight gradients)
through :meth:`UnitStatistics.add_batch`, and turns the sums into scores with :func:`finish`, which
is also where ranks are summed and the only host synchronisation of the call happens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..backends.contract import ReductionBackend, RunningSums
from ..engine.distributed import all_reduce_
from ..errors import NonFiniteStatisticsError
from .table import Criterion

# (parameter, its gradient, the dim of the parameter that indexes the unit)
WeightGradients = Sequence[tuple[torch.Tensor, torch.Tensor, int]]


def molchanov_term(weights: WeightGradients, dtype: torch.dtype) -> torch.Tensor:
    """``sum over w in W_c of (w * dL/dw)^2`` per unit ``c``: a Conv/Linear weight (dim 0), a
    ConvTranspose weight (dim 1), a bias or a normalisation layer's affine vector (dim 0); a tuple of
    dims indexes units by several dims, the first slowest (experts' down projection ``[E, H, I]``: (0, 2))."""
    total = None
    for param, grad, dim in weights:
        dims = dim if isinstance(dim, tuple) else (dim,)
        contrib = (param.detach().to(dtype) * grad.to(dtype)).square()
        units = math.prod(contrib.shape[d] for d in dims)
        contrib = contrib.movedim(dims, tuple(range(len(dims)))).reshape(units, -1).sum(1)
        total = contrib if total is None else total + contrib
    return total


class UnitStatistics:
    """The running sums of one scored unit spec (``key``: ``channels`` channels, summed in runs of
    ``channels_per_unit`` into units) over the batches of one call."""

    def __init__(
        self,
        key: str,
        channels: int,
        channels_per_unit: int,
        molchanov_weights: Sequence[tuple[torch.nn.Parameter, int]],
        criteria: Sequence[Criterion],
        backend: ReductionBackend,
    ):
        self.key, self.channels, self.channels_per_unit = key, channels, channels_per_unit
        self.molchanov_weights = list(molchanov_weights)
        self.needed = {c.sum for c in criteria}
        self.backend = backend
        self.sums: RunningSums | None = None  # allocated with the first batch's dtype and device
        self.molchanov: torch.Tensor | None = None
        self.examples = 0
        self.batches = 0

    def add_batch(
        self,
        batch: int,
        examples: int,
        s: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        weight_grads: Mapping[torch.Tensor, torch.Tensor | None],
    ) -> None:
        """Fold in batch ``batch``: ``s`` is ``[examples, channels]`` (``None``: the unit was not reached,
        ``s = 0``); ``weight_grads`` maps each Molchanov weight to its gradient (``None``: zero)."""
        if s is None:
            s = torch.zeros(examples, self.channels, device=device, dtype=dtype)
        if s.shape != (examples, self.channels):
            raise RuntimeError(
                f"{self.key!r} produced statistics of shape {tuple(s.shape)}, expected ({examples}, "
                f"{self.channels}): the scored tensor's dim 0 must be the batch's examples"
            )
        term = None
        if self.molchanov_weights:
            pairs = []
            for param, dim in self.molchanov_weights:
                grad = weight_grads.get(param)
                pairs.append((param, torch.zeros_like(param) if grad is None else grad, dim))
            term = molchanov_term(pairs, s.dtype)
        width = self.channels_per_unit
        if width > 1:  # e.g. attention heads: sum a unit's channels before any abs/square
            s = s.view(examples, -1, width).sum(-1)
            term = None if term is None else term.view(-1, width).sum(-1)
        if self.sums is None:
            self._allocate(s.shape[1], s.device, s.dtype)
        self.backend.fold_criteria(s, batch, self.sums)
        if term is not None:
            bad = (self.sums.first_bad < 0) & ~torch.isfinite(term)
            self.sums.first_bad.copy_(torch.where(bad, batch, self.sums.first_bad))
            self.molchanov += term
        self.examples += examples
        self.batches += 1

    def _allocate(self, units: int, device: torch.device, dtype: torch.dtype) -> None:
        def zeros(needed: bool) -> torch.Tensor | None:
            return torch.zeros(units, device=device, dtype=dtype) if needed else None

        first_bad = torch.full((units,), -1, device=device, dtype=torch.int64)  # -1: no NaN/Inf yet
        needed = self.needed
        self.sums = RunningSums(zeros(True), first_bad, zeros("abs" in needed), zeros("sq" in needed),
                                zeros("batch_sq" in needed))  # fmt: skip
        self.molchanov = zeros("molchanov" in needed)

    def totals(self) -> dict[str, torch.Tensor | None]:
        sums = self.sums
        return {"s": sums.s, "abs": sums.abs, "sq": sums.sq, "batch_sq": sums.batch_sq, "molchanov": self.molchanov}

    def first_bad_batch(self) -> torch.Tensor:
        """Device scalar: the first batch with a non-finite value in any channel, or -1."""
        never = torch.iinfo(torch.int64).max
        first = torch.where(self.sums.first_bad >= 0, self.sums.first_bad, never).min()
        return torch.where(first == never, -1, first)


def _all_reduce(stats: Sequence[UnitStatistics]) -> None:
    """Sum the running sums and counts over all ranks (a no-op without a process group)."""
    all_reduce_([t for st in stats for t in st.totals().values() if t is not None])
    device = stats[0].sums.s.device
    counts = torch.tensor([[st.examples, st.batches] for st in stats], dtype=torch.int64, device=device)
    all_reduce_([counts])
    all_reduce_([st.sums.first_bad for st in stats], op="max")  # >= 0 where any rank saw NaN/Inf
    for st, (examples, batches) in zip(stats, counts.tolist()):
        st.examples, st.batches = examples, batches


def finish(stats: Sequence[UnitStatistics], criteria: Sequence[Criterion]) -> dict[str, dict[str, torch.Tensor]]:
    """``{criterion name: {key: CPU tensor}}``, after summing over ranks; raises
    :class:`NonFiniteStatisticsError` naming the module and batch of the first NaN/Inf."""
    _all_reduce(stats)
    device = stats[0].sums.s.device  # units may live on several devices (a device_map-split model)
    first_bad = torch.stack([st.first_bad_batch().to(device) for st in stats]).cpu().tolist()
    bad = [(b, st.key) for b, st in zip(first_bad, stats) if b >= 0]
    if bad:
        batch, name = min(bad)
        others = ", ".join(repr(n) for _, n in sorted(bad)[1:6])
        more = f" (also in {others}{', ...' if len(bad) > 6 else ''})" if others else ""
        raise NonFiniteStatisticsError(
            f"NaN/Inf in the statistics of module {name!r} in batch {batch} (0-based){more}; check the "
            "inputs and weights for NaN/Inf, or the model for overflow in its dtype"
        )
    out: dict[str, dict[str, torch.Tensor]] = {c.name: {} for c in criteria}
    for st in stats:
        totals = st.totals()
        for c in criteria:
            value = c.finalize(totals[c.sum], st.examples, st.batches).cpu()
            if not torch.isfinite(value).all():
                raise NonFiniteStatisticsError(
                    f"the {c.name} scores of module {st.key!r} overflow {value.dtype} (the statistics "
                    "themselves are finite); scale the inputs down or score a float64 copy of the model"
                )
            out[c.name][st.key] = value
    return out
