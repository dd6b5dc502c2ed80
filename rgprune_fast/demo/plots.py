"""PNG plots like the paper's Figures 1-2: units pruned vs test accuracy, one line per method variant,
one panel per data size D, one figure per network; and mean accuracy against compute for the Taylor
criteria and ``mc_gradient``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..optional import require
from .experiment import MC_METHOD, Cost, Result, variant_label
from .report import MODEL_TITLES, TAYLOR_SHOWN, curves_of, mc_curves, mean_pruned

COLORS = {
    "taylorfo": "tab:blue",
    "taylorfo_abs": "tab:orange",
    "taylorfo_sq": "tab:green",
    "molchanov_bn": "tab:red",
    "molchanov_group": "tab:purple",
    MC_METHOD: "black",
}


def _pyplot():
    matplotlib = require("matplotlib", extra="demo", purpose="the demo's plots")
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_model(results: Sequence[Result], model: str, path: Path, title: str = "") -> Path:
    """One figure for ``model``: a panel per D, a line per (method, gradient, normalize)."""
    plt = _pyplot()
    mine = [r for r in results if r.model == model]
    sizes = list(dict.fromkeys((r.data_size_label, r.data_size) for r in mine))
    curves: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in mine:
        curves[(r.data_size_label, r.method, r.gradient, r.normalize)].append((r.pruned, 100 * r.accuracy))
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(4.6 * len(sizes), 10.0), 4.4), sharey=True, squeeze=False)
    methods = list(dict.fromkeys(r.method for r in mine))
    # one legend column per criterion: label, label_norm, rand, rand_norm
    order = sorted(curves, key=lambda k: (methods.index(k[1]), k[2] != "label", k[3]))
    for ax, (label, d) in zip(axes[0], sizes):
        for key in order:
            size, method, gradient, normalize = key
            points = curves[key]
            if size != label:
                continue
            points.sort()
            ax.plot(
                [p for p, _ in points],
                [a for _, a in points],
                color=COLORS.get(method, "black"),
                linestyle="--" if gradient == "random" else "-",
                marker="o" if normalize else None,
                markersize=3,
                linewidth=1.2,
                alpha=0.85,
                label=variant_label(method, gradient, normalize),
            )
        ax.set_title(f"D = {label}" + (f" ({d})" if label == "all" else ""))
        ax.set_xlabel(f"units pruned (of {mine[0].units})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False, columnspacing=1.2)
    fig.suptitle(title or f"{MODEL_TITLES.get(model, model)}: units pruned vs accuracy", fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compute(results: Sequence[Result], costs: Sequence[Cost], path: Path, title: str = "") -> Path:
    """One panel per network: mean accuracy over the pruning levels (y) against forward-equivalents
    (x, log): a line per shown Taylor variant through its D values, a line per ``mc_gradient`` gradient
    through its steps (at the largest D) and its other D values (markers only)."""
    plt = _pyplot()
    models = list(dict.fromkeys(r.model for r in results))
    taylor = curves_of([r for r in results if r.method != MC_METHOD])
    mc = mc_curves(results)

    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), sharey=True, squeeze=False)
    largest = max(c.data_size for c in costs)
    for ax, model in zip(axes[0], models):
        for method, gradient, normalize in TAYLOR_SHOWN:
            points = sorted(
                (
                    c.forward_equivalents,
                    100 * mean_pruned(taylor[(model, c.data_size_label, method, gradient, normalize)]),
                )
                for c in costs
                if c.model == model and c.method == "taylor" and c.gradient == gradient and c.normalize == normalize
            )
            style = "--" if gradient == "random" else "-"
            label = variant_label(method, gradient, normalize)
            ax.plot(*zip(*points), marker="o", markersize=4, color=COLORS[method], linestyle=style, label=label)
        for gradient in dict.fromkeys(c.gradient for c in costs if c.method == MC_METHOD):
            mine = [c for c in costs if c.model == model and c.method == MC_METHOD and c.gradient == gradient]
            point = {c: (c.forward_equivalents, 100 * mean_pruned(mc[(model, c.data_size_label, gradient, c.steps)]))
                     for c in mine}  # fmt: skip
            sweep = sorted(point[c] for c in mine if c.data_size == largest)
            style = "--" if gradient == "random" else "-"
            ax.plot(*zip(*sweep), marker="s", markersize=4, color="black", linestyle=style,
                    label=variant_label(MC_METHOD, gradient, False) + " (steps, largest D)")  # fmt: skip
            others = [point[c] for c in mine if c.data_size != largest]
            if others:
                label = variant_label(MC_METHOD, gradient, False) + " (smaller D)"
                marker = "x" if gradient == "random" else "+"
                ax.scatter(*zip(*others), marker=marker, color="black", s=24, linewidths=0.8, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("forward-equivalents (forward = 1 per example, backward = 2)", fontsize=8)
        ax.set_title(MODEL_TITLES.get(model, model))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("mean test accuracy over the pruning levels (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title or "mean accuracy vs compute", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
