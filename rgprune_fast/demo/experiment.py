"""The paper's experiment on one trained network: importances from D training examples with every
criterion, gradient and normalisation (and ``mc_gradient``); the P least important units pruned
globally (masked: zeroed); test accuracy for each P; what each scoring run cost."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..pruning import apply_masks, masks
from ..scorers.mc_gradient import score as mc_gradient
from ..scorers.taylor import score
from .config import DemoConfig
from .data import DigitsData
from .train import accuracy

MC_METHOD = "mc_gradient"  # the results' method label of rgprune_fast.mc_gradient


@dataclass(frozen=True)
class Result:
    """One point of one pruning curve (a row of the CSV)."""

    model: str
    data_size: int  # D, the number of training examples the importances come from
    data_size_label: str  # "10", or "all" for the whole training split
    method: str
    gradient: str  # "label" | "random"
    normalize: bool
    pruned: int  # P
    units: int  # N, all scored units of the network
    accuracy: float  # test accuracy after pruning P units
    steps: int = 0  # mc_gradient: the steps its keep probabilities were learned for (0: a Taylor criterion)

    @property
    def variant(self) -> str:
        return variant_label(self.method, self.gradient, self.normalize)


@dataclass(frozen=True)
class Cost:
    """What one scoring run cost: a Taylor pass (all five criteria at once, for one gradient and
    normalisation), or ``mc_gradient`` after ``steps`` steps."""

    model: str
    data_size: int
    data_size_label: str
    method: str  # "taylor" | "mc_gradient"
    gradient: str
    normalize: bool
    steps: int  # 0 for a Taylor pass
    forward_examples: int  # examples through a forward pass
    backward_examples: int  # examples through a backward pass
    seconds: float  # wall time of the score() call (up to this step)

    @property
    def forward_equivalents(self) -> int:
        """Compute in units of one example's forward pass; a backward pass costs about two forwards
        (the gradients w.r.t. both the activations and, for convolutions, the inputs of each layer)."""
        return self.forward_examples + 2 * self.backward_examples


def variant_label(method: str, gradient: str, normalize: bool) -> str:
    """The paper's legend names: ``taylorfo_sq``, ``taylorfo_sq_norm``, ``taylorfo_sq_rand``, ``..._rand_norm``."""
    return method + ("_rand" if gradient == "random" else "") + ("_norm" if normalize else "")


def importance_batches(data: DigitsData, size: int | None, batch: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """The first ``size`` examples of a seeded permutation of the training split (all if ``None``), batched."""
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed + 1))
    chosen = order if size is None else order[:size]
    return [
        (data.train_x[chosen[i : i + batch]], data.train_y[chosen[i : i + batch]]) for i in range(0, len(chosen), batch)
    ]


def prune_levels(units: int, layers: int, fractions: tuple[float, ...]) -> list[int]:
    """P for each fraction of the prunable units (each layer keeps one unit), plus P = 0."""
    prunable = units - layers
    return sorted({0} | {round(f * prunable) for f in fractions})


