"""The demo's outputs in text: the CSV, the accuracy tables (Markdown, also printed) and a short,
computed summary of what the numbers say about the paper's claims."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

from .experiment import Result, variant_label

CSV_FIELDS = (
    "model",
    "data_size",
    "data_size_label",
    "method",
    "gradient",
    "normalize",
    "variant",
    "pruned",
    "units",
    "pruned_fraction",
    "accuracy",
)
MODEL_TITLES = {"resnet": "ResNet-8", "vgg": "VGG-6"}
NEAR = 2.0  # accuracy points within which two variants count as matching


def write_csv(results: Sequence[Result], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in results:
            writer.writerow(
                [
                    r.model,
                    r.data_size,
                    r.data_size_label,
                    r.method,
                    r.gradient,
                    int(r.normalize),
                    r.variant,
                    r.pruned,
                    r.units,
                    f"{r.pruned / r.units:.4f}",
                    f"{r.accuracy:.4f}",
                ]
            )


def _variants(results: Sequence[Result]) -> list[tuple[str, str, bool]]:
    seen: dict[tuple[str, str, bool], None] = {}
    for r in results:
        seen[(r.method, r.gradient, r.normalize)] = None
    order = {"label": 0, "random": 1}
    return sorted(seen, key=lambda v: (list(dict.fromkeys(r.method for r in results)).index(v[0]), order[v[1]], v[2]))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _curves(results: Sequence[Result]) -> dict[tuple, dict[int, float]]:
    """(model, D label, method, gradient, normalize) -> {P: accuracy}."""
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in results:
        curves[(r.model, r.data_size_label, r.method, r.gradient, r.normalize)][r.pruned] = r.accuracy
    return curves


def _mean_pruned(curve: dict[int, float]) -> float:
    """Mean accuracy over the pruning levels P > 0 (the area under the pruning curve, normalised)."""
    return mean(a for p, a in curve.items() if p > 0)


def _models(results):
    return list(dict.fromkeys(r.model for r in results))


def _sizes(results):
    return list(dict.fromkeys((r.data_size_label, r.data_size) for r in results))


def accuracy_table(results: Sequence[Result], size_label: str) -> str:
    """Test accuracy (%) after pruning P units, at one data size, every model side by side."""
    curves = _curves(results)
    models = _models(results)
    levels = {m: sorted({r.pruned for r in results if r.model == m and r.pruned > 0}) for m in models}
    units = {m: next(r.units for r in results if r.model == m) for m in models}
    header = ["method"] + [f"{MODEL_TITLES.get(m, m)} P={p}/{units[m]}" for m in models for p in levels[m]]
    rows = []
    for method, gradient, normalize in _variants(results):
        row = [variant_label(method, gradient, normalize)]
        for m in models:
            curve = curves[(m, size_label, method, gradient, normalize)]
            row += [f"{100 * curve[p]:.1f}" for p in levels[m]]
        rows.append(row)
    base = {m: next(r.accuracy for r in results if r.model == m and r.pruned == 0) for m in models}
    note = ", ".join(f"{MODEL_TITLES.get(m, m)} {100 * base[m]:.1f} %" for m in models)
    return _markdown(header, rows) + f"\n\nUnpruned accuracy: {note}."


def summary_table(results: Sequence[Result]) -> str:
    """Mean test accuracy (%) over the pruning levels, for every model and data size D."""
    curves = _curves(results)
    columns = [(m, label, d) for m in _models(results) for label, d in _sizes(results)]
    header = ["method"] + [
        f"{MODEL_TITLES.get(m, m)} D={label if label != 'all' else f'all ({d})'}" for m, label, d in columns
    ]
    rows = []
    for method, gradient, normalize in _variants(results):
        row = [variant_label(method, gradient, normalize)]
        row += [f"{100 * _mean_pruned(curves[(m, label, method, gradient, normalize)]):.1f}" for m, label, _ in columns]
        rows.append(row)
    return _markdown(header, rows)


def _paired(curves, vary: str) -> list[float]:
    """Differences in mean pruned accuracy (points) between the two values of ``vary``, all else equal."""
    diffs = []
    for (model, size, method, gradient, normalize), curve in curves.items():
        if vary == "gradient" and gradient == "label":
            other = curves.get((model, size, method, "random", normalize))
        elif vary == "normalize" and not normalize:
            other = curves.get((model, size, method, gradient, True))
        else:
            continue
        if other is not None:
            diffs.append(100 * (_mean_pruned(other) - _mean_pruned(curve)))
    return diffs


def _describe(diffs: list[float], better: str, worse: str) -> str:
    wins = sum(d > NEAR for d in diffs)
    losses = sum(d < -NEAR for d in diffs)
    near = len(diffs) - wins - losses
    return (
        f"mean difference {mean(diffs):+.1f} points ({better} minus {worse}) over {len(diffs)} pairs; "
        f"within {NEAR:.0f} points in {near}, {better} better in {wins}, {worse} better in {losses}"
    )


def claims(results: Sequence[Result]) -> str:
    """What the curves say about the paper's claims, computed (mean accuracy over the pruning levels)."""
    curves = _curves(results)
    lines = [
        "- random vs label gradient: " + _describe(_paired(curves, "gradient"), "random", "label") + ".",
        "- normalisation: " + _describe(_paired(curves, "normalize"), "norm", "no norm") + ".",
    ]
    by_method: dict[str, list[float]] = defaultdict(list)
    for (_, _, method, _, _), curve in curves.items():
        by_method[method].append(100 * _mean_pruned(curve))
    ranking = sorted(by_method, key=lambda m: -mean(by_method[m]))
    lines.append(
        "- criteria, mean accuracy over every model, D, gradient and normalisation: "
        + ", ".join(f"{m} {mean(by_method[m]):.1f}" for m in ranking)
        + "."
    )
    wins: dict[str, dict[str, int]] = {"low": defaultdict(int), "high": defaultdict(int)}
    skipped = 0
    for model in _models(results):
        levels = sorted({r.pruned for r in results if r.model == model and r.pruned > 0})
        base = next(r.accuracy for r in results if r.model == model and r.pruned == 0)
        for label, _ in _sizes(results):
            for i, p in enumerate(levels):
                per_method: dict[str, list[float]] = defaultdict(list)
                for (m, s, method, _, _), curve in curves.items():
                    if m == model and s == label:
                        per_method[method].append(curve[p])
                winner = max(per_method, key=lambda k: mean(per_method[k]))
                if mean(per_method[winner]) < 0.5 * base:  # every criterion has collapsed: a win is noise
                    skipped += 1
                    continue
                wins["low" if i < len(levels) / 2 else "high"][winner] += 1
    for half, title in (("low", "lower half"), ("high", "upper half")):
        counts = sorted(wins[half].items(), key=lambda kv: -kv[1])
        lines.append(
            f"- best criterion (mean of its 4 variants) per pruning level, {title} of the P range: "
            + (", ".join(f"{m} {n}x" for m, n in counts) or "none")
            + "."
        )
    if skipped:
        lines.append(
            f"  ({skipped} (model, D, P) points left out: there even the best criterion keeps under half "
            "the unpruned accuracy.)"
        )
    return "\n".join(lines)
