"""Which modules are scored, and which tap each one gets (the "plan").

Default selection (``modules=None``): every BatchNorm, and every Conv/Linear whose output does not go
straight into a BatchNorm, that is called in the forward pass; never the module whose output (or a
view of it) is the model's output. ``modules=`` takes names, module types or module objects instead.

Tap kinds, in order of preference (DESIGN.md section 3, "no stored activations"):

* ``batchnorm``: a BatchNorm using running statistics. Its forward is replaced by one that keeps only
  the BN input ``z`` (which autograd keeps anyway) and computes ``s`` from ``z`` and ``dy``.
* ``relu``: the output's only differentiable consumer is a ReLU/ReLU6 module; the statistic is
  computed from the ReLU output ``r`` (kept anyway) inside a fused ReLU backward.
* ``generic``: the output is handed on unchanged and referenced (not copied) for backward. Only
  possible when nothing modifies it in place later; otherwise scoring raises
  :class:`~rgprune_fast.errors.UnsupportedModuleError` naming the module.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import registry
from .errors import UnsupportedModuleError
from .probe import ProbeResult


@dataclass
class TapPlan:
    name: str
    module: nn.Module
    kind: str  # "batchnorm" | "relu" | "generic"
    channel_dim: int  # 1 or -1
    channels: int
    relu_modules: list[nn.Module] = field(default_factory=list)  # kind == "relu": the consuming ReLUs
    weight_group: registry.WeightGroup = field(default_factory=list)  # molchanov_group weights
    group_source: str = ""  # the module the weight group belongs to


def resolve_names(model: nn.Module, modules: Any) -> list[str] | None:
    """``modules=`` as module names in ``named_modules()`` order; ``None`` means the default rule."""
    if modules is None:
        return None
    specs = list(modules) if isinstance(modules, (list, tuple, set)) else [modules]
    if not specs:
        raise ValueError("modules= is empty; pass names, module types or modules, or None for the default")
    named = list(model.named_modules())
    by_name = dict(named)
    wanted: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            if spec not in by_name or spec == "":
                close = difflib.get_close_matches(spec, [n for n in by_name if n], n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"modules= names {spec!r}, which is not a submodule of the model{hint}")
            wanted.add(spec)
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            found = {n for n, m in named if n and isinstance(m, spec)}
            if not found:
                raise ValueError(f"modules= names the type {spec.__name__}, but the model has no such module")
            wanted |= found
        elif isinstance(spec, nn.Module):
            found = [n for n, m in named if m is spec and n]
            if not found:
                raise ValueError(f"modules= holds a {type(spec).__name__} that is not a submodule of the model")
            wanted.add(found[0])
        else:
            raise TypeError(f"modules= entries must be names, module types or modules; got {type(spec).__name__}")
    return [n for n, _ in named if n in wanted]


def default_names(model: nn.Module, probe: ProbeResult) -> list[str]:
    names = []
    for name, module in model.named_modules():
        rule = registry.rule_for(module)
        if not name or not rule.default or name not in probe.calls or probe.produces_output(name):
            continue
        if isinstance(module, registry.PRODUCERS) and probe.feeds_batchnorm(name):
            continue
        names.append(name)
    return names


def _channels(plan_name: str, calls, channel_dim: int, examples: int) -> int:
    channels = set()
    for c in calls:
        out = c.out
        if out is None:
            raise UnsupportedModuleError(f"module {plan_name!r} does not return a tensor; it cannot be scored")
        if out.dim() < 2 or out.shape[0] != examples:
            raise UnsupportedModuleError(
                f"module {plan_name!r} returns shape {tuple(out.shape)}; a scored module's output must be "
                f"[N, C, ...] or [N, ..., C] with the {examples} examples of the batch in dim 0"
            )
        channels.add(out.shape[channel_dim])
    if len(channels) != 1:
        raise UnsupportedModuleError(
            f"module {plan_name!r} returns different channel counts per call: {sorted(channels)}"
        )
    return channels.pop()


def _kind(name: str, module: nn.Module, calls, probe: ProbeResult) -> tuple[str, list[nn.Module]]:
    if registry.uses_running_stats(module) and not any(probe.input_modified_later(c) for c in calls):
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
        f"the output of module {name!r} is modified in place by a later operation that is not a ReLU/ReLU6 "
        "module it alone feeds (e.g. `out += identity` or a functional in-place op), so its pristine value "
        "is gone by backward. rgprune_fast keeps no copies of activations: make that operation out-of-place, "
        "or leave the module out of modules="
    )


def _weight_group(
    name: str, module: nn.Module, probe: ProbeResult, model: nn.Module
) -> tuple[registry.WeightGroup, str]:
    source = name
    if not isinstance(module, registry.PRODUCERS):
        producer = probe.producer_of(name)
        if producer is not None:
            source = producer
    owner = model.get_submodule(source)
    rule = registry.rule_for(owner)
    group = rule.weight_group(owner) if rule.weight_group is not None else []
    if not group:
        raise UnsupportedModuleError(
            f"method 'molchanov_group' needs the weights that produce the units of module {name!r}, but "
            f"neither a producing Conv/Linear nor per-unit affine weights were found"
        )
    return group, source


def plan_taps(model: nn.Module, probe: ProbeResult, names: Sequence[str] | None, need_group: bool) -> list[TapPlan]:
    """One :class:`TapPlan` per scored module, in ``named_modules()`` order."""
    explicit = names is not None
    names = default_names(model, probe) if names is None else list(names)
    if not names:
        raise ValueError(
            "the model has no scorable module: the default scores BatchNorm layers and Conv/Linear layers "
            "not followed by a BatchNorm (never the layer producing the output); pass modules= to choose"
        )
    plans = []
    for name in names:
        module = model.get_submodule(name)
        calls = probe.calls.get(name)
        if not calls:
            how = "named in modules=" if explicit else "selected"
            raise ValueError(f"module {name!r} ({how}) was not called in the forward pass, so it has no statistics")
        rule = registry.rule_for(module)
        channels = _channels(name, calls, rule.channel_dim, probe.examples)
        kind, relu_modules = _kind(name, module, calls, probe)
        group, source = _weight_group(name, module, probe, model) if need_group else ([], "")
        for param, dim in group:
            if param.shape[dim] != channels:
                raise UnsupportedModuleError(
                    f"molchanov_group: weight of {source!r} has {param.shape[dim]} units in dim {dim}, "
                    f"module {name!r} has {channels} channels"
                )
        plans.append(TapPlan(name, module, kind, rule.channel_dim, channels, relu_modules, group, source))
    return plans
