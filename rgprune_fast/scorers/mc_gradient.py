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
* **Score** ``S_k``: the overlap ``sum_c min(r_c, q_c)`` of the masked network's softmax ``q`` with a
  reference distribution ``r``, averaged over the examples (tokens for sequence outputs; targets
  ``-100`` and, label-free, padding positions of ``attention_mask`` left out). Label-free
  (``gradient="random"``, the default) ``r`` is the unmasked network's softmax; with labels
  (``gradient="label"``) it is the one-hot target, so ``S_k`` is the mean probability of the target.
  Why not argmax agreement (the first version): it is flat almost everywhere, so most units, live or
  dead, got exactly zero signal and kept their start value up to noise (on a small random ConvNet
  every sample tied and nothing moved). The probability moves with every unit that changes the
  output. Why the overlap and not the probability of the unmasked network's predicted class: the
  overlap is largest, 1, exactly when the masked output equals the unmasked one, so switching off any
  unit with influence can only lower it, while the predicted class's probability often *rises* when a
  unit is switched off (a less spread-out output), which ranked live units below dead ones on a
  random-weight ConvNet. For a confident unmasked network (one-hot ``r``) the two coincide.
* **Utility** ``u_k``: centred ranks of ``S_k`` among the K samples (ties share their mean rank), in
  ``[-1/2, 1/2]``: invariant to the score's scale, robust to outliers (as in natural evolution
  strategies).
* **REINFORCE**: ``mean_k u_k (m_k - theta)``, the score-function gradient of
  ``log Bernoulli(m; sigmoid(phi))`` w.r.t. ``phi``, with the centred ranks as baseline-free utilities.
* **A cost per unit kept**: the utility also rewards every unit a sample switches off with ``cost``
  (in utility units). Its part of the REINFORCE gradient is known in closed form,
  ``-cost * theta_u (1 - theta_u)``, and is applied exactly rather than sampled. Why: without it a unit
  with no influence gets no signal and stays where it started (0.9) while the pressure below moves all
  units alike, so the learned probabilities of dead units said nothing; with it they fall, and only
  units whose switching off costs more than ``cost`` in utility stay up. Why outside the ranks: added
  to ``S_k`` before ranking, a fixed cost is measured against the score's spread, which varies from
  model to model (on a tiny random GPT-2 whose outputs barely change it drowned the signal); exact,
  it adds no sampling noise. ``cost=0.05`` (default): small against the utility of a unit that matters
  (the ranks span 1), large enough that a dead unit falls well below the start in 100 steps.
* **Pressure** toward the target keep ratio: ``-pressure * (mean(theta) - keep)`` for every unit (the
  mean over all units of all modules), so units compete: the pressure lowers all of them until
  ``keep`` of them, on average, are kept; the utility term keeps up those that matter. The update:
  ``phi += lr * (mean_k u_k (m_k - theta) - cost * theta (1 - theta) - pressure * (mean(theta) - keep))``.
* **keep = 0.9 by default**: each sampled mask then switches off about 10 % of the units, so the
  masked networks still classify and their scores say which units matter. With 0.5, every sample of
  the demo's trained ResNet-8 (MNIST) was near chance, the utilities were noise, and pruning by the
  resulting ranking kept 16 % mean accuracy over the pruning levels against 74 % with 0.9 (same budget,
  argmax-agreement score). The ranking, not the keep ratio, is what pruning uses: units below ``keep``
  still come out ordered.
