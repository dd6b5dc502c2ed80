"""PNG plots: fidelity against the fraction of heads / neurons pruned, one line per scorer, one panel per
(kind, allocation); and every scorer's head scores against the measured damage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ...optional import require
from .experiment import Outcome, Row
from .units import HEADS, NEURONS

STYLES = {
    "taylorfo_sq_rand_norm": ("tab:green", "-", "o"),
    "taylorfo_abs_rand_norm": ("tab:olive", "-", "s"),
    "random": ("gray", ":", "x"),
    "weight": ("tab:blue", "--", "^"),
    "activation": ("tab:orange", "--", "v"),
    "wanda": ("tab:red", "--", "D"),
    "llm_pruner": ("tab:purple", "-.", "P"),
}


def _pyplot():
    matplotlib = require("matplotlib", extra="demo", purpose="the demo's plots")
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_fidelity(rows: Sequence[Row], metric: str, path: Path, title: str) -> Path:
    """``metric`` ("cosine" or "spearman") against the pruned fraction: panels heads/neurons × allocation."""
    plt = _pyplot()
    allocations = list(dict.fromkeys(r.allocation for r in rows))
    scorers = list(dict.fromkeys(r.scorer for r in rows))
    fig, axes = plt.subplots(2, len(allocations), figsize=(5.2 * len(allocations), 8.2), squeeze=False)
    label = {"cosine": "mean cosine to the unpruned embeddings", "spearman": "Spearman ρ of pairwise similarities"}
    for i, kind in enumerate((HEADS, NEURONS)):
        for j, allocation in enumerate(allocations):
            ax = axes[i][j]
            for s in scorers:
                points = sorted(
                    (r.heads_ratio if kind == HEADS else r.neurons_ratio, getattr(r, metric))
                    for r in rows
                    if r.scorer == s and r.kind == kind and r.allocation == allocation
                )
                color, line, marker = STYLES.get(s, ("black", "-", "."))
                xs = [0.0] + [100 * x for x, _ in points]
                ys = [1.0] + [y for _, y in points]
                ax.plot(xs, ys, color=color, linestyle=line, marker=marker, markersize=4, label=s)
            ax.set_title(f"{kind} pruned, {allocation} allocation", fontsize=10)
            ax.set_xlabel(f"% of the {kind} pruned")
            ax.set_ylabel(label[metric])
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ground_truth(outcome: Outcome, path: Path, title: str) -> Path:
    """Per scorer: the rank of each head's score against the rank of its measured damage."""
    plt = _pyplot()
    keys = list(outcome.damage)
    damage = torch.cat([outcome.damage[k] for k in keys])
    truth = damage.argsort().argsort()
    scorers = list(outcome.scores)
    columns = 4
    rows = -(-len(scorers) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.2 * rows), squeeze=False)
    layers = torch.arange(len(keys)).repeat_interleave(len(outcome.damage[keys[0]]))
    for ax, s in zip(axes.flat, scorers):
        values = torch.cat([outcome.scores[s][k].double() for k in keys])
        ranked = values.argsort().argsort()
        ax.scatter(truth, ranked, c=layers, cmap="viridis", s=12)
        rho = outcome.correlations[s]["all"] if outcome.correlations else float("nan")
        ax.set_title(f"{s}: ρ = {rho:+.2f}", fontsize=9)
        ax.set_xlabel("rank of measured damage", fontsize=8)
        ax.set_ylabel("rank of score", fontsize=8)
    for ax in list(axes.flat)[len(scorers) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
