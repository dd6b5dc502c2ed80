"""The transformer demo's outputs in text: results.csv, ground_truth.csv, the Markdown tables and a
computed verdict on each claim."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from statistics import mean

import torch

from .experiment import BOTH, Outcome, Row
from .physical import PhysicalCheck
from .units import HEADS, NEURONS

SCORER_NOTES = {
    "taylorfo_sq_rand_norm": "rgprune_fast `taylorfo_sq` (default), random gradient normalised per example: label-free",
    "taylorfo_abs_rand_norm": "rgprune_fast `taylorfo_abs`, random gradient normalised per example: label-free",
    "random": "uniform random scores",
    "weight": "L2 norm of the unit's output-projection columns",
    "activation": "mean |x| of the unit's channels",
    "wanda": "Wanda: Σ |W|·‖x‖ over the unit's columns",
    "llm_pruner": "LLM-Pruner: |Σ w·∂L/∂w| over the unit's weight group, label-free loss ⟨e, r⟩",
}
TIE = 0.002  # mean cosines closer than this count as a tie in the verdicts


def write_csv(rows: Sequence[Row], path: Path) -> None:
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in rows:
            values = asdict(row)
            writer.writerow([f"{values[n]:.6f}" if isinstance(values[n], float) else values[n] for n in names])


def read_csv(path: Path) -> list[Row]:
    """The rows of a results.csv written by :func:`write_csv`."""
    types = {f.name: f.type for f in fields(Row)}
    convert = {"str": str, "int": int, "float": float}
    with open(path, newline="") as f:
        return [Row(**{k: convert[types[k]](v) for k, v in r.items()}) for r in csv.DictReader(f)]


def write_ground_truth_csv(outcome: Outcome, path: Path) -> None:
    """One line per head: its layer, index, measured damage and every scorer's score."""
    scorers = list(outcome.scores)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", "damage", *scorers])
        for layer, (key, damage) in enumerate(outcome.damage.items()):
            for head, value in enumerate(damage.tolist()):
                scores = [f"{outcome.scores[s][key][head].item():.6g}" for s in scorers]
                writer.writerow([layer, head, f"{value:.6e}", *scores])


def _find(rows: Sequence[Row], scorer: str, kind: str, allocation: str, ratio: float | None = None) -> Row:
    for r in rows:
        same_ratio = ratio is None or (r.heads_ratio if kind == HEADS else r.neurons_ratio) == ratio
        if r.scorer == scorer and r.kind == kind and r.allocation == allocation and same_ratio:
            return r
    raise KeyError((scorer, kind, allocation, ratio))


def _scorers(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.scorer for r in rows))


def _allocations(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.allocation for r in rows))


def _ratios(rows: Sequence[Row], kind: str) -> list[float]:
    return sorted({r.heads_ratio if kind == HEADS else r.neurons_ratio for r in rows if r.kind == kind})


def _bold_best(values: list[float], text: list[str]) -> list[str]:
    best = max(values)
    return [f"**{t}**" if v == best else t for v, t in zip(values, text)]


def headline_table(rows: Sequence[Row], outcome: Outcome) -> str:
    """Every scorer at the headline budget (heads and neurons pruned together)."""
    scorers, allocations = _scorers(rows), _allocations(rows)
    cells = {(s, a): _find(rows, s, BOTH, a) for s in scorers for a in allocations}
    columns = []
    for a in allocations:
        for metric in ("cosine", "spearman"):
            values = [getattr(cells[(s, a)], metric) for s in scorers]
            columns.append(_bold_best(values, [f"{v:.3f}" for v in values]))
    header = "| scorer | " + " | ".join(f"{a}: mean cosine | {a}: similarity ρ" for a in allocations) + " |"
    lines = [header, "|---" * (1 + 2 * len(allocations)) + "|"]
    for i, s in enumerate(scorers):
        lines.append(f"| `{s}` | " + " | ".join(c[i] for c in columns) + " |")
    return "\n".join(lines)


