"""Tables (markdown, with ratios and PASS/MISS against the performance contract of docs/design.md) and
PNG plots of the suite's rows. Ratios are always computed from the rows' fields."""

from __future__ import annotations

from pathlib import Path


def _f(value, digits=1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("PASS" if ok else "MISS")


def model_checks(row: dict) -> dict[str, bool | None]:
    time_ratio = _ratio(row["score_ms"], row["floor_ms"])
    mem_ratio = _ratio(row["score_peak_mb"], row["floor_peak_mb"])
    checks = {
        "score/floor time <= 1.05": time_ratio <= 1.05,
        "score/floor peak memory <= 1.10": None if mem_ratio is None else mem_ratio <= 1.10,
    }
    if row["model"] == "resnet50" and row["dtype"] == "bf16" and row["layout"] == "channels_last":
        naive_time = _ratio(row["naive_ms"], row["score_ms"])
        naive_mem = _ratio(row["naive_peak_mb"], row["score_peak_mb"])
        checks["naive/score time >= 2"] = naive_time >= 2
        checks["naive/score peak memory >= 1.5"] = None if naive_mem is None else naive_mem >= 1.5
    return checks


def markdown(rows: list[dict], meta: dict, date: str, quick: bool) -> str:
    models = [r for r in rows if r.get("kind") != "kernel"]
    kernels = [r for r in rows if r.get("kind") == "kernel"]
    out = [
        f"# rgprune_fast benchmark suite{' (quick)' if quick else ''}",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}; triton {meta['triton']}; commit {meta['commit']}; {date}.",
        "Medians, interleaved in one run; `score` per batch of a 4-batch call (structure probe amortised), "
        "`1-batch` a single-batch call incl. the probe; peak memory = `torch.cuda.max_memory_allocated` "
        "(model and inputs included; GPU only).",
        "",
    ]
    if models:
        predicted = any("predicted_ratio" in r for r in models)  # the traffic model's (benchmarks/traffic.py)
        out += [
            "| config | backend | batch | floor ms | score ms | 1-batch ms | naive ms | train ms | score/floor "
            + ("| predicted score/floor " if predicted else "")
            + "| naive/score | floor MB | score MB | naive MB | score/floor mem | naive/score mem | targets |",
            "|" + "---|" * (16 + predicted),
        ]
        for r in models:
            checks = model_checks(r)
            verdicts = " ".join(f"{_verdict(v)}" for v in checks.values())
            out.append(
                f"| {r['config']} | {r['backend']} | {r['batch']} | {_f(r['floor_ms'])} | {_f(r['score_ms'])} "
                f"| {_f(r.get('score_1batch_ms'))} | {_f(r['naive_ms'])} | {_f(r['train_step_ms'])} "
                f"| {_f(_ratio(r['score_ms'], r['floor_ms']), 3)} "
                + (f"| {_f(r.get('predicted_ratio'), 3)} " if predicted else "")
                + f"| {_f(_ratio(r['naive_ms'], r['score_ms']), 2)} "
                f"| {_f(r['floor_peak_mb'], 0)} | {_f(r['score_peak_mb'], 0)} | {_f(r['naive_peak_mb'], 0)} "
                f"| {_f(_ratio(r['score_peak_mb'], r['floor_peak_mb']), 3)} "
                f"| {_f(_ratio(r['naive_peak_mb'], r['score_peak_mb']), 2)} | {verdicts} |"
            )
        out += [
            "",
            "Targets per row, in order: score/floor time <= 1.05; score/floor peak memory <= 1.10; and for "
            "resnet50 bf16 channels_last: naive/score time >= 2; naive/score peak memory >= 1.5."
            + (
                " predicted score/floor: the traffic model's, if both were bandwidth-bound (docs/traffic_model.md)."
                if predicted
                else ""
            ),
            "",
        ]
    if kernels:
        out += [
            "| kernel | shape | dtype | layout | backend | ms | GB/s | copy GB/s | % of copy | target (large) |",
            "|" + "---|" * 10,
        ]
        for r in kernels:
            share = r["gbps"] / r["copy_gbps"]
            verdict = _verdict(share >= 0.85) if r["large"] else "–"
            out.append(
                f"| {r['kernel']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['layout']} | {r['backend']} "
                f"| {r['ms']:.3f} | {r['gbps']:.0f} | {r['copy_gbps']:.0f} | {100 * share:.0f}% | {verdict} |"
            )
        out.append("")
    verdicts = [v for r in models for v in model_checks(r).values() if v is not None]
    verdicts += [r["gbps"] / r["copy_gbps"] >= 0.85 for r in kernels if r["large"]]
    out.append(f"Targets: {sum(verdicts)} PASS, {len(verdicts) - sum(verdicts)} MISS.")
    return "\n".join(out) + "\n"


def plots(rows: list[dict], out: Path) -> list[Path]:
    """time.png and memory.png (bars per config), kernels.png (GB/s vs bytes). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    models = [r for r in rows if r.get("kind") != "kernel"]
    for field, name, unit in (("ms", "time", "ms per batch"), ("peak_mb", "memory", "peak MB")):
        keys = ["floor", "score", "naive"] + (["train_step"] if field == "ms" else [])
        bars = [r for r in models if r[f"score_{field}"] is not None]
        if not bars:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(bars)), 4))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ax.bar([j + i * width for j in range(len(bars))], [r[f"{key}_{field}"] for r in bars], width, label=key)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(bars))])
        ax.set_xticklabels([f"{r['config']}\n{r['backend']} b{r['batch']}" for r in bars], rotation=30, ha="right",
                           fontsize=7)  # fmt: skip
        ax.set_ylabel(unit)
        ax.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    kernels = [r for r in rows if r.get("kind") == "kernel"]
    if kernels:
        fig, ax = plt.subplots(figsize=(7, 4))
        series = sorted({(r["backend"], r["kernel"], r["dtype"]) for r in kernels})
        for backend, kernel, dtype in series:
            pts = sorted((r["bytes"], r["gbps"]) for r in kernels if (r["backend"], r["kernel"], r["dtype"]) ==
                         (backend, kernel, dtype))  # fmt: skip
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{backend} {kernel} {dtype}")
        copy = sorted(
            {(r["bytes"] * 2 / (2 if r["kernel"] == "channel_stats" else 3), r["copy_gbps"]) for r in kernels}
        )
        ax.plot([c[0] for c in copy], [c[1] for c in copy], "k--", label="copy")
        ax.set_xscale("log")
        ax.set_xlabel("bytes moved")
        ax.set_ylabel("GB/s")
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / "kernels.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
