"""Model size: parameters, and multiply-accumulates (MACs) of one example's forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..engine.batching import as_batch
from ..engine.model_state import preserved


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    per_example = out[0].numel() if out.dim() else out.numel()
    if isinstance(module, _ConvNd):
        weight = module.weight  # [out, in/groups, *k] (transposed: [in, out/groups, *k])
        fan_in = weight[0].numel() if not module.transposed else weight.shape[0] // module.groups * weight[0, 0].numel()
        return per_example * fan_in
    if isinstance(module, nn.Linear):
        return per_example * module.in_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of the Conv and Linear layers (the usual count; norms and activations excluded) for the
    first example of ``example_inputs`` (a batch as ``rg.score`` accepts it), in eval mode."""
    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            total += _macs(module, args[0], out[:1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    try:
        with preserved(model):
            model.eval()
            batch = as_batch(example_inputs, 0)
            batch.call(model)
    finally:
        for h in handles:
            h.remove()
    return total