* **Deterministic**: masks come from a ``torch.Generator`` seeded with ``seed`` on the model's device.
* **Checked like the Taylor path**: targets by :func:`~rgprune_fast.engine.gradients.check_targets`
  (integer class indices of the output's shape, in range or ``-100``); NaN/Inf in the unmasked or a
  masked output (NaN/Inf inputs or weights) raise :class:`~rgprune_fast.errors.NonFiniteStatisticsError`
  naming the batch, instead of scoring every sample alike.

Cost: each step is one forward of ``K * N`` examples plus one unmasked forward of ``N`` (label-free);
no backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

from ..engine import experts
from ..engine.batching import Batch, padding_mask, replicate, scored_output
from ..engine.gradients import IGNORE_INDEX, check_targets, shift_targets
from ..engine.interrupts import interrupt_safe, interruptible
from ..engine.model_state import requires_grad
from ..engine.planning import TapPlan
from ..engine.progress import progress_bar
from ..engine.session import prepare, session
from ..errors import NonFiniteStatisticsError

THETA0 = 0.9  # every keep probability starts here
GRADIENTS = ("label", "random")


@interrupt_safe
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
    cost: float = 0.05,
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
        gradient: ``"random"`` (label-free: overlap of the masked network's softmax with the unmasked
            network's) or ``"label"`` (the masked network's probability of the batches' targets).
        samples: masks drawn (and masked copies of the batch run) per step, K.
        steps: update steps, one batch each.
        lr: learning rate of the keep logits.
        keep: the mean keep probability the pressure pulls toward, in (0, 1).
        pressure: strength of that pull.
        cost: what switching off a unit is worth, in utility units (the centred ranks span 1): units
            that matter less than this fall, units with no influence fall furthest.
        on_step: called after every step as ``on_step(step, theta)`` (step counts from 1; ``theta`` as
            returned at the end): ``theta`` after step s is exactly what ``steps=s`` returns.

    Returns:
        ``{key: float32 CPU tensor [units]}`` keep probabilities, keys as :func:`rgprune_fast.score`'s.
    """
    check_options(gradient, samples=samples, steps=steps, lr=lr, keep=keep, pressure=pressure, cost=cost)
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
                lr=float(lr), keep=float(keep), pressure=float(pressure), cost=float(cost), on_step=on_step,
            )  # fmt: skip


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_options(gradient, **options) -> None:
    """One clear error for the first bad option: ``TypeError`` for the wrong type (a str ``"0.5"``, a
    bool), ``ValueError`` for a value out of range."""
    if gradient not in GRADIENTS:
        raise ValueError(f"mc_gradient scores the probability of the labels (gradient='label') or the overlap with "
                         f"the unmasked network (gradient='random'); got gradient={gradient!r}")  # fmt: skip
    for name in ("samples", "steps"):
        value = options[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"mc_gradient: {name} must be a positive int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"mc_gradient: {name} must be a positive int, got {value!r}")
    for name in ("keep", "lr", "pressure", "cost"):
        value = options[name]
        if not _is_number(value):
            raise TypeError(f"mc_gradient: {name} must be a real number, got {type(value).__name__} {value!r}")
    if not 0.0 < float(options["keep"]) < 1.0:
        raise ValueError(f"mc_gradient: keep must lie in (0, 1), got {options['keep']!r}")
    for name in ("lr", "pressure", "cost"):
        value = float(options[name])
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"mc_gradient: {name} must be a finite number >= 0, got {options[name]!r}")


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


class Reference:
    """What the masked replicas of one batch are scored against: ``targets`` (class indices, with labels)
    or the unmasked network's ``probabilities``; ``valid``: the outputs that count."""

    def __init__(self, valid: torch.Tensor, targets: torch.Tensor | None = None, probabilities=None):
        self.valid, self.targets, self.probabilities = valid, targets, probabilities


def sample_scores(logits: torch.Tensor, reference: Reference, k: int) -> torch.Tensor:
    """``S_k`` for each of the K replicas: the mean over the N examples (or valid tokens) of the overlap
    ``sum_c min(r_c, q_c)`` of the replica's softmax ``q`` with the reference ``r``: the unmasked
    softmax (label-free), or the one-hot target (with labels: ``q`` of the target)."""
    scores = []
    for replica in logits.float().chunk(k):  # one replica at a time: a softmax of K * N outputs can be large
        q = torch.softmax(replica, dim=-1)
        if reference.targets is not None:
            safe = torch.where(reference.valid, reference.targets, 0).long().unsqueeze(-1)
            per_output = q.gather(-1, safe).squeeze(-1)
        else:
            per_output = torch.minimum(q, reference.probabilities).sum(-1)
        scores.append((per_output * reference.valid).sum() / reference.valid.sum().clamp(min=1))
    return torch.stack(scores)


def label_reference(batch: Batch, logits: torch.Tensor, n: int, shift: bool) -> Reference:
    """The batch's targets, validated against the unmasked output's shape ``logits[:n]`` as the Taylor
    path validates them (on the CPU, so that the range is checked on every device)."""
    if batch.targets is None:
        raise ValueError(
            "mc_gradient with gradient='label' needs targets in every batch; use gradient='random' for the "
            "label-free score (overlap with the unmasked network)"
        )
    targets = shift_targets(batch.targets) if shift else batch.targets
    cpu = targets.cpu() if isinstance(targets, torch.Tensor) else targets
    try:
        targets = check_targets(logits[:n], cpu)
    except (TypeError, ValueError) as error:
        raise type(error)(f"mc_gradient: batch {batch.index} (0-based): {error}") from None
    return Reference(targets != IGNORE_INDEX, targets=targets)


def unmasked_reference(batch: Batch, model: nn.Module) -> Reference:
    """The unmasked network's softmax (label-free); padding positions of ``attention_mask`` do not count."""
    logits = _logits(batch.call(model))
    probabilities = torch.softmax(logits.float(), dim=-1)
    if not torch.isfinite(probabilities).all():
        raise _non_finite(batch, "the unmasked network's output")
    mask = padding_mask(batch, logits)
    valid = mask.bool() if mask is not None else torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    return Reference(valid, probabilities=probabilities)


def _non_finite(batch: Batch, what: str) -> NonFiniteStatisticsError:
    return NonFiniteStatisticsError(
        f"mc_gradient: NaN/Inf in {what} for batch {batch.index} (0-based); check the inputs and weights for "
        "NaN/Inf, or the model for overflow in its dtype"
    )


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
    cost: float,
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
            n = batch.examples
            reference = None if gradient == "label" else unmasked_reference(batch, model)
            theta = {key: torch.sigmoid(v) for key, v in phi.items()}
            drawn = {key: torch.bernoulli(t.expand(k, -1), generator=generator) for key, t in theta.items()}
            per_sample = {
                p.key: drawn[p.key].repeat_interleave(p.unit.channels_per_unit, dim=1).repeat_interleave(n, dim=0)
                for p in plans
            }
            with sample_masks(plans, per_sample):
                logits = _logits(replicate(batch, k, n).call(model))
            if reference is None:
                reference = label_reference(batch, logits, n, shift)
            scores = sample_scores(logits, reference, k)
            if not torch.isfinite(scores).all():
                raise _non_finite(batch, "a masked network's output")
            utility = centred_ranks(scores)
            mean_theta = torch.cat(list(theta.values())).mean()
            for key in phi:
                estimate = (utility[:, None] * (drawn[key] - theta[key])).mean(0)
                unit_cost = cost * theta[key] * (1 - theta[key])  # exact REINFORCE gradient of the per-unit cost
                phi[key] += lr * (estimate - unit_cost - pressure * (mean_theta - keep))
            if on_step is not None:
                interruptible(on_step, step, _keep_probabilities(phi))
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
