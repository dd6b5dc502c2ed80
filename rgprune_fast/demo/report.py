"""The demo's outputs in text: the CSVs, the accuracy and cost tables (Markdown, also printed) and a
short, computed summary of what the numbers say about the paper's claims and about ``mc_gradient``."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

from .experiment import MC_METHOD, Cost, Result, variant_label

RUN_FIELDS = ("model", "data_size", "data_size_label", "method", "gradient", "normalize")  # both CSVs start so
CSV_FIELDS = (
    *RUN_FIELDS,
    "variant",
    "pruned",
    "units",
    "pruned_fraction",
    "accuracy",
    "steps",
)
COST_FIELDS = (
    *RUN_FIELDS,
    "steps",
    "forward_examples",
    "backward_examples",
    "forward_equivalents",
    "seconds",
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
                    r.steps,
                ]
            )


def write_costs_csv(costs: Sequence[Cost], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COST_FIELDS)
        for c in costs:
            row = [c.model, c.data_size, c.data_size_label, c.method, c.gradient, int(c.normalize), c.steps]
            writer.writerow(row + [c.forward_examples, c.backward_examples, c.forward_equivalents, f"{c.seconds:.3f}"])


def read_csv(path: Path) -> list[Result]:
    """The rows of a ``results.csv`` written by :func:`write_csv` (to re-plot or analyse a run)."""
    with open(path, newline="") as f:
        return [
            Result(r["model"], int(r["data_size"]), r["data_size_label"], r["method"], r["gradient"],
                   bool(int(r["normalize"])), int(r["pruned"]), int(r["units"]), float(r["accuracy"]), int(r["steps"]))
            for r in csv.DictReader(f)
        ]  # fmt: skip


def read_costs_csv(path: Path) -> list[Cost]:
    """The rows of a ``costs.csv`` written by :func:`write_costs_csv`."""
    with open(path, newline="") as f:
        return [
            Cost(r["model"], int(r["data_size"]), r["data_size_label"], r["method"], r["gradient"],
                 bool(int(r["normalize"])), int(r["steps"]), int(r["forward_examples"]), int(r["backward_examples"]),
                 float(r["seconds"]))
            for r in csv.DictReader(f)
        ]  # fmt: skip


def final(results: Sequence[Result]) -> list[Result]:
    """``results`` without ``mc_gradient``'s snapshots: only its keep probabilities after its last step."""
    last: dict[tuple, int] = defaultdict(int)
    for r in results:
        key = (r.model, r.data_size_label, r.method, r.gradient)
        last[key] = max(last[key], r.steps)
    return [r for r in results if r.steps == last[(r.model, r.data_size_label, r.method, r.gradient)]]


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


def curves_of(results: Sequence[Result]) -> dict[tuple, dict[int, float]]:
    """(model, D label, method, gradient, normalize) -> {P: accuracy}."""
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in results:
        curves[(r.model, r.data_size_label, r.method, r.gradient, r.normalize)][r.pruned] = r.accuracy
    return curves


def mean_pruned(curve: dict[int, float]) -> float:
    """Mean accuracy over the pruning levels P > 0 (the area under the pruning curve, normalised)."""
    return mean(a for p, a in curve.items() if p > 0)


def _models(results):
    return list(dict.fromkeys(r.model for r in results))


def _sizes(results):
    return list(dict.fromkeys((r.data_size_label, r.data_size) for r in results))


def accuracy_table(results: Sequence[Result], size_label: str) -> str:
    """Test accuracy (%) after pruning P units, at one data size, every model side by side."""
    curves = curves_of(results)
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
    curves = curves_of(results)
    columns = [(m, label, d) for m in _models(results) for label, d in _sizes(results)]
    header = ["method"] + [
        f"{MODEL_TITLES.get(m, m)} D={label if label != 'all' else f'all ({d})'}" for m, label, d in columns
    ]
    rows = []
    for method, gradient, normalize in _variants(results):
        row = [variant_label(method, gradient, normalize)]
        row += [f"{100 * mean_pruned(curves[(m, label, method, gradient, normalize)]):.1f}" for m, label, _ in columns]
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
            diffs.append(100 * (mean_pruned(other) - mean_pruned(curve)))
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
    """What the curves say about the paper's claims, computed (mean accuracy over the pruning levels),
    on the Taylor criteria (the paper's subject); ``mc_gradient`` has its own summary (:func:`mc_claims`)."""
    curves = curves_of([r for r in final(results) if r.method != MC_METHOD])
    lines = [
        "- random vs label gradient: " + _describe(_paired(curves, "gradient"), "random", "label") + ".",
        "- normalisation: " + _describe(_paired(curves, "normalize"), "norm", "no norm") + ".",
    ]
    by_method: dict[str, list[float]] = defaultdict(list)
    for (_, _, method, _, _), curve in curves.items():
        by_method[method].append(100 * mean_pruned(curve))
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
        # (levels are the same for every method: they depend on the unit count only)
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


def _mean(values) -> float:
    values = list(values)
    return mean(values) if values else float("nan")


def taylor_seconds(costs: Sequence[Cost], model: str, label: str) -> float:
    """Mean wall time of the Taylor passes (every gradient and normalisation) of ``model`` at D ``label``."""
    return _mean(c.seconds for c in costs if c.model == model and c.data_size_label == label and c.method == "taylor")


TAYLOR_SHOWN = (("taylorfo_sq", "random", True), ("taylorfo_sq", "label", False), ("molchanov_bn", "label", False))


