"""Taps: installed on the scored modules for the duration of one ``score`` call, always removed.

A :class:`Tap` receives the statistic ``s[N, C]`` of its module from the autograd Functions in
``functions.py`` (summed over the module's calls in the batch) and folds it into its running sums
(:class:`~rgprune_fast.criteria.UnitStatistics`) at the end of each batch.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..backends.contract import ReductionBackend
from ..criteria import Criterion, UnitStatistics, finish
from ..engine import activations, experts, fused_inputs
from ..engine.model_state import override_forward
from ..engine.planning import NO_GRAD_MESSAGE, TapPlan
from ..errors import UnsupportedModuleError
from .functions import ActivationTap, BatchNormTap, ExpertTap, FusedInput, GenericTap, ProductTap, ReluTap


class Tap:
    """One scored unit spec: receives its module's ``s`` in backward (summed over the module's calls in
    the batch) and checks that every forward application was answered in backward."""

    def __init__(self, plan: TapPlan, backend: ReductionBackend, criteria: Sequence[Criterion], device: torch.device):
        self.plan = plan
        self.backend = backend
        self.device = device
        self.anchor = torch.zeros((), device=device, requires_grad=True)
        self.stats = UnitStatistics(plan.key, plan.channels, plan.unit.channels_per_unit, plan.molchanov_weights,
                                    criteria, backend)  # fmt: skip
        self.batch_s: torch.Tensor | None = None
        self.examples = 0  # this batch's size (to sum the rows of a folded [N * k, C] statistic by example)
        self.forward_calls = 0  # this batch: tap applications in forward ...
        self.backward_calls = 0  # ... and statistics received in backward

    def applied(self) -> None:
        """A forward application of this tap (inside the model's forward)."""
        if not torch.is_grad_enabled():
            raise UnsupportedModuleError(NO_GRAD_MESSAGE.format(key=self.plan.key))
        self.forward_calls += 1

    def channel_dim(self, t: torch.Tensor) -> int:
        return 1 if self.plan.channel_dim == 1 else t.dim() - 1

    def add(self, s: torch.Tensor) -> None:
        """Called from backward: one call's ``s`` (several calls of a module in a batch add up); a folded
        module's ``s[N * k, C]`` is summed over each example's ``k`` rows."""
        if self.plan.folded and s.shape[0] != self.examples:
            if not self.examples or s.shape[0] % self.examples:
                raise RuntimeError(
                    f"{self.plan.key!r}: {s.shape[0]} rows for a batch of {self.examples} examples; the structure "
                    "probe saw the batch folded into dim 0, this batch does not fold the same way"
                )
            s = s.view(self.examples, -1, s.shape[-1]).sum(1)
        if self.batch_s is not None and self.batch_s.shape != s.shape:
            raise RuntimeError(
                f"{self.plan.key!r} gave statistics of shapes {tuple(self.batch_s.shape)} and "
                f"{tuple(s.shape)} within one batch"
            )
        self.batch_s = s if self.batch_s is None else self.batch_s + s
        self.backward_calls += 1

    def add_block(self, start: int, block: torch.Tensor) -> None:
        """Called from backward: ``s[:, start : start + width]`` of one expert's call (the rest of the
        experts' channels untouched)."""
        if self.batch_s is None:
            self.batch_s = block.new_zeros(self.examples, self.plan.channels)
        self.batch_s[:, start : start + block.shape[1]] += block
        self.backward_calls += 1

    def end_batch(self, batch: int, examples: int, dtype: torch.dtype, weight_grads: dict) -> None:
        s = self.batch_s
        applied, received = self.forward_calls, self.backward_calls
        self.batch_s, self.forward_calls, self.backward_calls = None, 0, 0
        if applied and not received and self.plan.reachable:
            raise RuntimeError(
                f"batch {batch}: {self.plan.key!r} ran in forward but its statistics never arrived in backward, "
                "although the structure probe saw a gradient path from the output to it. Something cut the "
                "graph: reentrant gradient checkpointing (use use_reentrant=False) or a detach() on the way"
            )
        self.stats.add_batch(batch, examples, s, dtype, self.device, weight_grads)


class TapSet:
    """The taps of one ``score`` call; :meth:`installed` puts them on the model and always removes them."""

    def __init__(self, plans: Sequence[TapPlan], backend: ReductionBackend, criteria: Sequence[Criterion],
                 device: torch.device):  # fmt: skip
        self.taps = [Tap(p, backend, criteria, device) for p in plans]
        # The Molchanov weights W_c of every tap: the only parameters that need gradients
        self.weight_params = list({id(p): p for t in self.taps for p, _ in t.plan.molchanov_weights}.values())
        self._pending_relu: dict[int, tuple[torch.Tensor, Tap]] = {}
        # id(h) -> (weakref to h, its record, its version, the taps it may feed): a fused producer's output
        self._pending_fused: dict[int, tuple[weakref.ref, FusedInput, int, tuple[Tap, ...]]] = {}

    @property
    def anchors(self) -> list[torch.Tensor]:
        return [t.anchor for t in self.taps]

    @contextmanager
    def installed(self) -> Iterator[TapSet]:
        handles, overridden = [], []
        try:
            relu_modules = {id(r): r for tap in self.taps if tap.plan.kind == "relu" for r in tap.plan.relu_modules}
            fused: dict[int, tuple[str, nn.Module, list[Tap]]] = {}  # producer module -> the taps it may feed
            for tap in self.taps:
                kind, module = tap.plan.kind, tap.plan.module
                if kind == "batchnorm":
                    overridden.append(override_forward(module, _batchnorm_forward(tap)))
                elif kind == "input":
                    producers = [m for m in tap.plan.fused_modules if id(m) not in relu_modules]
                    for m in producers:
                        fused.setdefault(id(m), (tap.plan.fused, m, []))[2].append(tap)
                    hook = self._fused_input_hook(tap) if producers else _input_hook(tap)
                    handles.append(module.register_forward_pre_hook(hook))
                elif kind == "experts":
                    state = experts.state_of(module)
                    state.intercept = _experts_intercept(tap)
                    overridden.append(lambda state=state: setattr(state, "intercept", None))
                elif kind == "relu":
                    handles.append(module.register_forward_hook(self._remember_for_relu(tap)))
                else:
                    handles.append(module.register_forward_hook(_generic_hook(tap)))
            for relu in relu_modules.values():
                overridden.append(override_forward(relu, self._relu_forward(relu)))
            for how, producer, taps in fused.values():
                if how == "product":
                    forward = fused_inputs.gated_forward(self._fused_product(tuple(taps)))
                else:
                    forward = self._fused_activation(producer, tuple(taps))
                overridden.append(override_forward(producer, forward))
            yield self
        finally:
            for h in handles:
                h.remove()
            for restore in reversed(overridden):
                restore()
            self._pending_relu.clear()
            self._pending_fused.clear()

    def _remember_fused(self, h: torch.Tensor, record: FusedInput, taps: tuple[Tap, ...]) -> torch.Tensor:
        self._pending_fused[id(h)] = (weakref.ref(h), record, h._version, taps)
        return h

    def _fused_product(self, taps: tuple[Tap, ...]):
        anchors = [t.anchor for t in taps]

        def multiply(a, u):
            tensors = isinstance(a, torch.Tensor) and isinstance(u, torch.Tensor)
            if not tensors or a.shape != u.shape or a.dtype != u.dtype or not a.is_floating_point():
                return a * u  # broadcasting, mixed dtypes: the plain product (the generic tap follows)
            if not torch.is_grad_enabled():
                return a * u
            record = FusedInput()
            return self._remember_fused(ProductTap.apply(a, u, record, *anchors), record, taps)

        return multiply

    def _fused_activation(self, module: nn.Module, taps: tuple[Tap, ...]):
        original = type(module).forward.__get__(module)  # the class's own (fused_inputs checked it)
        grad, anchors = fused_inputs.input_grad(module), [t.anchor for t in taps]

        def forward(module, z):
            if not isinstance(z, torch.Tensor) or not z.is_floating_point() or not torch.is_grad_enabled():
                return original(z)
            record = FusedInput()
            return self._remember_fused(ActivationTap.apply(z, original, grad, record, *anchors), record, taps)

        return forward

    def _fused_input_hook(self, tap: Tap):
        """The projection's input tap when a fused producer may feed it: nothing to do when its input is
        that producer's output, untouched (the producer reduces ``s``), else the generic input tap."""
        generic = _input_hook(tap)

        def hook(module, args):
            x = args[0] if args else None
            entry = self._pending_fused.get(id(x)) if isinstance(x, torch.Tensor) else None
            if entry is None or entry[0]() is not x or entry[2] != x._version or tap not in entry[3]:
                return generic(module, args)
            record = entry[1]
            if record.tap is not None and record.tap is not tap:
                raise RuntimeError(
                    f"{tap.plan.key!r} and {record.tap.plan.key!r} take the same input tensor; the structure probe "
                    "saw it go into one projection only (the model's control flow differs from the probe's, on the "
                    "first batch), so the statistics would not be exact"
                )
            tap.applied()
            record.tap = tap  # a second call on the same input: its gradient is in the one dh already
            return None

        return hook

    def _remember_for_relu(self, tap: Tap):
        def hook(module, args, out):
            self._pending_relu[id(out)] = (out, tap)

        return hook

    def _relu_forward(self, relu: nn.Module):
        form = activations.fused(relu)
        original = relu.forward  # bound, captured before the override

        def forward(module, x):
            pending = self._pending_relu.pop(id(x), None)
            if pending is None or pending[0] is not x:
                return original(x)
            tap = pending[1]
            tap.applied()
            return ReluTap.apply(x, tap.anchor, form, module.inplace, tap)

        return forward

    def begin_batch(self, examples: int) -> None:
        self._pending_relu.clear()
        self._pending_fused.clear()
        for tap in self.taps:
            tap.batch_s, tap.forward_calls, tap.backward_calls = None, 0, 0
            tap.examples = examples

    def check_forward(self, batch: int) -> None:
        """After a batch's forward: every output planned for a fused ReLU tap went through its ReLU."""
        self._pending_fused.clear()
        if self._pending_relu:
            names = sorted({tap.plan.key for _, tap in self._pending_relu.values()})
            self._pending_relu.clear()
            raise RuntimeError(
                f"batch {batch}: the output of module(s) {names} did not go through the ReLU the structure probe "
                "saw it go through; the model's control flow differs from the probe's (first batch), so the "
                "statistics would not be exact"
            )

    def check_examples(self, batch: int, inputs: int | None, outputs: int) -> None:
        """After a batch's forward: the output's example count is what folded statistics are summed by;
        taps that assigned rows to examples in forward (experts) used the inputs' count, which must agree."""
        routed = any(t.plan.kind == "experts" for t in self.taps)
        if routed and inputs != outputs:
            raise ValueError(
                f"batch {batch}: the inputs hold {inputs} examples (dim 0 of the first input tensor), the model "
                f"output {outputs}; Mixture-of-Experts neurons need dim 0 to be the example in both"
            )
        for tap in self.taps:
            tap.examples = outputs

    def end_batch(self, batch: int, examples: int, dtype: torch.dtype, grads: Sequence) -> None:
        """After a batch's backward: ``grads`` are the gradients of :attr:`weight_params`."""
        weight_grads = dict(zip(self.weight_params, grads))
        for tap in self.taps:
            tap.end_batch(batch, examples, dtype, weight_grads)

    def results(self, criteria: Sequence[Criterion]) -> dict[str, dict[str, torch.Tensor]]:
        """``{criterion: {key: tensor}}`` on the CPU (summed over ranks; the call's only synchronisation)."""
        return finish([t.stats for t in self.taps], criteria)


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


def _experts_intercept(tap: Tap):
    def intercept(expert: int, h: torch.Tensor, token_rows: torch.Tensor, rows: int) -> torch.Tensor:
        if not tap.examples or rows % tap.examples:
            raise RuntimeError(f"{tap.plan.key!r}: {rows} token rows for a batch of {tap.examples} examples")
        tap.applied()
        return ExpertTap.apply(h, tap.anchor, tap, expert, token_rows // (rows // tap.examples))

    return intercept


def _input_hook(tap: Tap):
    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(f"{tap.plan.key!r}: the module's input must be its first positional argument")
        tap.applied()
        return (GenericTap.apply(args[0], tap.anchor, tap), *args[1:])

    return hook


__all__ = ["Tap", "TapSet"]
