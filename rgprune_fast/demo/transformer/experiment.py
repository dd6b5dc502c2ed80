"""The experiment on one encoder: every scorer on the scoring set; the heads' ground truth; heads and
neurons pruned (masked) alone at every ratio and together at the headline budget, with global and
uniform allocation; the fidelity of each pruned encoder on the evaluation set."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ...pruning import masks
from ...scorers.taylor import score
from . import baselines
from .config import TransformerDemoConfig
from .fidelity import Evaluator
from .ground_truth import head_damage, rank_correlations
from .units import HEADS, NEURONS, of_kind, pruned_params, unit_groups

BOTH = "both"  # heads and neurons pruned together (the headline budget)


def rg_label(method: str) -> str:
    """The table name of one of the package's criteria with random gradients (normalised, the default)."""
    return f"{method}_rand_norm"


@dataclass(frozen=True)
class Row:
    """One pruned encoder (a row of results.csv)."""

    scorer: str
    kind: str  # "heads" | "neurons" | "both"
    allocation: str  # "global" | "uniform"
    heads_ratio: float
    neurons_ratio: float
    heads_pruned: int
    neurons_pruned: int
    params: int  # of the whole encoder after slicing the pruned units out
    cosine: float
    spearman: float


@dataclass
class Outcome:
    scores: dict[str, dict[str, torch.Tensor]]  # {scorer: {unit key: scores}}
    rows: list[Row]
    damage: dict[str, torch.Tensor] | None  # heads' ground truth
    correlations: dict[str, dict] | None
    params: int  # unpruned
    units: dict[str, int]  # {"heads": 72, "neurons": 9216}
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step


class Bar:
    """A progress bar over ``total`` steps: tqdm when installed, else a line on stderr."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.done, self._bar = total, desc, 0, None
        if not enabled:
            self.desc = None
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit="eval")

    def __call__(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update()
        elif self.desc is not None:
            import sys

            end = "\n" if self.done == self.total else ""
            print(f"\r{self.desc}: {self.done}/{self.total}", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def all_scores(
    encoder: nn.Module, batches: Sequence[dict], config: TransformerDemoConfig, progress: bool
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """``{scorer: {unit key: scores}}`` for the package's criteria (one random-gradient pass) and every
    baseline, and the seconds each took."""
    seconds = {}
    started = time.perf_counter()
    taylor = score(
        encoder, batches, method=list(config.rg_methods), gradient="random", seed=config.seed, progress=progress
    )
    seconds["rg.score"] = time.perf_counter() - started
    found = {rg_label(m): taylor[m] for m in config.rg_methods}
    started = time.perf_counter()
    stats = baselines.input_statistics(encoder, batches)
    found["random"] = baselines.random_scores(encoder, seed=config.seed)
    found["weight"] = baselines.weight_scores(encoder)
    found["activation"] = baselines.activation_scores(encoder, stats)
    found["wanda"] = baselines.wanda_scores(encoder, stats)
    seconds["random, weight, activation, wanda"] = time.perf_counter() - started
    started = time.perf_counter()
    found["llm_pruner"] = baselines.llm_pruner_scores(encoder, batches, seed=config.seed)
    seconds["llm_pruner"] = time.perf_counter() - started
    keys = [g.key for g in unit_groups(encoder)]
    for name, scores in found.items():
        if list(scores) != keys:
            raise RuntimeError(f"scorer {name} scored {list(scores)}, expected {keys}")
    return found, seconds


def plan(config: TransformerDemoConfig) -> list[tuple[str, str, dict[str, float]]]:
    """``(kind, allocation, ratio per kind)`` of every pruned encoder, for each scorer."""
    planned = []
    for allocation in config.allocations:
        for kind in (HEADS, NEURONS):
            planned += [(kind, allocation, {kind: r}) for r in config.ratios]
        planned.append((BOTH, allocation, config.headline_ratio))
    return planned


def run(
    encoder: nn.Module,
    score_batches: Sequence[dict],
    eval_batches: Sequence[dict],
    config: TransformerDemoConfig,
    *,
    log: Callable = print,
    progress: bool = True,
) -> tuple[Outcome, Evaluator]:
    scores, seconds = all_scores(encoder, score_batches, config, progress)
    log("scored: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    groups = unit_groups(encoder)
    total_params = sum(p.numel() for p in encoder.parameters())
    units = {kind: sum(g.units for g in groups if g.kind == kind) for kind in (HEADS, NEURONS)}
    started = time.perf_counter()
    evaluator = Evaluator(encoder, eval_batches)
    damage = correlations = None
    if config.ground_truth:
        bar = Bar(units[HEADS], "ground truth: one head removed at a time", progress)
        try:
            damage = head_damage(evaluator, progress=bar)
        finally:
            bar.close()
        correlations = rank_correlations(damage, scores)
        seconds["ground truth"] = time.perf_counter() - started
        log(f"ground truth: {units[HEADS]} heads in {seconds['ground truth']:.0f} s")
    started = time.perf_counter()
    planned = plan(config)
    rows = []
    bar = Bar(len(planned) * len(scores), "pruned encoders", progress)
    try:
        for name, scorer_scores in scores.items():
            for kind, allocation, ratio in planned:
                subset = scorer_scores if kind == BOTH else of_kind(scorer_scores, kind)
                keep = masks(subset, ratio=ratio, allocation=allocation)
                measured = evaluator(keep)
                pruned = {k: sum(int((~m).sum()) for key, m in keep.items() if key in of_kind(keep, k)) for k in units}
                rows.append(
                    Row(
                        name,
                        kind,
                        allocation,
                        ratio.get(HEADS, 0.0),
                        ratio.get(NEURONS, 0.0),
                        pruned[HEADS],
                        pruned[NEURONS],
                        total_params - pruned_params(encoder, keep),
                        measured.cosine,
                        measured.spearman,
                    )
                )
                bar()
    finally:
        bar.close()
    seconds["pruning sweep"] = time.perf_counter() - started
    log(f"pruning sweep: {len(rows)} pruned encoders in {seconds['pruning sweep']:.0f} s")
    return Outcome(scores, rows, damage, correlations, total_params, units, seconds), evaluator


def headline_masks(outcome: Outcome, scorer: str, allocation: str, config: TransformerDemoConfig) -> dict:
    """The keep-masks of ``scorer`` at the headline budget."""
    return masks(outcome.scores[scorer], ratio=config.headline_ratio, allocation=allocation)