def run(
    arch: str, model: nn.Module, data: DigitsData, config: DemoConfig, log=print
) -> tuple[list[Result], list[Cost]]:
    """Every (D, gradient, normalize, method, P) point for one trained ``model``, and the costs."""
    test_x, test_y = data.test_x, data.test_y
    if config.test_examples is not None:
        test_x, test_y = test_x[: config.test_examples], test_y[: config.test_examples]
    base = accuracy(model, test_x, test_y)

    def evaluate(scores, d, d_label, method, gradient, normalize, steps=0) -> list[Result]:
        units = sum(s.numel() for s in scores.values())
        rows = []
        for p in prune_levels(units, len(scores), config.prune_fractions):
            if p == 0:
                acc = base
            else:
                with apply_masks(model, masks(scores, n=p)):
                    acc = accuracy(model, test_x, test_y)
            rows.append(Result(arch, d, d_label, method, gradient, normalize, p, units, acc, steps))
        return rows

    results: list[Result] = []
    costs: list[Cost] = []
    _warm_up(model, data, config)
    for size in config.data_sizes:
        batches = importance_batches(data, size, config.score_batch, config.seed)
        d = sum(len(b[0]) for b in batches)
        d_label = "all" if size is None else str(size)
        started = time.perf_counter()
        for gradient in config.gradients:
            for normalize in config.normalizations:
                t0 = time.perf_counter()
                every = score(
                    model,
                    batches,
                    method=list(config.methods),
                    gradient=gradient,
                    normalize=normalize,
                    seed=config.seed,
                )
                costs.append(Cost(arch, d, d_label, "taylor", gradient, normalize, 0, d, d, time.perf_counter() - t0))
                for method in config.methods:
                    results += evaluate(every[method], d, d_label, method, gradient, normalize)
        passes = len(config.gradients) * len(config.normalizations)
        log(f"  {arch}: D={d_label} ({d} examples): {passes} Taylor passes in {time.perf_counter() - started:.1f} s")
        if config.mc_gradient is not None:
            largest = size == config.data_sizes[-1]
            for gradient in config.gradients:
                mc_results, mc_costs = _run_mc(arch, model, data, size, d_label, gradient, config, largest, evaluate)
                results += mc_results
                costs += mc_costs
                log(f"  {arch}: D={d_label}: {MC_METHOD} ({gradient}) {mc_costs[-1].steps} steps in "
                    f"{mc_costs[-1].seconds:.1f} s")  # fmt: skip
    return results, costs


def _warm_up(model: nn.Module, data: DigitsData, config: DemoConfig) -> None:
    """One untimed call of each scorer, so that one-time costs (lazy imports, allocator) are not
    charged to the first timed call."""
    batch = (data.train_x[:8], data.train_y[:8])
    score(model, [batch], method=list(config.methods))
    if config.mc_gradient is not None:
        mc_gradient(model, [batch], steps=1, samples=2)


def mc_snapshot_steps(config: DemoConfig, d_all: int) -> list[int]:
    """The steps after which ``mc_gradient`` is also evaluated at the largest D: where its compute is
    each of ``compute_multiples`` times a Taylor pass over those D examples (one forward and one
    backward of each: three forward-equivalents), plus its last step."""
    mc = config.mc_gradient
    per_step = (mc.samples + 1) * min(mc.batch, d_all)  # label-free: K masked copies + the unmasked one
    taylor = 3 * d_all
    steps = {max(1, round(m * taylor / per_step)) for m in mc.compute_multiples}
    return sorted(s for s in steps | {mc.steps} if s <= mc.steps)


def _run_mc(arch, model, data, size, d_label, gradient, config, largest, evaluate):
    """``mc_gradient`` on the D examples (cycled, ``batch`` per step); at the largest D, also its keep
    probabilities after the snapshot steps (exactly what a run with that many steps returns)."""
    mc = config.mc_gradient
    batches = importance_batches(data, size, mc.batch, config.seed)
    sizes = [len(b[0]) for b in batches]
    d = sum(sizes)
    snapshots = mc_snapshot_steps(config, d) if largest else [mc.steps]
    kept: dict[int, tuple[dict, float]] = {}
    started = time.perf_counter()

    def on_step(step, theta):
        if step in snapshots:
            kept[step] = (theta, time.perf_counter() - started)

    mc_gradient(model, batches, gradient=gradient, seed=config.seed, on_step=on_step, **mc.options())
    results, costs = [], []
    unmasked = 1 if gradient != "label" else 0  # label-free: the unmasked predictions are the reference
    for step, (theta, seconds) in sorted(kept.items()):
        examples = sum(sizes[i % len(sizes)] for i in range(step))  # the batches are cycled
        forward = examples * (mc.samples + unmasked)
        costs.append(Cost(arch, d, d_label, MC_METHOD, gradient, False, step, forward, 0, seconds))
        results += evaluate(theta, d, d_label, MC_METHOD, gradient, False, step)
    return results, costs
