"""Masks made permanent: the masked units' weights set to zero, so the model computes what
:func:`~rgprune_fast.pruning.apply_masks` computes without any hook."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..engine.interrupts import interrupt_safe
from ..errors import UnsupportedModuleError
from .masking import checked_masks
from .ranking import Masks
from .targets import Target, expand, input_width

_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _output_params(target: Target) -> list[tuple[torch.Tensor, int]]:
    """``(parameter, channel dim)`` pairs whose zeroed channels make the output channels exactly 0."""
    module, name = target.module, target.name
    if isinstance(module, _ConvTransposeNd):
        if module.groups != 1:
            raise UnsupportedModuleError(f"cannot bake masks into grouped ConvTranspose {name!r}")
        params = [(module.weight, 1), (module.bias, 0)]
    elif isinstance(module, (_ConvNd, nn.Linear)):
        params = [(module.weight, 0), (module.bias, 0)]
    elif isinstance(module, _NORMS):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
            raise UnsupportedModuleError(
                f"cannot bake masks into {name!r}: it has no per-channel affine weight; use apply_masks()"
            )
        params = [(weight, 0), (getattr(module, "bias", None), 0)]
    else:
        raise UnsupportedModuleError(
            f"cannot bake masks into {name!r} ({type(module).__name__}); use apply_masks() instead"
        )
    return [(p, dim) for p, dim in params if p is not None]


def _input_params(target: Target) -> list[tuple[torch.Tensor, int]]:
    """The weight columns that read the input channels (biases stay: a removed input does not touch them)."""
    module = target.module
    if isinstance(module, nn.Linear):
        return [(module.weight, 1)]
    if type(module).__name__ == "Conv1D" and input_width(module) is not None:  # GPT-2: weight is [in, out]
        return [(module.weight, 0)]
    raise UnsupportedModuleError(
        f"cannot bake input masks into {target.name!r} ({type(module).__name__}); use apply_masks() instead"
    )


def _planned(target: Target, mask: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """``(parameter, index)`` pairs to zero for one mask, checked against the parameters' shapes."""
    if target.side == "experts":  # down_proj [E, H, I]: unit e * I + i reads column i of expert e
        down = target.module.down_proj
        dropped = (~mask).nonzero().view(-1).to(down.device)
        per_expert = down.shape[2]
        return [(down, (dropped // per_expert, slice(None), dropped % per_expert))]
    params = _output_params(target) if target.side == "output" else _input_params(target)
    planned = []
    for param, dim in params:
        channels = param.shape[dim]
        per_channel = expand(mask, channels, f"masks[{target.key!r}]") if target.side == "input" else mask
        if per_channel.numel() != channels:
            raise ValueError(
                f"masks[{target.key!r}] has {mask.numel()} entries but {target.name!r} has {channels} channels"
            )
        index = [slice(None)] * param.dim()
        index[dim] = (~per_channel).nonzero().view(-1).to(param.device)
        planned.append((param, tuple(index)))
    return planned


@interrupt_safe
@torch.no_grad()
def bake_masks(model: nn.Module, keep: Masks) -> None:
    """Make the masks permanent by zeroing weights, so that masked units contribute exactly 0.

    Output channels: BatchNorm and 1-D-affine normalisation layers get weight and bias 0 (``0·x̂ + 0``),
    Conv/Linear their channel's weights and bias. Input units (``:input``: heads, neurons): the
    Linear / GPT-2 Conv1D weight columns that read them. Experts (``:experts``): the neuron's column of
    its expert's down projection. Anything else raises
    :class:`~rgprune_fast.errors.UnsupportedModuleError` naming it (use :func:`apply_masks`).
    All or nothing: every entry is checked before any weight changes, and Ctrl-C waits for the end.
    """
    planned = [item for target, mask in checked_masks(model, keep) for item in _planned(target, mask)]
    for param, index in planned:
        param[index] = 0.0
