"""``rgprune_fast.mc_gradient``: Monte-Carlo gradient importance (Sándor, Pável & Csató 2022), on the
same units as the Taylor criteria.

Each unit u gets a keep probability ``theta_u = sigmoid(phi_u)``, learned by maximising the expected
score of the network when units are switched off at random. The choices (the paper is only available
as an abstract; these choices are ours):

* **Frozen weights, eval mode.** Only ``phi`` is learned; every forward runs under ``no_grad``.
* **Start high**: ``phi = logit(THETA0)`` with ``THETA0 = 0.9``, so that early samples switch off few
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

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..engine import experts
from ..engine.batching import Batch, replicate, scored_output
from ..engine.gradients import IGNORE_INDEX, shift_targets
from ..engine.model_state import requires_grad
from ..engine.planning import TapPlan
from ..engine.progress import progress_bar
from ..engine.session import prepare, session

THETA0 = 0.9  # every keep probability starts here
GRADIENTS = ("label", "random")


def score(
    model: nn.Module,
    data: Any,
    *,
    gradient: str = "random",
    samples: int = 16,
    steps: int = 100,
    lr: float = 1.0,
    keep: float = 0.9,
    pressure: float = 1.0,
    seed: int = 0,
    modules: Any = None,
    max_batches: int | None = None,
    progress: bool = False,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep probabilities of every unit, learned by Monte-Carlo gradient estimation (no backward pass).

    Args:
        model, data, seed, modules, max_batches, progress: as for :func:`rgprune_fast.score` (the same
            set-up and the same units); the data are cycled through for as many steps as asked.
        gradient: ``"random"`` (label-free: agreement with the unmasked network's predictions) or
            ``"label"`` (accuracy against the batches' targets).
        samples: masks drawn (and masked copies of the batch run) per step, K.
        steps: update steps, one batch each.
        lr: learning rate of the keep logits.
        keep: the mean keep probability the pressure pulls toward, in (0, 1).
        pressure: strength of that pull.
        on_step: called after every step as ``on_step(step, theta)`` (step counts from 1; ``theta`` as
            returned at the end): ``theta`` after step s is exactly what ``steps=s`` returns.

    Returns:
        ``{key: float32 CPU tensor [units]}`` keep probabilities, keys as :func:`rgprune_fast.score`'s.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"mc_gradient scores accuracy against labels (gradient='label') or agreement with the "
                         f"unmasked network (gradient='random'); got gradient={gradient!r}")  # fmt: skip
    for name, value in (("samples", samples), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"mc_gradient: {name} must be a positive int, got {value!r}")
    if not 0.0 < float(keep) < 1.0:
        raise ValueError(f"mc_gradient: keep must lie in (0, 1), got {keep!r}")
    for name, value in (("lr", lr), ("pressure", pressure)):
        if not float(value) >= 0.0 or not math.isfinite(float(value)):
            raise ValueError(f"mc_gradient: {name} must be a finite number >= 0, got {value!r}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"mc_gradient: on_step must be callable, got {type(on_step).__name__}")
    target = prepare(model, seed=seed, modules=modules)
    with (
        session(target, data, max_batches=max_batches, molchanov=False, cycle=True) as run,
        requires_grad(target.model.parameters(), False),
    ):
        return learn_keep_probabilities(
                target.model, iter(run.batches), run.plans, gradient=gradient, seed=target.seed,
                device=target.device, progress=progress, shift=target.causal_lm, samples=samples, steps=steps,
                lr=lr, keep=keep, pressure=pressure, on_step=on_step,
            )  # fmt: skip


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


def _broadcast(mask: torch.Tensor, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``mask`` ``[B, C]`` shaped to multiply ``t`` ``[B, ...]`` along its channel dim (a batch folded into
    dim 0, ``[B * k, ...]``, as the structure probe verified: each example's mask on its ``k`` rows)."""
    if t.shape[0] != mask.shape[0]:
        if t.shape[0] % mask.shape[0]:
            raise RuntimeError(f"{t.shape[0]} rows for {mask.shape[0]} examples: the batch does not fold as probed")
        mask = mask.repeat_interleave(t.shape[0] // mask.shape[0], dim=0)
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

    def experts_mask(plan):
        def intercept(expert, h, token_rows, rows):
            mask = masks[plan.key]
            if rows < mask.shape[0] or rows % mask.shape[0]:
                raise RuntimeError(f"{plan.key!r}: {rows} token rows for {mask.shape[0]} examples")
            width = h.shape[1]
            block = mask[:, expert * width : (expert + 1) * width]
            return h * block[token_rows // (rows // mask.shape[0])].to(h.dtype)

        return intercept

    try:
        for plan in plans:
            if plan.kind == "experts":
                state = experts.state_of(plan.module)
                state.intercept = experts_mask(plan)
                handles.append(_Reset(state))
            elif plan.unit.side == "output":
                handles.append(plan.module.register_forward_hook(output_hook(plan)))
            else:
                handles.append(plan.module.register_forward_pre_hook(input_hook(plan)))
        yield
    finally:
        for h in handles:
            h.remove()


class _Reset:
    """Removes an experts module's mask intercept like a hook handle."""

    def __init__(self, state):
        self.state = state

    def remove(self):
        self.state.intercept = None


def sample_scores(logits: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """``S_k``: the share of the N examples' (or tokens') argmax predictions equal to ``reference``
    (targets or the unmasked predictions), for each of the K replicas."""
    pred = logits.argmax(-1).view(k, *reference.shape)
    valid = (reference != IGNORE_INDEX).expand_as(pred)
    hits = (pred == reference) & valid
    return hits.flatten(1).sum(1).to(torch.float32) / valid.flatten(1).sum(1).clamp(min=1)


def learn_keep_probabilities(
    model: nn.Module,
    batches: Iterator[Batch],
    plans: Sequence[TapPlan],
    *,
    gradient: str,
    seed: int,
    device: torch.device,
    progress: bool,
    shift: bool,
    samples: int,
    steps: int,
    lr: float,
    keep: float,
    pressure: float,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None,
) -> dict[str, torch.Tensor]:
    """``{key: theta [units]}`` (float32 CPU): the learned keep probabilities. ``shift``: causal-LM
    labels (position t is scored against target t + 1)."""
    k = samples
    generator = torch.Generator(device=device).manual_seed(seed)
    start = math.log(THETA0 / (1 - THETA0))
    phi = {p.key: torch.full((p.units,), start, device=device) for p in plans}
    with torch.no_grad():
        for step in progress_bar(range(1, steps + 1), steps, progress, "mc_gradient"):
            batch = next(batches)
            if gradient == "label":
                reference = _targets(batch, shift).to(device)
            else:
                reference = _logits(batch.call(model)).argmax(-1)
            n = reference.shape[0]
            theta = {key: torch.sigmoid(v) for key, v in phi.items()}
            drawn = {key: torch.bernoulli(t.expand(k, -1), generator=generator) for key, t in theta.items()}
            per_sample = {
                p.key: drawn[p.key].repeat_interleave(p.unit.channels_per_unit, dim=1).repeat_interleave(n, dim=0)
                for p in plans
            }
            with sample_masks(plans, per_sample):
                logits = _logits(replicate(batch, k, n).call(model))
            utility = centred_ranks(sample_scores(logits, reference, k))
            mean_theta = torch.cat(list(theta.values())).mean()
            for key in phi:
                estimate = (utility[:, None] * (drawn[key] - theta[key])).mean(0)
                phi[key] += lr * (estimate - pressure * (mean_theta - keep))
            if on_step is not None:
                on_step(step, _keep_probabilities(phi))
    return _keep_probabilities(phi)


def _logits(output) -> torch.Tensor:
    found, is_logits = scored_output(output)
    if not is_logits:
        raise ValueError(
            "mc_gradient compares predictions, but the model output has no logits (an encoder's "
            "last_hidden_state); score it with rgprune_fast.score, or give it a head"
        )
    return found


def _keep_probabilities(phi: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.sigmoid(v).float().cpu() for key, v in phi.items()}


def _targets(batch: Batch, shift: bool) -> torch.Tensor:
    if not isinstance(batch.targets, torch.Tensor):
        raise ValueError(
            "mc_gradient with gradient='label' needs targets in every batch; use gradient='random' for the "
            "label-free score (agreement with the unmasked network)"
        )
    return shift_targets(batch.targets) if shift else batch.targets
