"""The naive hook implementation (DESIGN.md section 5): the baseline and a second oracle.

Written the way a competent user writes it today (as in NVlabs/Taylor_pruning and the papers' code):
forward hooks copy each scored module's output, because in-place ops downstream (``out += identity``,
``ReLU(inplace=True)``) would otherwise overwrite it. The copy goes downstream and the untouched
original is kept (the same cost as keeping a ``.detach().clone()``, but also right when the output is a
view, where a tensor hook registered before an in-place write is never called); a tensor hook on the
original multiplies it by its gradient and reduces with ordinary torch ops, and each batch runs
``output.backward(g)`` with parameter gradients on. Same arguments, criteria and module selection as
:func:`rgprune_fast.score`; ``.grad``, ``requires_grad`` and training flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import batches as batching
from .criteria import WEIGHT_METHODS, ChannelAccumulator, parse_methods, weight_group_term
from .gradients import OutputGradient
from .model_state import model_device, preserved, unwrap
from .probe import PROBE_EXAMPLES, run_probe
from .progress import progress_bar
from .selection import plan_taps, resolve_units
from .transformer_units import is_causal_lm


def score(
    model: nn.Module,
    data: Any,
    *,
    method: str | Sequence[str] = "taylorfo_sq",
    gradient="random",
    normalize: bool = True,
    seed: int = 0,
    modules=None,
    max_batches: int | None = None,
    progress: bool = False,
):
    """Same contract and result as :func:`rgprune_fast.score`, computed the naive way."""
    methods, single = parse_methods(method)
    model = unwrap(model)
    device = model_device(model)
    output_gradient = OutputGradient(gradient, normalize, seed, device, shift=is_causal_lm(model))
    units = resolve_units(model, modules)
    first, raw = batching.first_and_rest(data, max_batches)
    need_group = any(m in WEIGHT_METHODS for m in methods)
    with preserved(model):
        model.eval()
        first_batch = batching.split_batch(batching.to_device(first, device), 0)
        plans = plan_taps(model, run_probe(model, batching.head(first_batch, PROBE_EXAMPLES)), units, need_group)
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        stats = {plan.key: [] for plan in plans}
        accs = {}
        handles = [_install(plan, stats[plan.key]) for plan in plans]
        try:
            batches = [first_batch] if first is not None else []
            stream = (batching.split_batch(batching.to_device(b, device), i) for i, b in enumerate(raw, 1))
            for index, batch in enumerate(progress_bar(_chain(batches, stream), None, progress, "naive")):
                output = batching.logits_of(batch.call(model))
                output.backward(output_gradient(output, batch.targets, batch.raw))
                for plan in plans:
                    rows = stats[plan.key]
                    s = sum(rows) if rows else torch.zeros(output.shape[0], plan.channels, device=device)
                    rows.clear()
                    group = None
                    if plan.weight_group:
                        grads = [
                            (p, p.grad if p.grad is not None else torch.zeros_like(p), d) for p, d in plan.weight_group
                        ]
                        group = weight_group_term(grads, s.dtype)
                    if plan.unit.group > 1:
                        s = s.view(s.shape[0], -1, plan.unit.group).sum(-1)
                        group = None if group is None else group.view(-1, plan.unit.group).sum(-1)
                    if plan.key not in accs:
                        accs[plan.key] = ChannelAccumulator(plan.units, methods, device, s.dtype)
                    accs[plan.key].update(s, index, group)
                for p in params:
                    p.grad = None
        finally:
            for h in handles:
                h.remove()
    results = {m: {key: accs[key].result(m).cpu() for key in stats} for m in methods}
    return results[methods[0]] if single else results


def _reduce_into(rows: list, kept: torch.Tensor, channel_dim: int):
    """A tensor hook: ``sum over positions of kept * grad`` per (example, channel), appended to ``rows``."""
    cdim = 1 if channel_dim == 1 else kept.dim() - 1
    dims = [d for d in range(1, kept.dim()) if d != cdim]

    def grad_hook(grad):
        prod = kept.float() * grad.float() if kept.dtype != torch.float64 else kept * grad
        rows.append(prod.sum(dims) if dims else prod)

    return grad_hook


def _install(plan, rows: list):
    """Hooks that copy the scored tensor: the copy goes on, the untouched original is kept and reduced."""
    if plan.unit.side == "input":

        def pre_hook(module, args):
            copy = args[0].clone()  # the module's own input: its gradient through this module only
            copy.register_hook(_reduce_into(rows, args[0].detach(), plan.channel_dim))
            return (copy, *args[1:])

        return plan.module.register_forward_pre_hook(pre_hook)

    def hook(module, args, out):
        out.register_hook(_reduce_into(rows, out.detach(), plan.channel_dim))
        return out.clone()

    return plan.module.register_forward_hook(hook)


def _chain(first, rest):
    yield from first
    yield from rest
