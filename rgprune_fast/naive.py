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
from .errors import EmptyDataError
from .gradients import OutputGradient
from .model_state import model_device, preserved
from .probe import PROBE_EXAMPLES, run_probe
from .progress import progress_bar
from .selection import plan_taps, resolve_names


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
    device = model_device(model)
    output_gradient = OutputGradient(gradient, normalize, seed, device)
    names = resolve_names(model, modules)
    raw = batching.iterate(data, max_batches)
    first = next(raw, None)
    if first is None:
        raise EmptyDataError("data yielded no batch")
    need_group = any(m in WEIGHT_METHODS for m in methods)
    with preserved(model):
        model.eval()
        first_batch = batching.split_batch(batching.to_device(first, device), 0)
        plans = plan_taps(model, run_probe(model, batching.head(first_batch, PROBE_EXAMPLES)), names, need_group)
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        stats = {plan.name: [] for plan in plans}
        accs = {}

        def forward_hook(name, channel_dim):
            def hook(module, args, out):
                kept = out.detach()
                cdim = 1 if channel_dim == 1 else out.dim() - 1
                dims = [d for d in range(1, out.dim()) if d != cdim]

                def grad_hook(grad):
                    prod = kept.float() * grad.float() if kept.dtype != torch.float64 else kept * grad
                    stats[name].append(prod.sum(dims) if dims else prod)

                out.register_hook(grad_hook)
                return out.clone()

            return hook

        handles = [plan.module.register_forward_hook(forward_hook(plan.name, plan.channel_dim)) for plan in plans]
        try:
            batches = [first_batch] if first is not None else []
            stream = (batching.split_batch(batching.to_device(b, device), i) for i, b in enumerate(raw, 1))
            for index, batch in enumerate(progress_bar(_chain(batches, stream), None, progress, "naive")):
                output = batching.logits_of(batch.call(model))
                output.backward(output_gradient(output, batch.targets, batch.raw))
                for plan in plans:
                    s = (
                        sum(stats[plan.name])
                        if stats[plan.name]
                        else torch.zeros(output.shape[0], plan.channels, device=device)
                    )
                    stats[plan.name].clear()
                    group = None
                    if plan.weight_group:
                        group = weight_group_term(
                            [
                                (p, p.grad if p.grad is not None else torch.zeros_like(p), d)
                                for p, d in plan.weight_group
                            ],
                            s.dtype,
                        )
                    if plan.name not in accs:
                        accs[plan.name] = ChannelAccumulator(plan.channels, methods, device, s.dtype)
                    accs[plan.name].update(s, index, group)
                for p in params:
                    p.grad = None
        finally:
            for h in handles:
                h.remove()
    results = {m: {name: accs[name].result(m).cpu() for name in stats} for m in methods}
    return results[methods[0]] if single else results


def _chain(first, rest):
    yield from first
    yield from rest
