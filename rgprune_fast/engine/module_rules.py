"""Module type -> how its units are laid out, whether the default selection scores it, and which
weights belong to each of its units (``molchanov_group``'s ``W_c``).

The first matching entry (``isinstance``) wins; any other module falls back to ``FALLBACK``: units on
the last dim, no Molchanov weights. Extend with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

# Molchanov's W_c for every unit c at once: (parameter, the dim of that parameter that indexes c)
MolchanovWeights = list[tuple[nn.Parameter, int]]


@dataclass(frozen=True)
class ModuleRule:
    channel_dim: int  # 1 ([N, C, *spatial]) or -1 (last dim: [N, C], [N, T, C])
    default: bool  # scored when modules=None (subject to the rules in planning.py)
    molchanov_weights: Callable[[nn.Module], MolchanovWeights] | None  # W_c of its output units


def _params(*pairs: tuple[torch.Tensor | None, int]) -> MolchanovWeights:
    return [(p, d) for p, d in pairs if isinstance(p, nn.Parameter)]


def _affine(m: nn.Module) -> MolchanovWeights:
    weight = getattr(m, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.dim() != 1:
        return []  # e.g. LayerNorm over several dims: no per-unit vector
    return _params((weight, 0), (getattr(m, "bias", None), 0))


def _conv(m: nn.Module) -> MolchanovWeights:
    if isinstance(m, _ConvTransposeNd):
        if m.groups != 1:
            return []  # units are spread over convolution groups; not supported
        return _params((m.weight, 1), (m.bias, 0))
    return _params((m.weight, 0), (m.bias, 0))


def _linear(m: nn.Module) -> MolchanovWeights:
    return _params((m.weight, 0), (m.bias, 0))


def _hf_conv1d(m: nn.Module) -> MolchanovWeights:
    return _params((m.weight, 1), (m.bias, 0))  # transformers' Conv1D: a Linear with weight [in, out]


def is_hf_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def input_molchanov_weights(module: nn.Module) -> MolchanovWeights:
    """The weights that read input channel ``c`` (``W_c`` of an input unit)."""
    if isinstance(module, nn.Linear):
        return _params((module.weight, 1))
    if isinstance(module, _ConvNd) and not isinstance(module, _ConvTransposeNd) and module.groups == 1:
        return _params((module.weight, 1))
    if is_hf_conv1d(module):
        return _params((module.weight, 0))
    return []


_RULES: list[tuple[type, ModuleRule]] = [
    (_BatchNorm, ModuleRule(1, True, _affine)),
    (_ConvNd, ModuleRule(1, True, _conv)),
    (nn.Linear, ModuleRule(-1, True, _linear)),
    (nn.GroupNorm, ModuleRule(1, False, _affine)),
    (_InstanceNorm, ModuleRule(1, False, _affine)),
    (nn.LayerNorm, ModuleRule(-1, False, _affine)),
]
FALLBACK = ModuleRule(-1, False, None)
PRODUCERS = (_ConvNd, nn.Linear)  # what "the Conv/Linear that produces channel c" may be


def register(module_type: type, rule: ModuleRule) -> None:
    """Add (or override) the rule for ``module_type``; it takes precedence over existing entries."""
    _RULES.insert(0, (module_type, rule))


HF_CONV1D = ModuleRule(-1, True, _hf_conv1d)


def rule_for(module: nn.Module) -> ModuleRule:
    for module_type, rule in _RULES:
        if isinstance(module, module_type):
            return rule
    return HF_CONV1D if is_hf_conv1d(module) else FALLBACK


def is_producer(module: nn.Module) -> bool:
    """A Conv/Linear (or transformers' Conv1D): what "the Conv/Linear that produces channel c" may be."""
    return isinstance(module, PRODUCERS) or is_hf_conv1d(module)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


# The forwards the ``batchnorm`` tap may replace: in eval mode exactly ``F.batch_norm`` with running stats.
# A subclass with its own forward (timm's BatchNormAct2d adds an activation) keeps its forward.
PLAIN_BATCHNORM_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)


def uses_running_stats(module: nn.Module) -> bool:
    """A BatchNorm whose forward, in eval mode, is exactly ``(z - running_mean) * scale + shift``."""
    return (
        is_batchnorm(module)
        and type(module).forward in PLAIN_BATCHNORM_FORWARDS
        and module.track_running_stats
        and module.running_mean is not None
    )
