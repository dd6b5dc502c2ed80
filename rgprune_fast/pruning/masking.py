"""Keep-masks applied to a model removably (hooks), for every kind of unit key (see ``targets.py``).

* Output channels (``"name"``): the module's output is multiplied by the mask along its channel dim.
  Downstream layers then see exactly what they would see if the channel were removed, as long as what
  follows maps 0 to 0 (ReLU, pooling, a Conv/Linear's input): that is why a masked Conv-BN-ReLU chain
  computes the same function as the physically pruned one (tested against Torch-Pruning).
* Input channels (``"name:input"``: attention heads, MLP neurons): the module's input is multiplied by
  the mask, each entry over its unit's channels: the same function as removing those weight columns.
  A projection its parent applies through its weights (``nn.MultiheadAttention.out_proj``) is made to
  be called as a module while the masks are on, so the hook fires (engine/handlers.py).
* Experts (``"name:experts"``): the experts module runs the engine's per-expert forward with each
  expert's neurons multiplied by their masks; its first call is checked against the module's own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..engine import experts, module_rules
from ..engine.handlers import _calling_forward, functional_projection
from ..engine.interrupts import interrupt_safe, interruptible
from ..engine.model_state import override_forward
from ..errors import UnsupportedModuleError
from .ranking import Masks
from .targets import Target, check_unit_size, expand, resolve, static_width


def _channel_dim(module: nn.Module) -> int:
    return module_rules.rule_for(module).channel_dim


def checked_masks(model: nn.Module, keep: Masks) -> list[tuple[Target, torch.Tensor]]:
    """Every entry of ``keep`` resolved against ``model`` and checked (before anything changes)."""
    if not isinstance(keep, dict):
        raise ValueError("masks must be a {key: 1-D bool tensor} dict, as returned by masks()")
    found = []
    for key, mask in keep.items():
        target = resolve(model, key)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(f"masks[{key!r}] must be a 1-D bool tensor (True = keep)")
        width = static_width(target)
        if width is not None:
            if target.side == "experts" and mask.numel() != width:
                raise ValueError(f"masks[{key!r}] has {mask.numel()} entries but {target.name!r} has {width} neurons")
            check_unit_size(model, key, mask.numel(), width, f"masks[{key!r}]")
        found.append((target, mask))
    return found


class MaskHandle:
    """What :func:`apply_masks` installed; ``remove()`` (or leaving the ``with``) undoes it."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _output_hook(key: str, mask: torch.Tensor, dim: int):
    def hook(module: nn.Module, args, out):
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModuleError(f"cannot mask {key!r}: the module returns {type(out).__name__}")
        channels = out.shape[dim]
        if channels != mask.numel():
            raise ValueError(f"masks[{key!r}] has {mask.numel()} entries but the module outputs {channels} channels")
        shape = [1] * out.dim()
        shape[dim] = channels
        return out * mask.to(device=out.device, dtype=out.dtype).view(shape)

    return hook


def _input_hook(key: str, mask: torch.Tensor):
    def hook(module: nn.Module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            raise UnsupportedModuleError(f"cannot mask {key!r}: the module's first argument is not a tensor")
        x = args[0]
        channels = expand(mask, x.shape[-1], f"masks[{key!r}]").to(device=x.device, dtype=x.dtype)
        return (x * channels, *args[1:])

    return hook


def _experts_forward(key: str, mask: torch.Tensor):
    def intercept(expert: int, h: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
        per_expert = h.shape[-1]
        return h * mask[expert * per_expert : (expert + 1) * per_expert].to(device=h.device, dtype=h.dtype)

    def forward(module, *args, **kwargs):
        if not module._rgprune_mask_agrees:  # once per apply_masks: unmasked, against the class's forward
            check = experts.ExpertsState()
            with torch.no_grad():
                experts._forward(module, *args, **kwargs, state=check)
            if not check.agrees:
                raise UnsupportedModuleError(
                    f"cannot mask {key!r}: the experts module computes something else than the per-expert "
                    "forward masks use (another gate, biases or layout)"
                )
            module._rgprune_mask_agrees = True
        return experts._forward(module, *args, **kwargs, state=experts.ExpertsState(intercept=intercept, agrees=True))

    return forward


def _install(target: Target, mask: torch.Tensor, model: nn.Module) -> Callable[[], None]:
    """Install the mask of one target; returns its undo."""
    module = target.module
    if target.side == "output":
        return module.register_forward_hook(_output_hook(target.key, mask, _channel_dim(module))).remove
    if target.side == "input":
        undo = [module.register_forward_pre_hook(_input_hook(target.key, mask)).remove]
        parent_name, _, child = target.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if functional_projection(parent) == child:
            if "forward" in parent.__dict__:
                raise UnsupportedModuleError(
                    f"cannot mask {target.key!r}: {parent_name!r} applies it through its weights and has a "
                    "forward of its own already; use bake_masks()"
                )
            undo.append(override_forward(parent, _calling_forward(child, type(parent).forward)))
        return lambda: [u() for u in reversed(undo)]
    if "forward" in module.__dict__:
        raise UnsupportedModuleError(f"cannot mask {target.key!r}: the module has a forward of its own already")
    module._rgprune_mask_agrees = None
    restore = override_forward(module, _experts_forward(target.key, mask))

    def undo():
        restore()
        module.__dict__.pop("_rgprune_mask_agrees", None)

    return undo


@interrupt_safe
def apply_masks(model: nn.Module, keep: Masks) -> MaskHandle:
    """Remove the masked units from ``model``'s computation (hooks), until ``handle.remove()``.

    ``keep`` is ``{key: bool tensor}`` (True = keep) as :func:`~rgprune_fast.pruning.masks` returns:
    output channels, ``:input`` units (heads, neurons) and ``:experts`` neurons. Usable as a context
    manager: ``with apply_masks(model, m): evaluate(model)``. Every entry is checked before anything is
    installed; on any error (or Ctrl-C) what was installed so far is removed.
    """
    planned = checked_masks(model, keep)
    handle = MaskHandle()
    try:
        for target, mask in planned:
            handle._undo.append(_install(target, mask, model))
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
