"""Which units are scored, and which tap each gets (the "plan").

Default selection (``modules=None``): for transformer models, the MLP neurons and attention heads of
``transformer_units.py`` (plus the BatchNorms of a hybrid's convolutional parts); otherwise every
BatchNorm, and every Conv/Linear whose output does not go straight into a BatchNorm, that is called in
the forward pass, never a module whose output channels are the model's output (its output, or a view,
is the output, or reaches it through no other Conv/Linear). Its contract: every unit it returns is
exact; modules it cannot score exactly (or whose output never reaches the model output) are left out and
named in one warning. ``modules=`` takes names, module types, module objects or
:class:`~rgprune_fast.units.Unit` specs instead; those raise when they cannot be scored.

Tap kinds, in order of preference (no stored activations: docs/design.md, "How the taps work"):

* ``batchnorm``: a BatchNorm using running statistics. Its forward is replaced by one that keeps only
  the BN input ``z`` (which autograd keeps anyway) and computes ``s`` from ``z`` and ``dy``.
* ``relu``: the output's only differentiable consumer is a ReLU/ReLU6/LeakyReLU module; the statistic is
  computed from the activation's output ``r`` (kept anyway) inside its fused backward.
* ``generic``: the output is handed on unchanged and referenced (not copied) for backward. Only
  possible when nothing modifies it in place later; otherwise scoring raises
  :class:`~rgprune_fast.errors.UnsupportedModuleError` naming the module.
* ``input``: input units: the module's first input is handed to it through a generic tap, unless a
  fused producer computes ``s`` from what autograd keeps anyway (``fused``: the product of a gated MLP, or
  an elementwise activation module; engine/fused_inputs.py), falling back to the generic tap at run time.

Tensors may fold the batch into dim 0 (``[N * k, ..., C]``: OPT's MLP, windowed attention) when the
probe has checked that rows ``[n * k, (n + 1) * k)`` are example ``n``'s; their rows are summed by example.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import SkippedUnitsWarning, UnsupportedModuleError
from ..units import Unit
from . import experts, fused_inputs, module_rules
from .probe import ProbeResult, edge_key, edge_of, is_folded
from .transformer_units import transformer_units

NO_GRAD_MESSAGE = (
    "module {key!r} runs with gradients disabled inside the model's forward (torch.no_grad, or reentrant "
    "gradient checkpointing: use use_reentrant=False), so its units get no gradient to score"
)


@dataclass
class TapPlan:
    unit: Unit
    module: nn.Module
    kind: str  # "batchnorm" | "relu" | "generic" | "input" | "experts"
    channel_dim: int  # 1 or -1
    channels: int  # before summing channels into units
    reachable: bool  # the probe saw a gradient path from the model output to these channels
    relu_modules: list[nn.Module] = field(default_factory=list)  # kind == "relu": the consuming ReLUs
    molchanov_weights: module_rules.MolchanovWeights = field(default_factory=list)  # W_c (molchanov_group)
    molchanov_source: str = ""  # the module those weights belong to
    folded: bool = False  # its tensors are [N * k, ..., C]: rows of example n are [n * k, (n + 1) * k)
    fused: str = ""  # kind == "input": "product" | "activation" (engine/fused_inputs.py) | "" (generic)
    fused_modules: list[nn.Module] = field(default_factory=list)  # the modules that produce the fused input

    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def key(self) -> str:
        return self.unit.key

    @property
    def units(self) -> int:
        return self.channels // self.unit.channels_per_unit


def _names_of(spec, named, by_name) -> list[str]:
    if isinstance(spec, str):
        if spec not in by_name or spec == "":
            close = difflib.get_close_matches(spec, [n for n in by_name if n], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"modules= names {spec!r}, which is not a submodule of the model{hint}")
        return [spec]
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        found = [n for n, m in named if n and isinstance(m, spec)]
        if not found:
            raise ValueError(f"modules= names the type {spec.__name__}, but the model has no such module")
        return found
    if isinstance(spec, nn.Module):
        found = [n for n, m in named if m is spec and n]
        if not found:
            raise ValueError(f"modules= holds a {type(spec).__name__} that is not a submodule of the model")
        return found[:1]
    raise TypeError(f"modules= entries must be names, module types, modules or Units; got {type(spec).__name__}")


def resolve_units(model: nn.Module, modules: Any) -> list[Unit] | None:
    """``modules=`` as :class:`Unit` specs in ``named_modules()`` order (outputs before inputs);
    ``None`` means the default rule."""
    if modules is None:
        return None
    specs = list(modules) if isinstance(modules, (list, tuple, set)) else [modules]
    if not specs:
        raise ValueError("modules= is empty; pass names, module types, modules or Units, or None for the default")
    named = list(model.named_modules())
    by_name = dict(named)
    wanted: dict[str, Unit] = {}
    for spec in specs:
        if isinstance(spec, Unit):
            _names_of(spec.name, named, by_name)
            units = [spec]
        else:
            units = [Unit(n) for n in _names_of(spec, named, by_name)]
        for unit in units:
            if unit.key in wanted and wanted[unit.key] != unit:
                raise ValueError(f"modules= asks for {unit.key!r} twice, with {wanted[unit.key].channels_per_unit} "
                                 f"and {unit.channels_per_unit} channels per unit")  # fmt: skip
            wanted[unit.key] = unit
    order = {n: i for i, (n, _) in enumerate(named)}
    return sorted(wanted.values(), key=lambda u: (order[u.name], u.side != "output"))


def default_units(model: nn.Module, probe: ProbeResult) -> list[Unit]:
    """Transformer heads and neurons (plus the BatchNorms of a hybrid's convolutional parts), else the
    convolutional default; units the output gradient cannot reach are checked in :func:`plan_taps`."""
    convolutional = []
    for name, module in model.named_modules():
        rule = module_rules.rule_for(module)
        if not name or not rule.default or name not in probe.calls or probe.produces_output(name):
            continue
        if module_rules.is_producer(module) and probe.feeds_batchnorm(name):
            continue
        convolutional.append(Unit(name))
    transformer = [u for u in transformer_units(model) if u.name in probe.calls]
    if not transformer:
        return convolutional
    batchnorms = [u for u in convolutional if module_rules.is_batchnorm(model.get_submodule(u.name))]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(transformer + batchnorms, key=lambda u: order[u.name])


def _channels(unit: Unit, calls, channel_dim: int, probe: ProbeResult) -> tuple[int, bool]:
    """The unit spec's channel count, and whether its tensors fold the batch into dim 0."""
    channels, folded = set(), False
    what = "output" if unit.side == "output" else "first input"
    for i, c in enumerate(calls):
        t = c.out if unit.side == "output" else c.inp
        if t is None or not t.is_floating_point():
            raise UnsupportedModuleError(f"the {what} of module {unit.name!r} is not a floating-point tensor; it "
                                         "cannot be scored", f"its {what} is not a floating-point tensor")  # fmt: skip
        if is_folded(t, probe.examples):
            if not probe.folds.get((unit.name, i, unit.side)):
                raise UnsupportedModuleError(_fold_message(unit, what, t, probe.examples),
                                             f"{what} {tuple(t.shape)} mixes the batch into dim 0")  # fmt: skip
            folded = True
        elif t.dim() < 2 or t.shape[0] != probe.examples:
            raise UnsupportedModuleError(
                f"the {what} of module {unit.name!r} has shape {tuple(t.shape)}; scored tensors must be "
                f"[N, C, ...] or [N, ..., C] with the {probe.examples} examples of the batch in dim 0, or the "
                "batch folded into dim 0 by a reshape ([N * k, ..., C])",
                f"{what} {tuple(t.shape)} has no example dim",
            )
        channels.add(t.shape[channel_dim])
    if len(channels) != 1:
        raise UnsupportedModuleError(f"module {unit.name!r} has different channel counts per call: {sorted(channels)}",
                                     "different channel counts per call")  # fmt: skip
    width = channels.pop()
    if width % unit.channels_per_unit:
        raise ValueError(f"{unit.key!r} has {width} channels, which units of {unit.channels_per_unit} channels "
                         "do not divide")  # fmt: skip
    return width, folded


def _fold_message(unit: Unit, what: str, t, examples: int) -> str:
    if examples < 2:
        return (f"the {what} of module {unit.name!r} has shape {tuple(t.shape)}: the batch is folded into dim 0, "
                "and the first batch has one example, so the rows cannot be told apart by example; make the "
                "first batch at least 2 examples")  # fmt: skip
    return (
        f"the {what} of module {unit.name!r} has shape {tuple(t.shape)} for a batch of {examples}: dim 0 holds "
        "rows of several examples, but not as a reshape of [N, k, ...] (running each example alone did not give "
        "consecutive blocks of rows, or could not run), e.g. [T, N, C] or rows routed to experts; its rows cannot "
        "be assigned to examples. Score a module whose tensors keep the examples in dim 0, or leave it out of modules="
    )


def _experts_channels(unit: Unit, module: nn.Module, calls, probe: ProbeResult) -> int:
    """A Mixture-of-Experts experts module: ``experts * neurons`` units (engine/experts.py)."""
    state = experts.state_of(module)
    if state is None:
        raise UnsupportedModuleError(
            f"module {unit.name!r} is not a Mixture-of-Experts experts module of the layout rgprune_fast computes "
            "(3-D gate_up_proj/down_proj, gated, no bias; engine/experts.py); its expert neurons cannot be scored",
            "not a supported experts module",
        )
    if state.agrees is False:
        raise UnsupportedModuleError(
            f"module {unit.name!r}: rgprune_fast's experts forward did not reproduce the module's own output on "
            "the probe batch, so it would score a different network; leave it out of modules=",
            "its experts forward could not be reproduced",
        )
    for i, c in enumerate(calls):
        rows = c.inp.shape[0] if c.inp is not None and c.inp.dim() == 2 else None
        if rows is None or (rows != probe.examples and not probe.folds.get((unit.name, i, "input"))):
            shape = None if c.inp is None else tuple(c.inp.shape)
            raise UnsupportedModuleError(
                f"the experts of module {unit.name!r} take tokens of shape {shape}; rgprune_fast needs the batch's "
                "tokens as rows [N * T, H] in example order to know each token's example",
                "its token rows cannot be assigned to examples",
            )
    count, width = experts.neurons(module)
    return count * width


def _kind(unit: Unit, module: nn.Module, calls, probe: ProbeResult) -> tuple[str, list[nn.Module]]:
    if unit.side == "input":
        if any(probe.input_modified_later(c) for c in calls):
            raise UnsupportedModuleError(f"the input of module {unit.name!r} is modified in place after the module "
                                         "read it; its input units cannot be scored exactly",
                                         "its input is modified in place after it")  # fmt: skip
        return "input", []
    if module_rules.uses_running_stats(module) and not any(probe.input_modified_later(c) for c in calls):
        return "batchnorm", []
    relus = [probe.relu_consumer(c) for c in calls]
    if all(r is not None for r in relus):
        unique = []
        for r in relus:
            if all(r.module is not u for u in unique):
                unique.append(r.module)
        return "relu", unique
    if not any(probe.output_modified_later(c) for c in calls):
        return "generic", []
    raise UnsupportedModuleError(
        f"the output of module {unit.name!r} is modified in place by a later operation that is neither a "
        "ReLU/ReLU6/LeakyReLU module it alone feeds nor an activation that can run out of place (e.g. "
        "`out += identity`, an in-place ELU or a functional in-place op), so its pristine value is gone by "
        "backward. rgprune_fast keeps no copies of activations: make that operation out-of-place, or leave "
        "the module out of modules=",
        "its output is modified in place later",
    )


def _molchanov_weights(unit: Unit, module: nn.Module, probe: ProbeResult, model: nn.Module):
    if unit.side == "experts":
        weights, source = [(module.down_proj, (0, 2))], unit.name  # reads neuron i of expert e: [e, :, i]
    elif unit.side == "input":
        weights, source = module_rules.input_molchanov_weights(module), unit.name
    else:
        source = unit.name
        if not module_rules.is_producer(module):
            producer = probe.producer_of(unit.name)
            if producer is not None:
                source = producer
        owner = model.get_submodule(source)
        rule = module_rules.rule_for(owner)
        weights = rule.molchanov_weights(owner) if rule.molchanov_weights is not None else []
    if not weights:
        raise UnsupportedModuleError(
            f"method 'molchanov_group' needs the weights of the units of {unit.key!r}, but neither a producing "
            "Conv/Linear nor per-unit affine weights were found",
            "no Molchanov weights found",
        )
    return weights, source


def _reachable(unit: Unit, calls, probe: ProbeResult) -> bool:
    tensors = [c.out if unit.side in ("output", "experts") else c.inp for c in calls]  # experts: their output
    return any(edge_key(edge_of(t)) in probe.consumers for t in tensors if t is not None and t.grad_fn is not None)


def plan_taps(model: nn.Module, probe: ProbeResult, units: Sequence[Unit] | None, molchanov: bool) -> list[TapPlan]:
    """One :class:`TapPlan` per scored unit spec, in ``named_modules()`` order; ``molchanov``: find each
    unit's weights ``W_c`` too (``molchanov_group``).

    The default selection's contract: every unit it returns is exact; a module it cannot score exactly
    is left out, and all of them are named in one :class:`~rgprune_fast.errors.SkippedUnitsWarning`.
    A module named in ``modules=`` that cannot be scored raises instead."""
    explicit = units is not None
    units = default_units(model, probe) if units is None else list(units)
    if not units:
        raise ValueError(
            "the model has no scorable module: the default scores transformer MLP neurons and attention heads, "
            "else BatchNorm layers and Conv/Linear layers not followed by a BatchNorm (never the layers "
            "producing the output); pass modules= to choose"
        )
    plans, skipped = [], []
    for unit in units:
        try:
            plans.append(_plan(model, probe, unit, molchanov, explicit))
        except UnsupportedModuleError as error:
            if explicit:
                raise
            skipped.append((unit.key, error.reason, error))
    if skipped and not plans:
        others = f" The other {len(skipped) - 1}: " + ", ".join(repr(k) for k, *_ in skipped[1:]) if skipped[1:] else ""
        raise UnsupportedModuleError(
            f"no module of the default selection can be scored exactly. {skipped[0][2]}.{others}", skipped[0][1]
        )
    if skipped:
        warnings.warn(
            f"rgprune_fast left {len(skipped)} module(s) out of the default selection, as they cannot be scored "
            "exactly: " + "; ".join(f"{k!r} ({why})" for k, why, _ in skipped) + ". Name one in modules= for details",
            SkippedUnitsWarning,
            stacklevel=2,
        )
    return plans


def _plan(model: nn.Module, probe: ProbeResult, unit: Unit, molchanov: bool, explicit: bool) -> TapPlan:
    module = model.get_submodule(unit.name)
    calls = probe.calls.get(unit.name)
    if not calls:
        how = "named in modules=" if explicit else "selected"
        raise ValueError(f"module {unit.name!r} ({how}) was not called in the forward pass, so it has no statistics")
    if not all(c.grad_enabled for c in calls):
        raise UnsupportedModuleError(NO_GRAD_MESSAGE.format(key=unit.key), "it runs with gradients disabled")
    channel_dim = module_rules.rule_for(module).channel_dim if unit.side == "output" else -1
    if unit.side == "experts":
        channels, folded, kind, relu_modules = _experts_channels(unit, module, calls, probe), False, "experts", []
    else:
        channels, folded = _channels(unit, calls, channel_dim, probe)
        kind, relu_modules = _kind(unit, module, calls, probe)
    weights, source = _molchanov_weights(unit, module, probe, model) if molchanov else ([], "")
    for param, dim in weights:
        along = math.prod(param.shape[d] for d in dim) if isinstance(dim, tuple) else param.shape[dim]
        if along != channels:
            raise UnsupportedModuleError(
                f"molchanov_group: weight of {source!r} has {along} units in dim {dim}, "
                f"{unit.key!r} has {channels} channels",
                "its Molchanov weights do not match its channels",
            )
    reachable = _reachable(unit, calls, probe)
    if not reachable and not explicit:
        raise UnsupportedModuleError(f"module {unit.name!r} does not reach the model output",
                                     "its output never reaches the model output: every score would be 0")  # fmt: skip
    fused, fused_modules = fused_inputs.fused_source(model, unit.name, calls, probe) if kind == "input" else ("", [])
    return TapPlan(unit, module, kind, channel_dim, channels, reachable, relu_modules, weights, source,
                   folded, fused, fused_modules)  # fmt: skip
