"""The model-zoo table: ``RGPRUNE_ZOO_REPORT=rows.jsonl python -m pytest -q tests/test_zoo.py`` writes one
row per model: units, the worst relative error against the oracle in float32 and, where the model is also
checked as a float64 model, in float64 (a float32 entry of 0: every unit was checked in float64 only),
seconds of one default ``score`` call and of the floor (best of 3 each). ``python -m
benchmarks.zoo_table rows.jsonl`` prints the markdown table. Times on CPU are ratios measured side by side
in one run, at the zoo's tiny inputs (two examples), where the structure probe (one more forward) weighs
as much as a forward + backward."""

from __future__ import annotations

import json
import statistics
import sys


def table(rows: list[dict]) -> str:
    lines = [
        "| model | unit specs | units | worst rel. error, float32 | float64 | score / floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["score_s"] / r["floor_s"] if r["floor_s"] else float("nan")
        f64 = r.get("worst_rel_err_float64")
        f64 = "–" if f64 is None else f"{f64:.1e}"
        lines.append(f"| {r['model']} | {r['specs']} | {r['units']} | {r['worst_rel_err']:.1e} | {f64} | {ratio:.2f} |")
    ratios = [r["score_s"] / r["floor_s"] for r in rows if r["floor_s"]]
    worst = max(r["worst_rel_err"] for r in rows)
    lines.append(f"| **{len(rows)} models** | | | max {worst:.1e} | median {statistics.median(ratios):.2f} |")
    return "\n".join(lines)


def families(rows: list[dict]) -> str:
    """One line per family (the prefix of the model id): models, units, worst errors, median ratio."""
    lines = [
        "| family | models | units | worst rel. error, float32 | float64 | score / floor (median) |",
        "|---|---|---|---|---|---|",
    ]
    for family in dict.fromkeys(r["model"].split("-")[0] for r in rows):
        group = [r for r in rows if r["model"].split("-")[0] == family]
        f64 = [r["worst_rel_err_float64"] for r in group if r.get("worst_rel_err_float64") is not None]
        ratio = statistics.median(r["score_s"] / r["floor_s"] for r in group if r["floor_s"])
        lines.append(
            f"| {family} | {len(group)} | {sum(r['units'] for r in group)} | "
            f"{max(r['worst_rel_err'] for r in group):.1e} | {max(f64):.1e} | {ratio:.2f} |"
            if f64
            else f"| {family} | {len(group)} | {sum(r['units'] for r in group)} | "
            f"{max(r['worst_rel_err'] for r in group):.1e} | – | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.zoo_table rows.jsonl")
    with open(argv[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(families(rows))
    print()
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