def mc_curves(results: Sequence[Result]) -> dict[tuple, dict[int, float]]:
    """``mc_gradient``'s curves, snapshots included: (model, D label, gradient, steps) -> {P: accuracy}."""
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in results:
        if r.method == MC_METHOD:
            curves[(r.model, r.data_size_label, r.gradient, r.steps)][r.pruned] = r.accuracy
    return curves


def compute_table(results: Sequence[Result], costs: Sequence[Cost]) -> str:
    """Mean accuracy over the pruning levels against compute: the Taylor criteria at every D (a pass
    costs 3 forward-equivalents per example), ``mc_gradient`` after each snapshot step at the largest D."""
    curves = curves_of([r for r in results if r.method != MC_METHOD])
    mc = mc_curves(results)
    models = _models(results)
    header = ["scorer", "D", "steps", "forward-equiv."]
    header += [f"{MODEL_TITLES.get(m, m)} {what}" for m in models for what in ("s", "mean acc. %")]
    pass_seconds = defaultdict(list)
    for c in costs:
        if c.method == "taylor":
            pass_seconds[(c.model, c.data_size_label, c.gradient, c.normalize)].append(c.seconds)
    rows = []
    for method, gradient, normalize in TAYLOR_SHOWN:
        for label, d in _sizes(results):
            row = [variant_label(method, gradient, normalize), label, "-", f"{3 * d:,}"]
            for m in models:
                seconds = _mean(pass_seconds[(m, label, gradient, normalize)])
                row += [f"{seconds:.2f}", _pct(curves.get((m, label, method, gradient, normalize)))]
            rows.append(row)
    for label, d in _sizes(results):  # the best of all 20 Taylor variants, chosen after the fact (an upper bound)
        row = ["best Taylor variant (chosen on the test set)", label, "-", f"{3 * d:,}"]
        for m in models:
            best = max((c for k, c in curves.items() if k[:2] == (m, label)), key=mean_pruned, default=None)
            row += [f"{taylor_seconds(costs, m, label):.2f}", _pct(best)]
        rows.append(row)
    runs = {(c.model, c.data_size_label, c.gradient, c.steps): c for c in costs if c.method == MC_METHOD}
    for label, gradient, steps in dict.fromkeys(key[1:] for key in runs):  # in run order
        first = next(runs[(m, label, gradient, steps)] for m in models if (m, label, gradient, steps) in runs)
        row = [variant_label(MC_METHOD, gradient, False), label, str(steps), f"{first.forward_equivalents:,}"]
        for m in models:
            run = runs.get((m, label, gradient, steps))
            row += [f"{run.seconds:.1f}" if run else "-", _pct(mc.get((m, label, gradient, steps)))]
        rows.append(row)
    return _markdown(header, rows)


def _pct(curve) -> str:
    return f"{100 * mean_pruned(curve):.1f}" if curve else "-"


def mc_claims(results: Sequence[Result], costs: Sequence[Cost]) -> str:
    """How ``mc_gradient`` compares with the Taylor criteria: at its full budget, at equal compute, in
    wall time (mean accuracy over the pruning levels; forward-equivalents from :class:`Cost`)."""
    mc_costs = [c for c in costs if c.method == MC_METHOD]
    if not mc_costs:
        return f"- {MC_METHOD} was not run."
    taylor = curves_of([r for r in results if r.method != MC_METHOD])
    mc = mc_curves(results)
    reference = TAYLOR_SHOWN[0]
    ref_name = variant_label(*reference)
    lines = []
    pairs = []
    for (model, label, gradient, steps), curve in mc.items():
        last = max(s for (m, lab, g, s) in mc if (m, lab, g) == (model, label, gradient))
        other = taylor.get((model, label, *reference))
        if steps == last and other:
            pairs.append(100 * (mean_pruned(curve) - mean_pruned(other)))
    if pairs:
        lines.append(
            f"- {MC_METHOD} after all its steps vs {ref_name} (the library's default), every model, D and "
            f"gradient: " + _describe(pairs, MC_METHOD, ref_name) + "."
        )
    largest = max(c.data_size for c in mc_costs)
    for model in _models(results):
        label = next(c.data_size_label for c in mc_costs if c.data_size == largest)
        passes = [c for c in costs if c.method == "taylor" and c.model == model and c.data_size_label == label]
        if not passes:
            continue
        taylor_fe = passes[0].forward_equivalents
        taylor_s = _mean(c.seconds for c in passes)
        best = max((c for k, c in taylor.items() if k[:2] == (model, label)), key=mean_pruned)
        ref = taylor.get((model, label, *reference))
        for gradient in dict.fromkeys(c.gradient for c in mc_costs):
            mine = [c for c in mc_costs if c.model == model and c.data_size_label == label and c.gradient == gradient]
            if not mine:
                continue
            full, equal = mine[-1], min(mine, key=lambda c: abs(c.forward_equivalents - taylor_fe))
            name = f"{MODEL_TITLES.get(model, model)}, D={label}, {variant_label(MC_METHOD, gradient, False)}"
            lines.append(
                f"- {name}: {full.steps} steps ({full.forward_equivalents / taylor_fe:.3g}x the compute of a Taylor "
                f"pass, {full.seconds / taylor_s:.3g}x its wall time): "
                f"{_pct(mc[(model, label, gradient, full.steps)])} % mean accuracy; at about equal compute "
                f"({equal.steps} steps, {equal.forward_equivalents / taylor_fe:.2g}x): "
                f"{_pct(mc[(model, label, gradient, equal.steps)])} %; {ref_name} {_pct(ref)} %, "
                f"best Taylor variant {_pct(best)} %."
            )
    return "\n".join(lines)
