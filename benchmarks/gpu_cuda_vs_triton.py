"""CUDA kernels of the extension vs the Triton kernels (and the torch backend) on a GPU.

    PYTHONPATH=. python -m benchmarks.gpu_cuda_vs_triton [--quick] [--csv out.csv]

(a) each reduction op on the same shapes, layouts and dtypes for every backend that loads here:
    GB/s (bytes read + written / time) and the ratio to the device's copy bandwidth (a same-sized
    tensor copy); target: CUDA within 10 % of Triton's GB/s or faster;
(b) score() end to end on torchvision ResNet-50 (bf16, channels_last) per backend vs the floor.
Kernel times: CUDA events around a loop of calls, median of 5, backends interleaved.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import sys

import torch

import rgprune_fast as rg
from rgprune_fast.backends import load_backend, why_unavailable
from rgprune_fast.backends.extension import loader

from .common import commit, default_modules, floor_step, frozen, import_torchvision, interleaved_medians, versions

DEV = torch.device("cuda")
SHAPES = [(64, 256, 28, 28), (128, 64, 112, 112), (256, 1024, 14, 14), (64, 2048, 7, 7)]


def event_time(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def interleaved_events(fns: dict, iters: int, repeats: int = 5) -> dict:
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(event_time(fn, iters))
    return {k: statistics.median(v) for k, v in times.items()}


def one_case(backends: dict, shape, dtype, layout: str, fmt, iters: int) -> list[dict]:
    x = torch.randn(shape, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
    dy, r = torch.randn_like(x), torch.relu(x)
    c = shape[1]
    mean, scale, shift = (torch.randn(c, device=DEV) for _ in range(3))
    copy_dst = torch.empty_like(x)
    ops = {  # op -> (tensors moved, call)
        "channel_stats": (2, lambda b: b.channel_stats(x, dy, 1)),
        "batchnorm_stats": (3, lambda b: b.batchnorm_stats(x, dy, mean, scale, shift, True)),
        "relu_stats": (3, lambda b: b.relu_stats(r, dy, None, 1, True)),
    }
    fns = {("copy", "-"): lambda: copy_dst.copy_(x)}
    for op, (_, call) in ops.items():
        for name, b in backends.items():
            fns[(op, name)] = lambda call=call, b=b: call(b)
    t = interleaved_events(fns, iters)
    nbytes = x.numel() * x.element_size()
    copy_gbps = 2 * nbytes / t[("copy", "-")] / 1e9
    rows = []
    for op, (tensors, _) in ops.items():
        for name in backends:
            gbps = tensors * nbytes / t[(op, name)] / 1e9
            rows.append(
                dict(
                    op=op,
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype).replace("torch.", ""),
                    layout=layout,
                    backend=name,
                    us=t[(op, name)] * 1e6,
                    gbps=gbps,
                    of_copy=gbps / copy_gbps,
                )
            )
    return rows


def kernels(backends: dict, shapes, dtypes, iters: int) -> list[dict]:
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
                rows += one_case(backends, shape, dtype, layout, fmt, iters)
    return rows


def scores(backends: dict, batch: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = frozen(import_torchvision().models.resnet50()).to(DEV, torch.bfloat16)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=DEV, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last
    )
    g = torch.randn(batch, 1000, device=DEV, dtype=torch.bfloat16)
    scored = default_modules(model, x)
    fns = {"floor": lambda: floor_step(model, x, g, scored)}
    for name in backends:
        fns[f"score {name}"] = lambda name=name: rg.score(model, [x, x, x, x], backend=name)
    t = interleaved_medians(fns, repeats, 2, DEV)
    t = {k: (v if k == "floor" else v / 4) for k, v in t.items()}  # score: 4 batches per call
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    ext = loader.load()
    backends = {}
    for name in ("cuda", "triton", "torch"):
        reason = why_unavailable(name, DEV)
        if reason is None:
            backends[name] = load_backend(name, DEV)
        else:
            print(f"(backend {name!r} not measured: {reason})")
    shapes = SHAPES[:1] if args.quick else SHAPES
    dtypes = (torch.bfloat16,) if args.quick else (torch.float32, torch.bfloat16)
    print(f"# CUDA extension vs Triton on {torch.cuda.get_device_name()}")
    print(f"{versions()}, extension {ext.how}, commit {commit()}, {datetime.date.today().isoformat()}")
    print(f"command: python -m benchmarks.gpu_cuda_vs_triton {' '.join(sys.argv[1:])}".rstrip() + "\n")
    rows = kernels(backends, shapes, dtypes, 20 if args.quick else 100)
    names = list(backends)
    print("| op | shape | dtype | layout | " + " | ".join(f"{n} GB/s" for n in names) + " | cuda / triton |")
    print("|---|---|---|---|" + "---|" * (len(names) + 1))
    keyed = {(r["op"], r["shape"], r["dtype"], r["layout"], r["backend"]): r for r in rows}
    for key in dict.fromkeys((r["op"], r["shape"], r["dtype"], r["layout"]) for r in rows):
        cells = [f"{keyed[(*key, n)]['gbps']:.0f} ({keyed[(*key, n)]['of_copy']:.0%})" for n in names]
        ratio = (
            f"{keyed[(*key, 'cuda')]['gbps'] / keyed[(*key, 'triton')]['gbps']:.2f}"
            if "cuda" in backends and "triton" in backends
            else "-"
        )
        print(f"| {' | '.join(key)} | {' | '.join(cells)} | {ratio} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    batch, size = (8, 64) if args.quick else (64, 224)
    t = scores(backends, batch, size, 3 if args.quick else 9)
    print(f"\n## score(), ResNet-50 bf16 channels_last, batch {batch}, {size}x{size} (4 batches per call)\n")
    print("| | ms/batch | / floor |")
    print("|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v * 1e3:.2f} | {v / t['floor']:.3f} |")


if __name__ == "__main__":
    main()
