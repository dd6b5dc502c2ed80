"""Which units are scored, and which tap each gets (the "plan").

Default selection (``modules=None``): for transformer models, the MLP neurons and attention heads of
``transformer_units.py``; otherwise every BatchNorm, and every Conv/Linear whose output does not go
straight into a BatchNorm, that is called in the forward pass, never the module whose output (or a view
of it) is the model's output. ``modules=`` takes names, module types, module objects or
:class:`~rgprune_fast.units.Unit` specs instead.

Tap kinds, in order of preference (no stored activations: docs/design.md, "How the taps work"):

* ``batchnorm``: a BatchNorm using running statistics. Its forward is replaced by one that keeps only
  the BN input ``z`` (which autograd keeps anyway) and computes ``s`` from ``z`` and ``dy``.
* ``relu``: the output's only differentiable consumer is a ReLU/ReLU6 module; the statistic is
  computed from the ReLU output ``r`` (kept anyway) inside a fused ReLU backward.
* ``generic``: the output is handed on unchanged and referenced (not copied) for backward. Only
  possible when nothing modifies it in place later; otherwise scoring raises
  :class:`~rgprune_fast.errors.UnsupportedModuleError` naming the module.
* ``input``: input units: the module's first input is handed to it through a generic tap.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UnsupportedModuleError
from ..units import Unit
from . import module_rules
from .probe import ProbeResult, edge_key, edge_of
from .transformer_units import transformer_units

NO_GRAD_MESSAGE = (
    "module {key!r} runs with gradients disabled inside the model's forward (torch.no_grad, or reentrant "
    "gradient checkpointing: use use_reentrant=False), so its units get no gradient to score"
)


@dataclass
class TapPlan:
    unit: Unit
    module: nn.Module
    kind: str  # "batchnorm" | "relu" | "generic" | "input"
    channel_dim: int  # 1 or -1
    channels: int  # before summing channels into units
    reachable: bool  # the probe saw a gradient path from the model output to these channels
    relu_modules: list[nn.Module] = field(default_factory=list)  # kind == "relu": the consuming ReLUs
    molchanov_weights: module_rules.MolchanovWeights = field(default_factory=list)  # W_c (molchanov_group)
    molchanov_source: str = ""  # the module those weights belong to

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
    transformer = [u for u in transformer_units(model) if u.name in probe.calls]
    if transformer:
        return transformer
    units = []
    for name, module in model.named_modules():
        rule = module_rules.rule_for(module)
        if not name or not rule.default or name not in probe.calls or probe.produces_output(name):
            continue
        if module_rules.is_producer(module) and probe.feeds_batchnorm(name):
            continue
        units.append(Unit(name))
    return units


def _channels(unit: Unit, calls, channel_dim: int, examples: int) -> int:
    channels = set()
    for c in calls:
        t = c.out if unit.side == "output" else c.inp
        what = "output" if unit.side == "output" else "first input"
        if t is None or not t.is_floating_point():
            raise UnsupportedModuleError(f"the {what} of module {unit.name!r} is not a floating-point tensor; "
                                         "it cannot be scored")  # fmt: skip
        if t.dim() < 2 or t.shape[0] != examples:
            raise UnsupportedModuleError(
                f"the {what} of module {unit.name!r} has shape {tuple(t.shape)}; scored tensors must be "
                f"[N, C, ...] or [N, ..., C] with the {examples} examples of the batch in dim 0"
            )
        channels.add(t.shape[channel_dim])
    if len(channels) != 1:
        raise UnsupportedModuleError(f"module {unit.name!r} has different channel counts per call: {sorted(channels)}")
    width = channels.pop()
    if width % unit.channels_per_unit:
        raise ValueError(f"{unit.key!r} has {width} channels, which units of {unit.channels_per_unit} channels "
                         "do not divide")  # fmt: skip
    return width


def _kind(unit: Unit, module: nn.Module, calls, probe: ProbeResult) -> tuple[str, list[nn.Module]]:
    if unit.side == "input":
        if any(probe.input_modified_later(c) for c in calls):
            raise UnsupportedModuleError(f"the input of module {unit.name!r} is modified in place after the module "
                                         "read it; its input units cannot be scored exactly")  # fmt: skip
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
        f"the output of module {unit.name!r} is modified in place by a later operation that is not a ReLU/ReLU6 "
        "module it alone feeds (e.g. `out += identity` or a functional in-place op), so its pristine value "
        "is gone by backward. rgprune_fast keeps no copies of activations: make that operation out-of-place, "
        "or leave the module out of modules="
    )


def _molchanov_weights(unit: Unit, module: nn.Module, probe: ProbeResult, model: nn.Module):
    if unit.side == "input":
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
            "Conv/Linear nor per-unit affine weights were found"
        )
    return weights, source


def _reachable(unit: Unit, calls, probe: ProbeResult) -> bool:
    tensors = [c.out if unit.side == "output" else c.inp for c in calls]
    return any(edge_key(edge_of(t)) in probe.consumers for t in tensors if t is not None and t.grad_fn is not None)


def plan_taps(model: nn.Module, probe: ProbeResult, units: Sequence[Unit] | None, molchanov: bool) -> list[TapPlan]:
    """One :class:`TapPlan` per scored unit spec, in ``named_modules()`` order; ``molchanov``: find each
    unit's weights ``W_c`` too (``molchanov_group``)."""
    explicit = units is not None
    units = default_units(model, probe) if units is None else list(units)
    if not units:
        raise ValueError(
            "the model has no scorable module: the default scores BatchNorm layers and Conv/Linear layers "
            "not followed by a BatchNorm (never the layer producing the output); pass modules= to choose"
        )
    plans = []
    for unit in units:
        module = model.get_submodule(unit.name)
        calls = probe.calls.get(unit.name)
        if not calls:
            how = "named in modules=" if explicit else "selected"
            raise ValueError(
                f"module {unit.name!r} ({how}) was not called in the forward pass, so it has no statistics"
            )
        if not all(c.grad_enabled for c in calls):
            raise UnsupportedModuleError(NO_GRAD_MESSAGE.format(key=unit.key))
        channel_dim = module_rules.rule_for(module).channel_dim if unit.side == "output" else -1
        channels = _channels(unit, calls, channel_dim, probe.examples)
        kind, relu_modules = _kind(unit, module, calls, probe)
        weights, source = _molchanov_weights(unit, module, probe, model) if molchanov else ([], "")
        for param, dim in weights:
            if param.shape[dim] != channels:
                raise UnsupportedModuleError(
                    f"molchanov_group: weight of {source!r} has {param.shape[dim]} units in dim {dim}, "
                    f"{unit.key!r} has {channels} channels"
                )
        plans.append(TapPlan(unit, module, kind, channel_dim, channels, _reachable(unit, calls, probe), relu_modules,
                             weights, source))  # fmt: skip
    return plans
