"""The paper's experiment on one trained network: importances from D training examples with every
criterion, gradient and normalisation; the P least important units pruned globally (masked: zeroed);
test accuracy for each P."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..api import score
from ..prune import apply_masks, masks
from .config import DemoConfig
from .data import DigitsData
from .train import accuracy


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

    @property
    def variant(self) -> str:
        return variant_label(self.method, self.gradient, self.normalize)


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


def run(arch: str, model: nn.Module, data: DigitsData, config: DemoConfig, log=print) -> list[Result]:
    """Every (D, gradient, normalize, method, P) point for one trained ``model``."""
    test_x, test_y = data.test_x, data.test_y
    if config.test_examples is not None:
        test_x, test_y = test_x[: config.test_examples], test_y[: config.test_examples]
    base = accuracy(model, test_x, test_y)
    results = []
    for size in config.data_sizes:
        batches = importance_batches(data, size, config.score_batch, config.seed)
        d = sum(len(b[0]) for b in batches)
        d_label = "all" if size is None else str(size)
        started = time.perf_counter()
        evaluations = 0
        for gradient in config.gradients:
            for normalize in config.normalizations:
                every = score(
                    model,
                    batches,
                    method=list(config.methods),
                    gradient=gradient,
                    normalize=normalize,
                    seed=config.seed,
                )
                for method in config.methods:
                    scores = every[method]
                    units = sum(s.numel() for s in scores.values())
                    for p in prune_levels(units, len(scores), config.prune_fractions):
                        if p == 0:
                            acc = base
                        else:
                            with apply_masks(model, masks(scores, n=p)):
                                acc = accuracy(model, test_x, test_y)
                            evaluations += 1
                        results.append(Result(arch, d, d_label, method, gradient, normalize, p, units, acc))
        log(
            f"  {arch}: D={d_label} ({d} examples): 4 scoring passes, {evaluations} pruned evaluations "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return results
