"""Modules that apply a child Linear through its weights (``F.linear(x, self.proj.weight)``) instead of
calling it, so no hook on the child ever fires: ``nn.MultiheadAttention`` (``out_proj``: torchvision's
ViT) and torchvision's Swin attention (``proj``). Their attention heads are the child's input.

For the duration of a scoring call (:func:`calling_projections`) such a module runs its own class's
``forward`` with a stand-in child whose weight is the identity and whose bias is zero, so the forward
returns the projection's input; the real child module is then called on it. Everything these forwards
do after the projection is a per-position identity in eval mode (reshapes, the reverse of the window
partition and shift, dropout), so the result is the same function; the cost is one matmul with the
identity. Only classes whose ``forward`` is exactly the listed one are handled.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .model_state import ForwardOverrides

# (module, class name) -> the child it applies functionally
_FUNCTIONAL_PROJECTIONS = {
    ("torch.nn.modules.activation", "MultiheadAttention"): "out_proj",
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"): "proj",
    ("torchvision.models.swin_transformer", "ShiftedWindowAttentionV2"): "proj",
}


def functional_projection(module: nn.Module) -> str | None:
    """The name of the child Linear that ``module`` applies through its weights, or ``None``."""
    cls = type(module)
    child = _FUNCTIONAL_PROJECTIONS.get((cls.__module__, cls.__name__))
    if child is None or sys.modules.get(cls.__module__) is None:
        return None
    if getattr(sys.modules[cls.__module__], cls.__name__, None) is not cls or "forward" not in cls.__dict__:
        return None  # a subclass or a look-alike: its forward is not the one this handler knows
    linear = getattr(module, child, None)
    # the child is called as a module: only a plain Linear computes what F.linear on its weights does
    return child if isinstance(linear, nn.Linear) and type(linear).forward is nn.Linear.forward else None


class _IdentityProjection(nn.Module):
    """What the class's forward sees in place of its projection: ``x @ I.T + 0 == x``."""

    def __init__(self, like: nn.Linear):
        super().__init__()
        width = like.in_features
        self.weight = torch.eye(width, dtype=like.weight.dtype, device=like.weight.device)
        self.bias = torch.zeros(width, dtype=like.weight.dtype, device=like.weight.device)


def _calling_forward(child: str, original):
    def forward(module, *args, **kwargs):
        real = module._modules[child]
        module._modules[child] = _IdentityProjection(real)
        try:
            out = original(module, *args, **kwargs)
        finally:
            module._modules[child] = real
        if isinstance(out, tuple):  # MultiheadAttention: (output, attention weights)
            return (real(out[0]), *out[1:])
        return real(out)

    return forward


@contextmanager
def calling_projections(model: nn.Module) -> Iterator[ForwardOverrides]:
    """Within: every handled module calls its projection as a module (its heads can be tapped; forward
    hooks on the projection now fire), until ``keep_only`` (after planning: only modules whose heads are
    scored keep it). A module with an instance-level forward of its own is left alone."""
    handled = ForwardOverrides()
    try:
        for module in model.modules():
            child = functional_projection(module)
            if child is not None and "forward" not in module.__dict__:
                handled.add(module, _calling_forward(child, type(module).forward))
        yield handled
    finally:
        handled.restore_all()
