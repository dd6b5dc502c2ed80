"""Taps: installed on the scored modules for the duration of one ``score`` call, always removed.

A :class:`Tap` receives the statistic ``s[N, C]`` of its module from the autograd Functions in
``autograd.py`` (summed over the module's calls in the batch) and folds it into its on-device
:class:`~rgprune_fast.criteria.ChannelAccumulator` at the end of each batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from . import registry
from .autograd import BatchNormTap, GenericTap, ReluTap
from .criteria import ChannelAccumulator, weight_group_term
from .distributed import all_reduce_accumulators
from .errors import NonFiniteStatisticsError, UnsupportedModuleError
from .model_state import override_forward
from .selection import NO_GRAD_MESSAGE, TapPlan


class Tap:
    def applied(self) -> None:
        """A forward application of this tap (inside the model's forward)."""
        if not torch.is_grad_enabled():
            raise UnsupportedModuleError(NO_GRAD_MESSAGE.format(key=self.plan.key))
        self.forward_calls += 1

    def __init__(self, plan: TapPlan, backend, methods: Sequence[str], device: torch.device):
        self.plan = plan
        self.backend = backend
        self.methods = methods
        self.device = device
        self.anchor = torch.zeros((), device=device, requires_grad=True)
        self.batch_s: torch.Tensor | None = None
        self.acc: ChannelAccumulator | None = None
        self.forward_calls = 0  # this batch: tap applications in forward ...
        self.backward_calls = 0  # ... and statistics received in backward

    def channel_dim(self, t: torch.Tensor) -> int:
        return 1 if self.plan.channel_dim == 1 else t.dim() - 1

    def add(self, s: torch.Tensor) -> None:
        """Called from backward: one call's ``s`` (several calls of a module in a batch add up)."""
        if self.batch_s is not None and self.batch_s.shape != s.shape:
            raise RuntimeError(
                f"{self.plan.key!r} gave statistics of shapes {tuple(self.batch_s.shape)} and "
                f"{tuple(s.shape)} within one batch"
            )
        self.batch_s = s if self.batch_s is None else self.batch_s + s
        self.backward_calls += 1

    def end_batch(self, batch: int, examples: int, dtype: torch.dtype, group_grads: dict) -> None:
        s = self.batch_s
        applied, received = self.forward_calls, self.backward_calls
        self.batch_s, self.forward_calls, self.backward_calls = None, 0, 0
        if applied and not received and self.plan.reachable:
            raise RuntimeError(
                f"batch {batch}: {self.plan.key!r} ran in forward but its statistics never arrived in backward, "
                "although the structure probe saw a gradient path from the output to it. Something cut the "
                "graph: reentrant gradient checkpointing (use use_reentrant=False) or a detach() on the way"
            )
        if s is None:  # the module was not reached in this batch: no positions, s = 0
            s = torch.zeros(examples, self.plan.channels, device=self.device, dtype=dtype)
        if s.shape != (examples, self.plan.channels):
            raise RuntimeError(
                f"{self.plan.key!r} produced statistics of shape {tuple(s.shape)}, expected "
                f"({examples}, {self.plan.channels}): the scored tensor's dim 0 must be the batch's examples"
            )
        group = None
        if self.plan.weight_group:
            pairs = []
            for param, dim in self.plan.weight_group:
                grad = group_grads.get(param)
                pairs.append((param, torch.zeros_like(param) if grad is None else grad, dim))
            group = weight_group_term(pairs, s.dtype)
        size = self.plan.unit.group
        if size > 1:  # e.g. attention heads: sum the channels of a group before any abs/square
            s = s.view(examples, -1, size).sum(-1)
            group = None if group is None else group.view(-1, size).sum(-1)
        if self.acc is None:
            self.acc = ChannelAccumulator(
                self.plan.units, self.methods, s.device, s.dtype, getattr(self.backend, "fold_criteria", None)
            )
        self.acc.update(s, batch, group)


class TapSet:
    """The taps of one ``score`` call; :meth:`installed` puts them on the model and always removes them."""

    def __init__(self, plans: Sequence[TapPlan], backend, methods: Sequence[str], device: torch.device):
        self.taps = [Tap(p, backend, methods, device) for p in plans]
        self.group_params = list({id(p): p for t in self.taps for p, _ in t.plan.weight_group}.values())
        self._pending_relu: dict[int, tuple[torch.Tensor, Tap]] = {}

    @property
    def anchors(self) -> list[torch.Tensor]:
        return [t.anchor for t in self.taps]

    @contextmanager
    def installed(self) -> Iterator[TapSet]:
        handles, overridden = [], []
        try:
            relu_modules = {}
            for tap in self.taps:
                kind, module = tap.plan.kind, tap.plan.module
                if kind == "batchnorm":
                    overridden.append(override_forward(module, _batchnorm_forward(tap)))
                elif kind == "input":
                    handles.append(module.register_forward_pre_hook(_input_hook(tap)))
                elif kind == "relu":
                    handles.append(module.register_forward_hook(self._remember_for_relu(tap)))
                    for relu in tap.plan.relu_modules:
                        relu_modules[id(relu)] = relu
                else:
                    handles.append(module.register_forward_hook(_generic_hook(tap)))
            for relu in relu_modules.values():
                overridden.append(override_forward(relu, self._relu_forward(relu)))
            yield self
        finally:
            for h in handles:
                h.remove()
            for restore in reversed(overridden):
                restore()
            self._pending_relu.clear()

    def _remember_for_relu(self, tap: Tap):
        def hook(module, args, out):
            self._pending_relu[id(out)] = (out, tap)

        return hook

    def _relu_forward(self, relu: nn.Module):
        upper = registry.relu_upper(relu)
        original = relu.forward  # bound, captured before the override

        def forward(module, x):
            pending = self._pending_relu.pop(id(x), None)
            if pending is None or pending[0] is not x:
                return original(x)
            tap = pending[1]
            tap.applied()
            return ReluTap.apply(x, tap.anchor, upper, module.inplace, tap)

        return forward

    def begin_batch(self) -> None:
        self._pending_relu.clear()
        for tap in self.taps:
            tap.batch_s, tap.forward_calls, tap.backward_calls = None, 0, 0

    def check_forward(self, batch: int) -> None:
        """After a batch's forward: every output planned for a fused ReLU tap went through its ReLU."""
        if self._pending_relu:
            names = sorted({tap.plan.key for _, tap in self._pending_relu.values()})
            self._pending_relu.clear()
            raise RuntimeError(
                f"batch {batch}: the output of module(s) {names} did not go through the ReLU the structure probe "
                "saw it go through; the model's control flow differs from the probe's (first batch), so the "
                "statistics would not be exact"
            )

    def end_batch(self, batch: int, examples: int, dtype: torch.dtype, grads: Sequence) -> None:
        group_grads = dict(zip(self.group_params, grads))
        for tap in self.taps:
            tap.end_batch(batch, examples, dtype, group_grads)

    def results(self, methods: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """``{method: {module: tensor}}`` on the CPU: all synchronisation of the call happens here
        (after summing the accumulators over ranks when a process group is initialised)."""
        all_reduce_accumulators([t.acc for t in self.taps])
        first_bad = torch.stack([t.acc.first_bad_batch() for t in self.taps]).cpu().tolist()
        bad = [(b, t.plan.key) for b, t in zip(first_bad, self.taps) if b >= 0]
        if bad:
            batch, name = min(bad)
            others = ", ".join(repr(n) for _, n in sorted(bad)[1:6])
            more = f" (also in {others}{', ...' if len(bad) > 6 else ''})" if others else ""
            raise NonFiniteStatisticsError(
                f"NaN/Inf in the statistics of module {name!r} in batch {batch} (0-based){more}; check the "
                "inputs and weights for NaN/Inf, or the model for overflow in its dtype"
            )
        out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
        for tap in self.taps:
            for m in methods:
                value = tap.acc.result(m).cpu()
                if not torch.isfinite(value).all():
                    raise NonFiniteStatisticsError(
                        f"the {m} scores of module {tap.plan.key!r} overflow {value.dtype} (the statistics "
                        "themselves are finite); scale the inputs down or score a float64 copy of the model"
                    )
                out[m][tap.plan.key] = value
        return out


def _batchnorm_forward(tap: Tap):
    def forward(module, z):
        with contextlib.suppress(NotImplementedError):  # _BatchNorm subclasses without their own check
            module._check_input_dim(z)
        tap.applied()
        return BatchNormTap.apply(z, tap.anchor, module.weight, module.bias, module, tap)

    return forward


def _generic_hook(tap: Tap):
    def hook(module, args, out):
        tap.applied()
        return GenericTap.apply(out, tap.anchor, tap)

    return hook


def _input_hook(tap: Tap):
    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(f"{tap.plan.key!r}: the module's input must be its first positional argument")
        tap.applied()
        return (GenericTap.apply(args[0], tap.anchor, tap), *args[1:])

    return hook


__all__ = ["Tap", "TapSet"]
