"""The naive hook implementation (docs/design.md, "The naive baseline"): the baseline and a second oracle.

Written the way a competent user writes it today (as in NVlabs/Taylor_pruning and the papers' code):
forward hooks copy each scored module's output, because in-place ops downstream (``out += identity``,
``ReLU(inplace=True)``) would otherwise overwrite it. The copy goes downstream and the untouched
original is kept (the same cost as keeping a ``.detach().clone()``, but also right when the output is a
view, where a tensor hook registered before an in-place write is never called); a tensor hook on the
original multiplies it by its gradient and reduces with ordinary torch ops, and each batch runs
``output.backward(g)`` with parameter gradients on. Same arguments, set-up, criteria and module selection as
:func:`rgprune_fast.score`; ``.grad``, ``requires_grad`` and training flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..backends.contract import stat_dtype
from ..backends.torch_ref import TorchBackend
from ..criteria import DEFAULT_METHOD, UnitStatistics, finish, parse_methods
from ..engine.gradients import OutputGradient, check_gradient, output_and_gradient
from ..engine.interrupts import interrupt_safe, interruptible
from ..engine.progress import progress_bar
from ..engine.session import prepare, session
from ..errors import UnsupportedModuleError


@interrupt_safe
def score(
    model: nn.Module,
    data: Any,
    *,
    method: str | Sequence[str] = DEFAULT_METHOD,
    gradient="random",
    normalize: bool = True,
    seed: int = 0,
    modules=None,
    max_batches: int | None = None,
    progress: bool = False,
):
    """Same contract and result as :func:`rgprune_fast.score`, computed the naive way."""
    criteria, single = parse_methods(method)
    check_gradient(gradient)
    target = prepare(model, seed=seed, modules=modules)
    output_gradient = OutputGradient(gradient, normalize, target.seed, target.device, shift=target.causal_lm)
    molchanov = any(c.needs_molchanov_weights for c in criteria)
    backend = TorchBackend()  # the criteria update in plain torch ops, as a user would write it
    with session(target, data, max_batches=max_batches, molchanov=molchanov) as run:
        routed = [plan.key for plan in run.plans if plan.kind == "experts"]
        if routed:
            raise UnsupportedModuleError(f"the naive scorer does not score Mixture-of-Experts neurons ({routed}); "
                                         "use rgprune_fast.score or leave them out of modules=")  # fmt: skip
        params = list(target.model.parameters())
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        rows = {plan.key: [] for plan in run.plans}
        stats = [UnitStatistics(plan.key, plan.channels, plan.unit.channels_per_unit, plan.molchanov_weights,
                                criteria, backend) for plan in run.plans]  # fmt: skip
        handles = []
        try:
            for plan in run.plans:
                handles.append(_install(plan, rows[plan.key]))
            for batch in progress_bar(run.batches, run.batches.total, progress, "naive"):
                output, g = output_and_gradient(batch.call(target.model), batch, output_gradient)
                interruptible(output.backward, g)
                grads = {p: p.grad for p in params}
                for plan, unit_stats in zip(run.plans, stats):
                    s = sum(rows[plan.key]) if rows[plan.key] else None
                    rows[plan.key].clear()
                    if s is not None and plan.folded and s.shape[0] != output.shape[0]:  # [N * k, C]: by example
                        s = s.view(output.shape[0], -1, s.shape[-1]).sum(1)
                    unit_stats.add_batch(batch.index, output.shape[0], s, stat_dtype(output.dtype), target.device,
                                         grads)  # fmt: skip
                for p in params:
                    p.grad = None
        finally:
            for h in handles:
                h.remove()
        results = finish(stats, criteria)
    return results[criteria[0].name] if single else results


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
