"""The model-zoo table: ``RGPRUNE_ZOO_REPORT=rows.jsonl python -m pytest -q tests/test_zoo.py`` writes one
row per model (units, worst relative error against the oracle, seconds of one default ``score`` call
and of the floor, best of 3 each); ``python -m benchmarks.zoo_table rows.jsonl`` prints the markdown
table. Times on CPU are ratios measured side by side in one run, at the zoo's tiny inputs (two examples),
where the structure probe (one more forward) weighs as much as a forward + backward."""

from __future__ import annotations

import json
import statistics
import sys


def table(rows: list[dict]) -> str:
    lines = [
        "| model | unit specs | units | worst rel. error | score / floor |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["score_s"] / r["floor_s"] if r["floor_s"] else float("nan")
        lines.append(f"| {r['model']} | {r['specs']} | {r['units']} | {r['worst_rel_err']:.1e} | {ratio:.2f} |")
    ratios = [r["score_s"] / r["floor_s"] for r in rows if r["floor_s"]]
    worst = max(r["worst_rel_err"] for r in rows)
    lines.append(f"| **{len(rows)} models** | | | max {worst:.1e} | median {statistics.median(ratios):.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.zoo_table rows.jsonl")
    with open(argv[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
