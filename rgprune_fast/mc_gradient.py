"""Monte-Carlo gradient importance (Sándor, Pável & Csató 2022), on the same units as the Taylor
criteria.

Each unit u gets a keep probability ``theta_u = sigmoid(phi_u)``, learned by maximising the expected
score of the network when units are switched off at random. The choices (the paper is only available
as an abstract; issue #8 fixes the rest):

* **Frozen weights, eval mode.** Only ``phi`` is learned; every forward runs under ``no_grad``.
* **Start high**: ``phi = logit(theta0)`` with ``theta0 = 0.9``, so that early samples switch off few
  units and the utility signal is informative.
* **K masks per step, one batched forward.** ``m_k ~ Bernoulli(theta)`` for ``k < K``; the step's batch
  is replicated K times along dim 0 and a forward hook multiplies every sample's channels by its own
  mask (the same units, channel dims and input/output sides as the Taylor taps).
* **Score** ``S_k``: accuracy of the masked network against the labels (``gradient="label"``), or,
  label-free (``gradient="random"``, the default), agreement of its argmax with the unmasked network's.
  For sequence outputs the mean is over tokens (targets ``-100`` ignored).
* **Utility** ``u_k``: centred ranks of ``S_k`` among the K samples (ties share their mean rank), in
  ``[-1/2, 1/2]``: invariant to the score's scale, robust to outliers (as in natural evolution
  strategies).
* **REINFORCE**: ``phi += lr * mean_k u_k (m_k - theta)``, the score-function gradient of
  ``log Bernoulli(m; sigmoid(phi))`` w.r.t. ``phi``, with the centred ranks as baseline-free utilities.
* **Pressure** toward the target keep ratio: ``phi -= lr * pressure * (mean(theta) - keep)`` for every
  unit (the mean over all units of all modules), so units compete: the pressure lowers all of them
  until ``keep`` of them, on average, are kept; the utility term keeps up those that matter.
* **keep = 0.9 by default**: each sampled mask then switches off about 10 % of the units, so the
  masked networks still classify and their scores say which units matter. With 0.5, every sample of
  the demo's trained ResNet-8 (MNIST) was near chance, the utilities were noise, and pruning by the
  resulting ranking kept 16 % mean accuracy over the pruning levels against 74 % with 0.9 (same budget).
  The ranking, not the keep ratio, is what pruning uses: units below ``keep`` still come out ordered.
* **Deterministic**: masks come from a ``torch.Generator`` seeded with ``seed`` on the model's device.

Cost: each step is one forward of ``K * N`` examples plus one unmasked forward of ``N`` (label-free);
no backward pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import batches as batching
from .errors import EmptyDataError
from .gradients import IGNORE_INDEX, shift_targets
from .progress import progress_bar
from .selection import TapPlan

DEFAULTS = {"samples": 16, "steps": 100, "lr": 1.0, "keep": 0.9, "pressure": 1.0, "theta0": 0.9}


def centred_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks of ``scores`` (ties: their mean rank) mapped to ``[-1/2, 1/2]``; zeros for one sample."""
    k = scores.numel()
    if k == 1:
        return torch.zeros_like(scores)
    order = scores.argsort(stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(k, dtype=scores.dtype, device=scores.device)
    for value in scores.unique():  # ties share the mean of their ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return ranks / (k - 1) - 0.5


def replicate(batch: batching.Batch, k: int, n: int) -> batching.Batch:
    """The batch repeated ``k`` times along dim 0 (every tensor whose dim 0 is the batch size ``n``)."""

    def rep(obj):
        if isinstance(obj, torch.Tensor):
            return obj.repeat(k, *([1] * (obj.dim() - 1))) if obj.dim() and obj.shape[0] == n else obj
        if isinstance(obj, dict):
            return {key: rep(v) for key, v in obj.items()}
        if isinstance(obj, (tuple, list)):
            return type(obj)(rep(v) for v in obj)
        return obj

    return batching.Batch(batch.raw, rep(batch.args), rep(batch.kwargs), None)


def _broadcast(mask: torch.Tensor, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``mask`` ``[B, C]`` shaped to multiply ``t`` ``[B, ...]`` along its channel dim."""
    dim = channel_dim if channel_dim >= 0 else t.dim() + channel_dim
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = t.shape[dim]
    return mask.to(t.dtype).view(shape)


@contextmanager
def sample_masks(plans: Sequence[TapPlan], masks: dict[str, torch.Tensor]):
    """While active, every sample of a forward has its own channel mask: ``masks[key]`` is
    ``[batch, channels]``, applied to the unit's output (forward hook) or input (pre-hook)."""
    handles = []

    def output_hook(plan):
        def hook(module, args, out):
            return out * _broadcast(masks[plan.key], out, plan.channel_dim)

        return hook

    def input_hook(plan):
        def hook(module, args):
            return (args[0] * _broadcast(masks[plan.key], args[0], -1), *args[1:])

        return hook

    try:
        for plan in plans:
            if plan.unit.side == "output":
                handles.append(plan.module.register_forward_hook(output_hook(plan)))
            else:
                handles.append(plan.module.register_forward_pre_hook(input_hook(plan)))
        yield
    finally:
        for h in handles:
            h.remove()


def sample_scores(logits: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """``S_k``: the share of the N examples' (or tokens') argmax predictions equal to ``reference``
    (targets or the unmasked predictions), for each of the K replicas."""
    pred = logits.argmax(-1).view(k, *reference.shape)
    valid = (reference != IGNORE_INDEX).expand_as(pred)
    hits = (pred == reference) & valid
    return hits.flatten(1).sum(1).to(torch.float32) / valid.flatten(1).sum(1).clamp(min=1)


def _options(options: dict) -> dict:
    unknown = set(options) - set(DEFAULTS) - {"on_step"}
    if unknown:
        raise TypeError(f"unknown mc_gradient options {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    for name in ("samples", "steps"):
        if not isinstance(opts[name], int) or isinstance(opts[name], bool) or opts[name] < 1:
            raise ValueError(f"mc_gradient: {name} must be a positive int, got {opts[name]!r}")
    for name in ("keep", "theta0"):
        if not 0.0 < float(opts[name]) < 1.0:
            raise ValueError(f"mc_gradient: {name} must lie in (0, 1), got {opts[name]!r}")
    for name in ("lr", "pressure"):
        if not float(opts[name]) >= 0.0 or not math.isfinite(float(opts[name])):
            raise ValueError(f"mc_gradient: {name} must be a finite number >= 0, got {opts[name]!r}")
    if opts.get("on_step") is not None and not callable(opts["on_step"]):
        raise TypeError(f"mc_gradient: on_step must be callable, got {type(opts['on_step']).__name__}")
    return opts


def batch_stream(data: Any, max_batches: int | None, device: torch.device) -> Iterator[batching.Batch]:
    """The batches of ``data`` over and over: re-iterated each pass when ``data`` can be (a list, a
    DataLoader), cached (as given, on its own device) on the first pass when it is a one-pass iterator."""
    cache = None if not isinstance(data, Iterator) else []
    for epoch in itertools.count():
        source = iter(cache) if cache is not None and epoch else batching.iterate(data, max_batches)
        empty = True
        for index, raw in enumerate(source):
            empty = False
            if cache is not None and not epoch:
                cache.append(raw)
            yield batching.split_batch(batching.to_device(raw, device), index)
        if empty:
            raise EmptyDataError("data yielded no batch; score() needs at least one batch")


def learn_keep_probabilities(
    model: nn.Module,
    batches: Iterator[batching.Batch],
    plans: Sequence[TapPlan],
    *,
    gradient: Any,
    seed: int,
    device: torch.device,
    progress: bool,
    shift: bool,
    **options,
) -> dict[str, torch.Tensor]:
    """``{key: theta [units]}`` (float32 CPU): the learned keep probabilities. ``shift``: causal-LM
    labels (position t is scored against target t + 1)."""
    opts = _options(options)
    k = opts["samples"]
    generator = torch.Generator(device=device).manual_seed(seed)
    start = math.log(opts["theta0"] / (1 - opts["theta0"]))
    phi = {p.key: torch.full((p.units,), start, device=device) for p in plans}
    with torch.no_grad():
        for step in progress_bar(range(1, opts["steps"] + 1), opts["steps"], progress, "mc_gradient"):
            batch = next(batches)
            if gradient == "label":
                reference = _targets(batch, shift).to(device)
            else:
                reference = batching.logits_of(batch.call(model)).argmax(-1)
            n = reference.shape[0]
            theta = {key: torch.sigmoid(v) for key, v in phi.items()}
            drawn = {key: torch.bernoulli(t.expand(k, -1), generator=generator) for key, t in theta.items()}
            per_sample = {p.key: drawn[p.key].repeat_interleave(p.unit.group, dim=1).repeat_interleave(n, dim=0)
                          for p in plans}  # fmt: skip
            with sample_masks(plans, per_sample):
                logits = batching.logits_of(replicate(batch, k, n).call(model))
            utility = centred_ranks(sample_scores(logits, reference, k))
            mean_theta = torch.cat(list(theta.values())).mean()
            for key in phi:
                estimate = (utility[:, None] * (drawn[key] - theta[key])).mean(0)
                phi[key] += opts["lr"] * (estimate - opts["pressure"] * (mean_theta - opts["keep"]))
            if opts.get("on_step") is not None:
                opts["on_step"](step, _keep_probabilities(phi))
    return _keep_probabilities(phi)


def _keep_probabilities(phi: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.sigmoid(v).float().cpu() for key, v in phi.items()}


def _targets(batch: batching.Batch, shift: bool) -> torch.Tensor:
    if not isinstance(batch.targets, torch.Tensor):
        raise ValueError(
            "method 'mc_gradient' with gradient='label' needs targets in every batch; use gradient='random' "
            "for the label-free score (agreement with the unmasked network)"
        )
    return shift_targets(batch.targets) if shift else batch.targets
