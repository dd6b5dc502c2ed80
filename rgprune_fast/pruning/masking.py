"""Keep-masks applied to a model, either removably (forward hooks) or baked into the weights.

Masking zeroes a scored module's output channels (the pre-activations ``score`` measured). Downstream
layers then see exactly what they would see if the channel were removed, as long as what follows maps
0 to 0 (ReLU, pooling, a Conv/Linear's input): that is why a masked Conv-BN-ReLU chain computes the
same function as the physically pruned one (tested against Torch-Pruning).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..engine import module_rules
from ..engine.batching import as_batch
from ..engine.interrupts import interrupt_safe, interruptible
from ..engine.model_state import preserved
from ..errors import UnsupportedModuleError
from .ranking import Masks, Scores, check_scores


def _channel_dim(module: nn.Module) -> int:
    return module_rules.rule_for(module).channel_dim


def _masked_modules(model: nn.Module, keep: Masks) -> list[tuple[str, nn.Module, torch.Tensor]]:
    found = []
    for name, mask in keep.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the masks name module {name!r}, which is not in the model") from None
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(f"masks[{name!r}] must be a 1-D bool tensor (True = keep)")
        found.append((name, module, mask))
    return found


class MaskHandle:
    """The hooks installed by :func:`apply_masks`; ``remove()`` (or leaving the ``with``) undoes them."""

    def __init__(self, handles: list) -> None:
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _mask_hook(name: str, mask: torch.Tensor, dim: int):
    def hook(module: nn.Module, args, out):
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModuleError(f"cannot mask module {name!r}: it returns {type(out).__name__}")
        channels = out.shape[dim]
        if channels != mask.numel():
            raise ValueError(f"masks[{name!r}] has {mask.numel()} entries but the module outputs {channels} channels")
        shape = [1] * out.dim()
        shape[dim] = channels
        return out * mask.to(device=out.device, dtype=out.dtype).view(shape)

    return hook


@interrupt_safe
def apply_masks(model: nn.Module, keep: Masks) -> MaskHandle:
    """Zero the masked channels of each module's output (forward hooks), until ``handle.remove()``.

    Usable as a context manager: ``with apply_masks(model, m): evaluate(model)``. Every entry is checked
    before any hook is added; on any error (or Ctrl-C) the hooks added so far are removed.
    """
    masked_modules = _masked_modules(model, keep)
    handle = MaskHandle([])
    try:
        for name, module, mask in masked_modules:
            handle._handles.append(module.register_forward_hook(_mask_hook(name, mask, _channel_dim(module))))
        interruptible(lambda: None)  # a Ctrl-C that waited arrives here, while the hooks can still be removed
    except BaseException:
        handle.remove()
        raise
    return handle


@contextmanager
def masked(model: nn.Module, keep: Masks) -> Iterator[nn.Module]:
    """``with masked(model, keep): ...`` runs ``model`` with the masks applied."""
    handle = apply_masks(model, keep)
    try:
        yield model
    finally:
        handle.remove()


def _baked_params(name: str, module: nn.Module, mask: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """The ``(parameter, channel dim)`` pairs whose masked channels :func:`bake_masks` zeroes, checked
    against ``mask``; raises naming ``name`` for a module it cannot bake or a mask that does not fit."""
    if isinstance(module, _ConvTransposeNd):
        if module.groups != 1:
            raise UnsupportedModuleError(f"cannot bake masks into grouped ConvTranspose {name!r}")
        params = [(module.weight, 1), (module.bias, 0)]
    elif isinstance(module, (_ConvNd, nn.Linear)):
        params = [(module.weight, 0), (module.bias, 0)]
    elif isinstance(module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
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
    params = [(p, dim) for p, dim in params if p is not None]
    for param, dim in params:
        if param.shape[dim] != mask.numel():
            raise ValueError(f"masks[{name!r}] has {mask.numel()} entries but {name!r} has {param.shape[dim]} channels")
    return params


@interrupt_safe
@torch.no_grad()
def bake_masks(model: nn.Module, keep: Masks) -> None:
    """Make the masks permanent by zeroing weights, so that masked channels output exactly 0.

    BatchNorm and 1-D-affine normalisation layers: weight and bias of the channel (``0·x̂ + 0``).
    Conv/Linear: the channel's weights and bias. Anything else raises
    :class:`~rgprune_fast.errors.UnsupportedModuleError` naming it (use :func:`apply_masks`).
    All or nothing: every entry is checked before any weight changes, and Ctrl-C waits for the end.
    """
    planned = [
        (param, dim, (~mask).nonzero().view(-1).to(param.device))
        for name, module, mask in _masked_modules(model, keep)
        for param, dim in _baked_params(name, module, mask)
    ]
    for param, dim, dropped in planned:
        param.index_fill_(dim, dropped, 0.0)


@interrupt_safe
@torch.no_grad()
def output_channels(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, int]:
    """Channels of each named module's output in one eval-mode forward of ``example_inputs``."""
    found: dict[str, int] = {}
    named = []
    for name in names:
        try:
            named.append((name, model.get_submodule(name)))
        except AttributeError:
            raise ValueError(f"the scores name module {name!r}, which is not in the model") from None

    def hook(module, args, out, name):
        if isinstance(out, torch.Tensor) and out.dim() >= 1:
            found[name] = out.shape[_channel_dim(module)]

    handles = []
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(functools.partial(hook, name=name)))
        with preserved(model):  # every module's training flag back as it was, not model.train(flag)
            model.eval()
            as_batch(example_inputs, 0).call(model)
    finally:
        for h in handles:
            h.remove()
    return found


def check_scores_fit(model: nn.Module, scores: Scores, example_inputs: Any) -> None:
    """Raise ``ValueError`` naming the first module whose scores do not match the model's channels."""
    checked = check_scores(scores)
    channels = output_channels(model, list(checked), example_inputs)
    for name, s in checked.items():
        if name not in channels:
            raise ValueError(f"module {name!r} of the scores is not called by the model's forward pass")
        if channels[name] != s.numel():
            raise ValueError(
                f"the scores of module {name!r} have {s.numel()} channels but the model's module outputs "
                f"{channels[name]}: the scores were computed for a different model"
            )
