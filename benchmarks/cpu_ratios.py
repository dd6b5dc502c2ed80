"""score() vs the floor vs naive.py on CPU, side by side in one run (DESIGN.md section 4).

    python -m benchmarks.cpu_ratios [--model resnet18] [--batch 32] [--size 64] [--repeats 7]

Prints a markdown table of median times and the ratios score/floor and naive/score. Measured
round-robin (floor, score, naive, floor, ...) after warm-up, so machine drift hits all three alike.
"""

from __future__ import annotations

import argparse
import platform

import torch

import rgprune_fast as rg
from rgprune_fast import naive

from .common import commit, default_modules, floor_step, frozen, import_torchvision, interleaved_medians, versions


def measure(model_name: str, batch: int, size: int, repeats: int, warmup: int, batches_per_call: int) -> dict:
    torch.manual_seed(0)
    model = frozen(getattr(import_torchvision().models, model_name)())
    xs = [torch.randn(batch, 3, size, size) for _ in range(batches_per_call)]
    g = torch.randn(batch, 1000)
    g = g / g.norm(dim=1, keepdim=True)
    scored = default_modules(model, xs[0])

    def floor():
        for x in xs:
            floor_step(model, x, g, scored)

    fns = {
        "floor": floor,
        "score": lambda: rg.score(model, xs, backend="torch"),
        "naive": lambda: naive.score(model, xs),
    }
    t = interleaved_medians(fns, repeats, warmup, torch.device("cpu"))
    return {k: v / batches_per_call for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    print(
        f"# {args.model}, batch {args.batch}, {args.size}x{args.size}, fp32, CPU ({platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(f"{versions()}, commit {commit()}; median of {args.repeats} after {args.warmup} warm-up, interleaved\n")
    print("| call | floor ms/batch | score ms/batch | naive ms/batch | score / floor | naive / score |")
    print("|---|---|---|---|---|---|")
    for n in (1, 4):
        t = measure(args.model, args.batch, args.size, args.repeats, args.warmup, n)
        label = "1 batch (incl. structure probe)" if n == 1 else f"{n} batches, per batch"
        print(
            f"| {label} | {t['floor'] * 1e3:.1f} | {t['score'] * 1e3:.1f} | {t['naive'] * 1e3:.1f} | "
            f"{t['score'] / t['floor']:.3f} | {t['naive'] / t['score']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
