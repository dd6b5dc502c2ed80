"""Mixture-of-Experts experts as units: one unit per neuron of every expert.

Hugging Face keeps a layer's experts in one module with 3-D weights (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``; the ``use_experts_implementation`` classes: Mixtral, Qwen-MoE, DeepSeek, ...)
and runs each expert on the tokens routed to it, so no per-expert module exists to hook. For the
duration of a scoring call (:func:`routing`) such a module runs :func:`_forward`, the eager algorithm of
those classes, which hands each expert's neurons ``h = act(gate) * up`` (the down projection's input)
to an ``intercept`` (the tap, or a mask) together with the rows of the tokens routed to that expert.
The tap maps a row to its example (``row // (rows / N)``: the layer's input folds ``[N, T, H]`` into
rows, which the structure probe verifies) and sums ``h * dh`` per example and neuron: ``s[n, e * I + i]``.

Its first call (the structure probe) is checked against the module's own forward on the same inputs;
a module whose output differs (another gate, biases, a transposed layout) is not scored, and, like every
experts module that is not scored, gets its own forward back right after planning.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model_state import ForwardOverrides

EXPERTS_DISPATCH = "transformers.integrations.moe"  # where use_experts_implementation's forward lives
AGREEMENT = 1e-4  # relative; the class's own forward may use grouped kernels that round differently

# intercept(expert, h, token rows, rows in the layer input) -> h (the tap's identity, or h * mask)
Intercept = Callable[[int, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class ExpertsState:
    intercept: Intercept | None = None
    agrees: bool | None = None  # this forward agreed with the class's own on the first call


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> stack of states (nested calls)


def is_routed_experts(module: nn.Module) -> bool:
    """A Hugging Face experts module of the layout :func:`_forward` computes."""
    forward = type(module).forward
    dispatching = getattr(forward, "__globals__", {}).get("__name__") == EXPERTS_DISPATCH and hasattr(
        forward, "__wrapped__"
    )  # the class's forward is transformers' dispatcher around its eager forward
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (
        dispatching
        and isinstance(gate_up, nn.Parameter)
        and isinstance(down, nn.Parameter)
        and gate_up.dim() == 3
        and down.dim() == 3
        and getattr(module, "has_gate", False) is True
        and getattr(module, "has_bias", True) is False
        and getattr(module, "is_transposed", True) is False
        and getattr(module, "is_concatenated", False) is True
        and getattr(module, "has_post_expert_norm", True) is False
        and isinstance(getattr(module, "num_experts", None), int)
        and gate_up.shape[0] == module.num_experts == down.shape[0]
        and gate_up.shape[1] == 2 * down.shape[2]
    )


def neurons(module: nn.Module) -> tuple[int, int]:
    """``(experts, neurons per expert)``."""
    return module.down_proj.shape[0], module.down_proj.shape[2]


def state_of(module: nn.Module) -> ExpertsState | None:
    """The state of ``module`` in the innermost active :func:`routing` (``None``: not routed)."""
    states = _STATES.get(module)
    return states[-1] if states else None


def agreement(dtype: torch.dtype) -> float:
    """How far (relative to the output's largest entry) this forward may differ from the class's own
    (grouped kernels, another summation order): a few units of the dtype's rounding."""
    return max(AGREEMENT, 8 * torch.finfo(dtype).eps)


def _forward(module, hidden_states, top_k_index, top_k_weights, *, state: ExpertsState):
    out = torch.zeros_like(hidden_states)
    rows = hidden_states.shape[0]
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index, num_classes=module.num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit[:, 0].tolist():
        if expert == module.num_experts:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert])
        h = module._apply_gate(F.linear(hidden_states[token_idx], module.gate_up_proj[expert]))
        if state.intercept is not None:
            h = state.intercept(expert, h, token_idx, rows)
        y = F.linear(h, module.down_proj[expert]) * top_k_weights[token_idx, top_k_pos, None]
        out.index_add_(0, token_idx, y.to(out.dtype))
    if state.agrees is None:
        with torch.no_grad():
            own = type(module).forward(module, hidden_states, top_k_index, top_k_weights)
        if own.shape != out.shape:
            state.agrees = False
        else:
            diff = (own - out.detach()).abs().max().item() if own.numel() else 0.0
            state.agrees = diff <= agreement(out.dtype) * (own.abs().max().item() if own.numel() else 0.0)
    return out


@contextmanager
def routing(model: nn.Module) -> Iterator[ForwardOverrides]:
    """Within: every routed-experts module runs :func:`_forward` (its own forward is restored on exit,
    or earlier through ``keep_only``: after planning, only scored experts that agreed with their class's
    forward keep it). A module with an instance-level forward of its own (a user's patch, accelerate's
    device hooks) is left alone."""
    routed = ForwardOverrides()
    try:
        for module in model.modules():
            if is_routed_experts(module) and "forward" not in module.__dict__:
                state = ExpertsState()
                _STATES.setdefault(module, []).append(state)
                routed.add(module, functools.partial(_forward, state=state), functools.partial(_pop, module, state))
        yield routed
    finally:
        routed.restore_all()


def _pop(module: nn.Module, state: ExpertsState) -> None:
    stack = _STATES.get(module, [])
    if stack and stack[-1] is state:
        stack.pop()
    if not stack:
        _STATES.pop(module, None)
