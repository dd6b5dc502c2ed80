"""``rgprune_fast.score``: the Taylor criteria of every unit of a network in one pass over the data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn

from ..backends import select_backend
from ..backends.contract import stat_dtype
from ..criteria import DEFAULT_METHOD, parse_methods
from ..engine.batching import Batch
from ..engine.gradients import GradientSpec, OutputGradient, check_gradient, output_and_gradient
from ..engine.interrupts import interrupt_safe, interruptible
from ..engine.model_state import requires_grad
from ..engine.progress import progress_bar
from ..engine.session import prepare, session
from ..taps import TapSet
from ..units import Unit

Scores = dict[str, torch.Tensor]
ModuleSpec = Union[str, type, nn.Module, Unit]


@interrupt_safe
def score(
    model: nn.Module,
    data: Any,
    *,
    method: str | Sequence[str] = DEFAULT_METHOD,
    gradient: GradientSpec = "random",
    normalize: bool = True,
    seed: int = 0,
    modules: ModuleSpec | Sequence[ModuleSpec] | None = None,
    max_batches: int | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> Scores | dict[str, Scores]:
    """Score every unit (channel / neuron) of the scored modules of ``model`` over ``data``.

    Args:
        model: the network; scored in eval mode and left exactly as found (training flags,
            ``requires_grad``, ``.grad``, buffers; no hooks), also when this raises.
        data: one batch, or an iterable of batches (DataLoader, list, generator). A batch is a tensor,
            a tuple/list ``(inputs, targets, ...)`` or a dict of model keyword arguments (targets under
            ``"labels"``); it is moved to the model's device.
        method: one of ``rgprune_fast.METHODS`` (``taylorfo``, ``taylorfo_abs``, ``taylorfo_sq``,
            ``molchanov_bn``, ``molchanov_group``), or a list of them: all computed in one pass.
        gradient: ``"random"`` (N(0, 1), label-free), ``"label"`` (cross-entropy against the targets)
            or a callable ``(output, batch) -> tensor`` shaped like the output.
        normalize: scale each output vector of the gradient to unit L2 norm.
        seed: seed of the random gradient's generator.
        modules: names, module types, modules or :class:`Unit` specs to score; default: transformer
            MLP neurons and attention heads, else every BatchNorm and every Conv/Linear whose output
            does not go straight into a BatchNorm, except the output layer.
        max_batches: stop after this many batches.
        backend: ``"auto"`` or an explicit reduction backend (``"torch"``, ``"cpp"``, ``"cuda"``,
            ``"triton"``; see ``rgprune_fast.backends``).
        progress: show a progress bar (tqdm if installed).

    Returns:
        ``{module_name: float32 CPU tensor [units]}`` in ``named_modules()`` order (float64 for a
        float64 model), or ``{method: {...}}`` when ``method`` is a list.
    """
    criteria, single = parse_methods(method)
    check_gradient(gradient)
    target = prepare(model, seed=seed, modules=modules)
    backend_impl = select_backend(backend, target.device)
    output_gradient = OutputGradient(gradient, normalize, target.seed, target.device, shift=target.causal_lm)
    molchanov = any(c.needs_molchanov_weights for c in criteria)
    with session(target, data, max_batches=max_batches, molchanov=molchanov) as run:
        taps = TapSet(run.plans, backend_impl, criteria, target.device)
        # Parameters frozen, except the Molchanov weights: backward stops at the first taps
        with (
            requires_grad(target.model.parameters(), False),
            requires_grad(taps.weight_params, True),
            taps.installed(),
        ):
            for batch in progress_bar(run.batches, run.batches.total, progress):
                _score_batch(target.model, batch, taps, output_gradient)
        results = taps.results(criteria)
    return results[criteria[0].name] if single else results


def _score_batch(model: nn.Module, batch: Batch, taps: TapSet, output_gradient: OutputGradient) -> None:
    taps.begin_batch(batch.examples or 0)
    with torch.enable_grad():
        output, g = output_and_gradient(batch.call(model), batch, output_gradient)
        taps.check_forward(batch.index)
        taps.check_examples(batch.index, batch.examples, output.shape[0])
        if not output.requires_grad:
            raise RuntimeError(f"batch {batch.index}: the model output does not depend on any scored module")
        inputs = taps.anchors + taps.weight_params
        grads = interruptible(torch.autograd.grad, output, inputs, g, allow_unused=True)
    taps.end_batch(batch.index, output.shape[0], stat_dtype(output.dtype), grads[len(taps.anchors) :])
