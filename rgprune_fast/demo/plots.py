"""PNG plots like the paper's Figures 1-2: units pruned vs test accuracy, one line per method variant,
one panel per data size D, one figure per network."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..optional import require
from .experiment import Result, variant_label
from .report import MODEL_TITLES

COLORS = {
    "taylorfo": "tab:blue",
    "taylorfo_abs": "tab:orange",
    "taylorfo_sq": "tab:green",
    "molchanov_bn": "tab:red",
    "molchanov_group": "tab:purple",
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
