"""What a masks (or scores) key points at: the module, the side of it whose channels are the units, and
how many channels one unit covers.

* ``"name"``: the module's output channels (its channel dim), one unit per channel.
* ``"name:input"``: the module's input channels (last dim). A mask with ``k`` entries over a ``W``-wide
  input gives each entry ``W / k`` contiguous channels (an attention head: ``head_dim`` channels).
* ``"name:experts"``: the neurons of every expert of a Mixture-of-Experts module, expert-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine import experts
from ..engine.transformer_units import _in_features, head_size, unit_kind
from ..errors import UnsupportedModuleError
from ..units import split_key


@dataclass(frozen=True)
class Target:
    key: str
    name: str
    side: str  # "output" | "input" | "experts"
    module: nn.Module


def resolve(model: nn.Module, key: str, what: str = "masks") -> Target:
    """The module behind ``key``; ``ValueError`` naming it when the model has no such module."""
    if not isinstance(key, str):
        raise TypeError(f"{what} keys must be module names (str), got {type(key).__name__}")
    name, side = split_key(key)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the {what} name module {name!r}, which is not in the model") from None
    if side == "experts" and not experts.is_routed_experts(module):
        raise UnsupportedModuleError(f"{key!r}: {name!r} ({type(module).__name__}) is not a routed-experts module")
    return Target(key, name, side, module)


def input_width(module: nn.Module) -> int | None:
    """Input channels of a Linear / GPT-2 Conv1D / MultiheadAttention projection, read from its weight;
    ``None`` for other modules (their width is seen in a forward pass)."""
    return _in_features(module)


def static_width(target: Target) -> int | None:
    """Channels behind ``target`` known without running the model (``None``: run it to see)."""
    if target.side == "experts":
        count, per_expert = experts.neurons(target.module)
        return count * per_expert
    if target.side == "input":
        return input_width(target.module)
    return None


def unit_size(key: str, units: int, channels: int) -> int:
    """Channels per unit when ``units`` entries cover ``channels``; ``ValueError`` if they do not fit."""
    if units <= 0 or channels % units:
        raise ValueError(
            f"{key!r} has {units} entries, which do not split the module's {channels} channels into equal units"
        )
    return channels // units


def check_unit_size(model: nn.Module, key: str, units: int, channels: int, what: str) -> int:
    """:func:`unit_size`, and for attention heads, whole heads per entry (masks or scores made for another
    width, e.g. before the heads were pruned, would otherwise cut the channels into half heads without an
    error)."""
    size = unit_size(what, units, channels)
    if unit_kind(key) == "heads":
        name = split_key(key)[0]
        head = head_size(model, name, channels)
        if head is not None and size % head:
            raise ValueError(
                f"{what} has {units} entries: {size} channels each, not whole heads of {head} channels of {key!r}"
            )
    return size


def expand(mask: torch.Tensor, channels: int, key: str) -> torch.Tensor:
    """A per-unit mask as a per-channel one (each unit's channels are contiguous)."""
    return mask.repeat_interleave(unit_size(key, mask.numel(), channels))
