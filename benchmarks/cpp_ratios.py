"""The C++ extension on CPU, measured side by side with the torch backend in one run.

    python -m benchmarks.cpp_ratios [--repeats 11] [--warmup 2] [--quick]

(a) the reductions on [64, 256, 28, 28] fp32, NCHW and channels_last: the generic one (channel_stats)
    and the fused BatchNorm / ReLU backward variants (which also write dz / dx), C++ vs torch backend;
(b) score() on torchvision ResNet-18 (batch 32, 64x64, fp32) with backend="cpp" vs "torch" vs the
    floor vs naive.py, 1 batch per call and 4 batches per call.
Every table is measured round-robin (one call of each, repeated) after warm-up; medians are shown.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch

import rgprune_fast as rg
from rgprune_fast.backends import load_backend
from rgprune_fast.backends.extension import loader
from rgprune_fast.scorers import naive

from .common import commit, default_modules, floor_step, frozen, import_torchvision, interleaved_medians, versions

CPU = torch.device("cpu")


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def layout_rows(layout: str, x: torch.Tensor, mean, scale, shift, repeats: int, warmup: int) -> list[str]:
    torch_b, cpp_b = load_backend("torch", CPU), load_backend("cpp", CPU)
    dy = torch.randn_like(x)
    r = torch.relu(x)
    calls = {
        "channel_stats": lambda b: b.channel_stats(x, dy, 1),
        "batchnorm_stats (writes dz)": lambda b: b.batchnorm_stats(x, dy, mean, scale, shift, True),
        "relu_stats (writes dx)": lambda b: b.relu_stats(r, dy, None, 1, True),
    }
    fns = {}
    for op, call in calls.items():
        fns[(op, "torch")] = lambda call=call: call(torch_b)
        fns[(op, "cpp")] = lambda call=call: call(cpp_b)
    t = interleaved_medians(fns, repeats, warmup, CPU)
    nbytes = x.numel() * x.element_size()
    rows = []
    for op in calls:
        moved = nbytes * (2 if op == "channel_stats" else 3)
        tt, tc = t[(op, "torch")], t[(op, "cpp")]
        gbps = moved / tc / 1e9
        rows.append(f"| {op} | {layout} | {tt * 1e3:.2f} | {tc * 1e3:.2f} | **{tt / tc:.2f}** | {gbps:.1f} |")
    return rows


def reductions(shape, repeats: int, warmup: int) -> list[str]:
    c = shape[1]
    mean, scale, shift = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.randn(shape).contiguous(memory_format=fmt)
        rows += layout_rows(layout, x, mean, scale, shift, repeats, warmup)
    return rows


def scores(batch: int, size: int, repeats: int, warmup: int, batches_per_call: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = frozen(import_torchvision().models.resnet18())
    xs = [torch.randn(batch, 3, size, size) for _ in range(batches_per_call)]
    g = torch.randn(batch, 1000)
    g = g / g.norm(dim=1, keepdim=True)
    scored = default_modules(model, xs[0])

    def floor():
        for x in xs:
            floor_step(model, x, g, scored)

    fns = {
        "floor": floor,
        "score cpp": lambda: rg.score(model, xs, backend="cpp"),
        "score torch": lambda: rg.score(model, xs, backend="torch"),
        "naive": lambda: naive.score(model, xs),
    }
    t = interleaved_medians(fns, repeats, warmup, CPU)
    return {k: v / batches_per_call for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (CI: the script runs)")
    ap.add_argument("--part", choices=("all", "reductions", "score"), default="all")
    args = ap.parse_args()
    shape, batch, size = ((4, 16, 8, 8), 2, 32) if args.quick else ((64, 256, 28, 28), 32, 64)
    repeats, warmup = (1, 0) if args.quick else (args.repeats, args.warmup)
    ext = loader.load()
    print(f"# C++ extension vs torch backend on CPU ({machine()})")
    print(
        f"{versions()}, extension {ext.how} ({ext.cpu_isa} kernels), commit {commit()}, "
        f"{datetime.date.today().isoformat()}"
    )
    print(f"command: python -m benchmarks.cpp_ratios {' '.join(sys.argv[1:])}".rstrip())
    print(f"median of {repeats} after {warmup} warm-up, interleaved\n")
    if args.part in ("all", "reductions"):
        print(f"## Reductions, {list(shape)} fp32\n")
        print("| op | layout | torch ms | cpp ms | torch / cpp | cpp GB/s |")
        print("|---|---|---|---|---|---|")
        for row in reductions(shape, repeats, warmup):
            print(row, flush=True)
    if args.part in ("all", "score"):
        score_table(batch, size, repeats, warmup)


def score_table(batch: int, size: int, repeats: int, warmup: int) -> None:
    print(f"\n## score(), ResNet-18, batch {batch}, {size}x{size}, fp32\n")
    print("| call | floor ms/batch | score cpp | score torch | naive | cpp / floor | torch / floor | naive / cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (1, 4):
        t = scores(batch, size, repeats, warmup, n)
        label = "1 batch (incl. structure probe)" if n == 1 else f"{n} batches, per batch"
        f, c, tr, nv = t["floor"], t["score cpp"], t["score torch"], t["naive"]
        print(
            f"| {label} | {f * 1e3:.1f} | {c * 1e3:.1f} | {tr * 1e3:.1f} | {nv * 1e3:.1f} | **{c / f:.3f}** | "
            f"{tr / f:.3f} | **{nv / c:.2f}** |",
            flush=True,
        )


if __name__ == "__main__":
    main()
