"""What ``rgprune-fast demo transformer`` runs: the full protocol and its ``--quick`` cut-down.

Both: all-MiniLM-L6-v2 as a sentence encoder; importances from a scoring set of standard-library
docstring sentences, fidelity and the heads' ground truth on a disjoint evaluation set; every scorer;
heads and neurons pruned alone at every ratio and together at the headline budget, with global and
per-layer-uniform allocation; the physical pruning check at the headline budget.
``--quick`` uses 128 + 128 sentences instead of 512 + 512, and two ratios instead of five.
"""

from __future__ import annotations

from dataclasses import dataclass

RG_METHODS = ("taylorfo_sq", "taylorfo_abs")  # the package's criteria, with random gradients
BASELINES = ("random", "weight", "activation", "wanda", "llm_pruner")
ALLOCATIONS = ("global", "uniform")


@dataclass(frozen=True)
class TransformerDemoConfig:
    name: str
    n_score: int  # sentences the importances come from
    n_evaluate: int  # other sentences: fidelity and ground truth
    ratios: tuple[float, ...]  # fractions of the heads (alone) and of the neurons (alone) pruned
    headline: tuple[tuple[str, float], ...] = (("heads", 0.25), ("neurons", 0.3))  # pruned together
    rg_methods: tuple[str, ...] = RG_METHODS
    allocations: tuple[str, ...] = ALLOCATIONS
    max_length: int = 64  # tokens per sentence (the longest sentences are truncated)
    score_batch: int = 32  # sentences per scoring batch (llm_pruner sums |group Taylor| per batch)
    eval_batch: int = 32  # sentences of similar length (sorted): little padding
    ground_truth: bool = True  # one masked evaluation per head
    physical: bool = True  # prune, save, reload in a fresh process, compare
    seed: int = 0

    @property
    def headline_ratio(self) -> dict[str, float]:
        return dict(self.headline)


QUICK = TransformerDemoConfig(name="quick", n_score=128, n_evaluate=128, ratios=(0.25, 0.5))
FULL = TransformerDemoConfig(name="full", n_score=512, n_evaluate=512, ratios=(0.1, 0.2, 0.3, 0.4, 0.5))
CONFIGS = {"quick": QUICK, "full": FULL}
