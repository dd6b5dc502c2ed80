"""``rgprune_fast.score``: importance of every unit of a network in one pass over the data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, Union

import torch
from torch import nn

from . import batches as batching
from . import mc_gradient
from .backends import select_backend
from .criteria import MC_METHOD, WEIGHT_METHODS, parse_methods
from .distributed import process_group_active
from .gradients import GradientSpec, OutputGradient, check_gradient, check_seed
from .model_state import activate_checkpointing, check_materialized, model_device, preserved, requires_grad, unwrap
from .probe import PROBE_EXAMPLES, run_probe
from .progress import progress_bar
from .selection import plan_taps, resolve_units
from .taps import TapSet
from .transformer_units import is_causal_lm
from .units import Unit

Scores = dict[str, torch.Tensor]
ModuleSpec = Union[str, type, nn.Module, Unit]


def score(
    model: nn.Module,
    data: Any,
    *,
    method: str | Sequence[str] = "taylorfo_sq",
    gradient: GradientSpec = "random",
    normalize: bool = True,
    seed: int = 0,
    modules: ModuleSpec | Sequence[ModuleSpec] | None = None,
    max_batches: int | None = None,
    backend: str = "auto",
    progress: bool = False,
    samples: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    keep: float | None = None,
    pressure: float | None = None,
    on_step: Callable[[int, Scores], None] | None = None,
) -> Scores | dict[str, Scores]:
    """Score every unit (channel / neuron) of the scored modules of ``model`` over ``data``.

    Args:
        model: the network; scored in eval mode and left exactly as found (training flags,
            ``requires_grad``, ``.grad``, buffers; no hooks), also when this raises.
        data: one batch, or an iterable of batches (DataLoader, list, generator). A batch is a tensor,
            a tuple/list ``(inputs, targets, ...)`` or a dict of model keyword arguments (targets under
            ``"labels"``); it is moved to the model's device.
        method: one of ``taylorfo``, ``taylorfo_abs``, ``taylorfo_sq``, ``molchanov_bn``,
            ``molchanov_group``, or a list of them (all computed in one pass); or ``mc_gradient``
            (alone): Monte-Carlo keep probabilities (``rgprune_fast.mc_gradient``).
        gradient: ``"random"`` (N(0, 1), label-free), ``"label"`` (cross-entropy against the targets)
            or a callable ``(output, batch) -> tensor`` shaped like the output.
        normalize: scale each output vector of the gradient to unit L2 norm.
        seed: seed of the random gradient's generator.
        modules: names, module types, modules or :class:`Unit` specs to score; default: transformer
            MLP neurons and attention heads, else every BatchNorm and every Conv/Linear whose output
            does not go straight into a BatchNorm, except the output layer.
        max_batches: stop after this many batches.
        backend: ``"auto"`` or an explicit reduction backend (``"torch"``; see ``rgprune_fast.backends``).
        progress: show a progress bar (tqdm if installed).
        samples, steps, lr, keep, pressure: ``mc_gradient`` only (defaults in
            ``rgprune_fast.mc_gradient.DEFAULTS``): masks per step, steps, learning rate, target keep
            ratio, strength of the pull toward it.
        on_step: ``mc_gradient`` only: called after every step as ``on_step(step, theta)`` (step
            counts from 1; ``theta`` as returned at the end), to watch convergence or keep snapshots:
            ``theta`` after step s is exactly what ``steps=s`` returns.

    Returns:
        ``{module_name: float32 CPU tensor [C]}`` in ``named_modules()`` order (float64 for a float64
        model), or ``{method: {...}}`` when ``method`` is a list.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    check_materialized(model)
    methods, single = parse_methods(method)
    mc_options = {"samples": samples, "steps": steps, "lr": lr, "keep": keep, "pressure": pressure, "on_step": on_step}
    if MC_METHOD in methods:
        return _score_mc(model, data, methods, single, gradient, seed, modules, max_batches, progress, mc_options)
    if any(v is not None for v in mc_options.values()):
        raise TypeError(f"samples/steps/lr/keep/pressure/on_step are options of method {MC_METHOD!r} only")
    check_gradient(gradient)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("score() needs autograd, but it was called inside torch.inference_mode()")
    device = model_device(model)
    backend_impl = select_backend(backend, device)
    check_seed(seed)
    rank_seed = seed + (torch.distributed.get_rank() if process_group_active() else 0)  # ranks draw apart
    output_gradient = OutputGradient(gradient, normalize, rank_seed, device, shift=is_causal_lm(model))
    units = resolve_units(model, modules)
    first, raw_batches = batching.first_and_rest(data, max_batches)
    total = batching.length(data, max_batches)
    need_group = any(m in WEIGHT_METHODS for m in methods)

    with preserved(model):
        model.eval()
        activate_checkpointing(model)
        first_batch = batching.split_batch(batching.to_device(first, device), 0)
        probe = run_probe(model, batching.head(first_batch, PROBE_EXAMPLES))
        plans = plan_taps(model, probe, units, need_group)
        del probe
        taps = TapSet(plans, backend_impl, methods, device)
        with requires_grad(model.parameters(), False), requires_grad(taps.group_params, True), taps.installed():
            batches = chain(
                [first_batch],
                (batching.split_batch(batching.to_device(b, device), i) for i, b in enumerate(raw_batches, 1)),
            )
            for index, batch in enumerate(progress_bar(batches, total, progress)):
                _score_batch(model, batch, index, taps, output_gradient)
        results = taps.results(methods)
    return results[methods[0]] if single else results


def _score_mc(model, data, methods, single, gradient, seed, modules, max_batches, progress, options):
    """``method="mc_gradient"``: keep probabilities learned by Monte-Carlo gradient estimation."""
    if len(methods) > 1:
        raise ValueError(f"method {MC_METHOD!r} cannot be combined with other methods in one call")
    if gradient not in ("label", "random"):
        raise ValueError(f"method {MC_METHOD!r} scores accuracy against labels (gradient='label') or agreement "
                         f"with the unmasked network (gradient='random'); got gradient={gradient!r}")  # fmt: skip
    check_seed(seed)
    device = model_device(model)
    units = resolve_units(model, modules)
    batches = mc_gradient.batch_stream(data, max_batches, device)
    first = next(batches)
    with preserved(model):
        model.eval()
        plans = plan_taps(model, run_probe(model, batching.head(first, PROBE_EXAMPLES)), units, need_group=False)
        with requires_grad(model.parameters(), False):
            theta = mc_gradient.learn_keep_probabilities(
                model, chain([first], batches), plans, gradient=gradient, seed=seed, device=device,
                progress=progress, shift=is_causal_lm(model), **options,
            )  # fmt: skip
    return theta if single else {MC_METHOD: theta}


def _score_batch(model: nn.Module, batch: batching.Batch, index: int, taps: TapSet, output_gradient) -> None:
    taps.begin_batch()
    with torch.enable_grad():
        output = batching.logits_of(batch.call(model))
        taps.check_forward(index)
        g = output_gradient(output, batch.targets, batch.raw)
        if not output.requires_grad:
            raise RuntimeError(f"batch {index}: the model output does not depend on any scored module")
        inputs = taps.anchors + taps.group_params
        grads = torch.autograd.grad(output, inputs, g, allow_unused=True)
    taps.end_batch(index, output.shape[0], _stat_dtype(output), grads[len(taps.anchors) :])


def _stat_dtype(output: torch.Tensor) -> torch.dtype:
    return torch.float64 if output.dtype == torch.float64 else torch.float32