def ratio_table(rows: Sequence[Row], kind: str, allocation: str) -> str:
    """Mean cosine / similarity ρ of every scorer at every ratio of ``kind`` pruned alone."""
    scorers, ratios = _scorers(rows), _ratios(rows, kind)
    found = {(s, r): _find(rows, s, kind, allocation, r) for s in scorers for r in ratios}
    lines = [
        "| scorer | " + " | ".join(f"{100 * r:.0f} %" for r in ratios) + " | mean |",
        "|---" * (len(ratios) + 2) + "|",
    ]
    best = {r: max(found[(s, r)].cosine for s in scorers) for r in ratios}
    means = {s: mean(found[(s, r)].cosine for r in ratios) for s in scorers}
    for s in scorers:
        cells = []
        for r in ratios:
            row = found[(s, r)]
            text = f"{row.cosine:.3f} / {row.spearman:.3f}"
            cells.append(f"**{text}**" if row.cosine == best[r] else text)
        text = f"{means[s]:.3f}"
        cells.append(f"**{text}**" if means[s] == max(means.values()) else text)
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_cosine(rows: Sequence[Row], scorer: str, kind: str, allocation: str) -> float:
    return mean(r.cosine for r in rows if r.scorer == scorer and r.kind == kind and r.allocation == allocation)


def allocation_table(rows: Sequence[Row]) -> str:
    """Per scorer and kind: the mean cosine over the ratios, global against uniform."""
    scorers, allocations = _scorers(rows), _allocations(rows)
    header = "| scorer | " + " | ".join(f"{k}: {a}" for k in (HEADS, NEURONS) for a in allocations) + " |"
    lines = [header, "|---" * (1 + 2 * len(allocations)) + "|"]
    for s in scorers:
        values = [mean_cosine(rows, s, k, a) for k in (HEADS, NEURONS) for a in allocations]
        lines.append(f"| `{s}` | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def correlation_table(correlations: dict[str, dict]) -> str:
    lines = [
        "| scorer | ρ over all heads | mean ρ within a layer |",
        "|---|---|---|",
    ]
    best_all = max(c["all"] for c in correlations.values())
    best_within = max(c["within_layer"] for c in correlations.values())
    for s, c in correlations.items():
        a = f"{c['all']:+.3f}"
        w = f"{c['within_layer']:+.3f}"
        lines.append(
            f"| `{s}` | {f'**{a}**' if c['all'] == best_all else a} | "
            f"{f'**{w}**' if c['within_layer'] == best_within else w} |"
        )
    return "\n".join(lines)


def damage_summary(damage: dict[str, torch.Tensor]) -> str:
    """A few sentences on how the measured damage is distributed over the heads and layers."""
    flat = torch.cat(list(damage.values()))
    per_layer = [float(d.mean()) for d in damage.values()]
    order = flat.argsort(descending=True).tolist()
    per = len(next(iter(damage.values())))
    top = ", ".join(f"L{i // per}.H{i % per} ({flat[i].item():.4f})" for i in order[:5])
    small = int((flat < 1e-3).sum())
    return (
        f"Damage (1 − mean cosine with one head removed) ranges from {flat.min().item():.5f} to "
        f"{flat.max().item():.4f} (median {flat.median().item():.5f}); {small} of {len(flat)} heads cost less "
        f"than 0.001. Mean per layer: {', '.join(f'{v:.4f}' for v in per_layer)}. The most damaging: {top}."
    )


def physical_table(check: PhysicalCheck) -> str:
    lines = [
        "| model | parameters | mean cosine | similarity ρ |",
        "|---|---|---|---|",
        f"| unpruned | {check.params_before:,} | 1 | 1 |",
        f"| masked (hooks) | {check.params_before:,} | {check.masked_cosine:.6f} | {check.masked_spearman:.6f} |",
        f"| sliced, this process | {check.params_after:,} | {check.sliced_cosine:.6f} | {check.sliced_spearman:.6f} |",
        f"| saved, reloaded in a fresh process | {check.params_reloaded:,} | {check.reloaded_cosine:.6f} | "
        f"{check.reloaded_spearman:.6f} |",
    ]
    return "\n".join(lines)


def _versus(rows: Sequence[Row], a: str, b: str, kind: str) -> tuple[float, int, int]:
    """Mean cosine difference a − b over every ratio and allocation of ``kind`` pruned alone, and in
    how many of those settings a is better / worse (by more than :data:`TIE`)."""
    pairs = [
        (ra.cosine, _find(rows, b, kind, ra.allocation, ra.heads_ratio if kind == HEADS else ra.neurons_ratio).cosine)
        for ra in rows
        if ra.scorer == a and ra.kind == kind
    ]
    diffs = [x - y for x, y in pairs]
    return mean(diffs), sum(d > TIE for d in diffs), sum(d < -TIE for d in diffs)


def _yes_no(diff: float, wins: int, losses: int) -> str:
    if abs(diff) <= TIE and min(wins, losses) == 0 and max(wins, losses) <= 1:
        return "tie"
    return "yes" if diff > 0 and wins > losses else "no" if diff < 0 and losses > wins else "mixed"


def verdicts(rows: Sequence[Row], outcome: Outcome, check: PhysicalCheck | None, rg_scorers: Sequence[str]) -> str:
    """One line per claim, computed from the numbers."""
    lines = []
    best_rg = max(rg_scorers, key=lambda s: _find(rows, s, BOTH, "global").cosine)
    baselines = [s for s in _scorers(rows) if s not in rg_scorers]
    settings = len([r for r in rows if r.scorer == best_rg and r.kind == HEADS])
    for kind in (HEADS, NEURONS):
        for other in baselines:
            diff, wins, losses = _versus(rows, best_rg, other, kind)
            lines.append(
                f"- *`{best_rg}` beats `{other}` on {kind}*: **{_yes_no(diff, wins, losses)}** — mean cosine "
                f"{diff:+.4f} over the {settings} {kind}-only settings (better in {wins}, worse in {losses}, "
                f"within {TIE} in {settings - wins - losses})."
            )
    headline = {s: _find(rows, s, BOTH, "global").cosine for s in _scorers(rows)}
    ranking = sorted(headline, key=headline.get, reverse=True)
    lines.append(
        f"- *At the headline budget (global)*: best `{ranking[0]}` ({headline[ranking[0]]:.3f}), then "
        + ", ".join(f"`{s}` ({headline[s]:.3f})" for s in ranking[1:])
        + "."
    )
    if len(rg_scorers) > 1:
        a, b = rg_scorers[0], rg_scorers[1]
        for kind in (HEADS, NEURONS):
            diff, wins, losses = _versus(rows, a, b, kind)
            lines.append(
                f"- *`{a}` beats `{b}` on {kind}*: **{_yes_no(diff, wins, losses)}** ({diff:+.4f}, better in {wins}, "
                f"worse in {losses})."
            )
    allocations = _allocations(rows)
    if len(allocations) == 2:
        for kind in (HEADS, NEURONS):
            better = [
                s
                for s in _scorers(rows)
                if mean_cosine(rows, s, kind, "global") > mean_cosine(rows, s, kind, "uniform")
            ]
            diff = mean_cosine(rows, best_rg, kind, "global") - mean_cosine(rows, best_rg, kind, "uniform")
            lines.append(
                f"- *Global allocation beats per-layer uniform on {kind}*: for {len(better)} of "
                f"{len(_scorers(rows))} scorers ({', '.join(f'`{s}`' for s in better) or 'none'}); for `{best_rg}` "
                f"by {diff:+.4f} mean cosine."
            )
    if outcome.correlations is not None:
        c = outcome.correlations
        best = max(c, key=lambda s: c[s]["all"])
        lines.append(
            f"- *Head scores agree with the measured damage of removing each head*: `{best_rg}` ρ = "
            f"{c[best_rg]['all']:+.3f} over all heads ({c[best_rg]['within_layer']:+.3f} within a layer); the best "
            f"scorer on this measure is `{best}` (ρ = {c[best]['all']:+.3f}); `weight` {c['weight']['all']:+.3f}, "
            f"`random` {c['random']['all']:+.3f}."
        )
    if check is not None:
        lines.append(
            f"- *The physically pruned model, saved and reloaded in a fresh process, computes what the masked one "
            f"computes*: **{'yes' if check.equal else 'no'}** (largest embedding difference "
            f"{check.max_difference:.1e}; mean cosine {check.reloaded_cosine:.6f} vs {check.masked_cosine:.6f}; "
            f"{check.params_before:,} → {check.params_reloaded:,} parameters, "
            f"−{100 * (1 - check.params_reloaded / check.params_before):.1f} %)."
        )
    return "\n".join(lines)
