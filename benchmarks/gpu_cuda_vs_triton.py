"""CUDA kernels of the extension vs the Triton kernels (and the torch backend) on a GPU.

    PYTHONPATH=. python -m benchmarks.gpu_cuda_vs_triton [--quick] [--csv out.csv] [--md out.md]
    PYTHONPATH=. python -m benchmarks.gpu_cuda_vs_triton --shapes 256x256x56x56,8x2048x4096 --dtypes bf16 \
        --backends cuda,triton --no-score                  # a reduced set (benchmarks/gpu_session.sh)
    PYTHONPATH=. python -m benchmarks.gpu_cuda_vs_triton --device cpu --shapes 4x16x8x8 --no-score
                                                           # the code path on CPU (cpp, Triton interpreter)

(a) each reduction op on the same shapes, layouts and dtypes for every backend that loads here:
    GB/s (bytes read + written / time) and the ratio to the device's copy bandwidth (a same-sized
    tensor copy); target: CUDA within 10 % of Triton's GB/s or faster. 4-D shapes run NCHW and
    channels_last (channel dim 1); 3-D shapes are ``[N, T, C]`` tokens (channel dim 2, no BatchNorm);
(b) score() end to end on torchvision ResNet-50 (bf16, channels_last) per backend vs the floor.
Kernel times: CUDA events around a loop of calls (on CPU: the wall clock), median of ``--repeats``,
backends interleaved. Each case's table line and CSV rows are written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time

import torch

import rgprune_fast as rg
from rgprune_fast.backends import load_backend, why_unavailable
from rgprune_fast.backends.extension import loader
from rgprune_fast.errors import BackendUnavailableError

from .common import commit, default_modules, floor_step, frozen, import_torchvision, interleaved_medians, versions

SHAPES = [(64, 256, 28, 28), (128, 64, 112, 112), (256, 1024, 14, 14), (64, 2048, 7, 7)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def loop_time(fn, iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn``, over a loop of ``iters`` calls."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def interleaved(fns: dict, iters: int, repeats: int, device: torch.device) -> dict:
    for fn in fns.values():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(loop_time(fn, iters, device))
    return {k: statistics.median(v) for k, v in times.items()}


def layouts(shape) -> list[tuple[str, int, torch.memory_format]]:
    """(layout name, channel dim, memory format) the ops are measured in for ``shape``."""
    if len(shape) == 3:
        return [("tokens", 2, torch.contiguous_format)]
    return [("NCHW", 1, torch.contiguous_format), ("channels_last", 1, torch.channels_last)]


def one_case(backends: dict, shape, dtype, layout: str, cdim: int, fmt, iters: int, repeats: int, device) -> list:
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    dy, r = torch.randn_like(x), torch.relu(x)
    c = shape[cdim]
    mean, scale, shift = (torch.randn(c, device=device) for _ in range(3))
    copy_dst = torch.empty_like(x)
    ops = {  # op -> (tensors moved, call)
        "channel_stats": (2, lambda b: b.channel_stats(x, dy, cdim)),
        "relu_stats": (3, lambda b: b.relu_stats(r, dy, None, cdim, True)),
    }
    if cdim == 1:
        ops["batchnorm_stats"] = (3, lambda b: b.batchnorm_stats(x, dy, mean, scale, shift, True))
    fns = {("copy", "-"): lambda: copy_dst.copy_(x)}
    for op, (_, call) in ops.items():
        for name, b in backends.items():
            fns[(op, name)] = lambda call=call, b=b: call(b)
    t = interleaved(fns, iters, repeats, device)
    nbytes = x.numel() * x.element_size()
    copy_gbps = 2 * nbytes / t[("copy", "-")] / 1e9
    rows = []
    for op, (tensors, _) in ops.items():
        for name in backends:
            gbps = tensors * nbytes / t[(op, name)] / 1e9
            rows.append(dict(op=op, shape="x".join(map(str, shape)), dtype=str(dtype).replace("torch.", ""),
                             layout=layout, backend=name, us=t[(op, name)] * 1e6, gbps=gbps,
                             of_copy=gbps / copy_gbps, copy_gbps=copy_gbps))  # fmt: skip
    return rows


def cases(shapes, dtypes):
    for shape in shapes:
        for dtype in dtypes:
            for layout, cdim, fmt in layouts(shape):
                yield shape, dtype, layout, cdim, fmt


def kernels(backends: dict, shapes, dtypes, iters: int, repeats: int = 5, device=None) -> list[dict]:
    device = device or torch.device("cuda")
    rows = []
    for shape, dtype, layout, cdim, fmt in cases(shapes, dtypes):
        rows += one_case(backends, shape, dtype, layout, cdim, fmt, iters, repeats, device)
    return rows


class Table:
    """The markdown table (stdout and ``--md``) and the CSV, a case at a time."""

    def __init__(self, names: list[str], md_path: str | None, csv_path: str | None, header: list[str]):
        self.names, self.md_path, self.csv_path = names, md_path, csv_path
        for path in (md_path, csv_path):
            if path:
                open(path, "w").close()
        ratio = f"{names[0]} / {names[1]}" if len(names) > 1 else "-"
        columns = ["op", "shape", "dtype", "layout", "copy GB/s", *(f"{n} GB/s (of copy)" for n in names), ratio]
        self.emit([*header, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)])

    def emit(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)
        if self.md_path:
            with open(self.md_path, "a") as f:
                f.write("\n".join(lines) + "\n")

    def add(self, rows: list[dict]) -> None:
        keyed = {(r["op"], r["backend"]): r for r in rows}
        lines = []
        for op in dict.fromkeys(r["op"] for r in rows):
            first = keyed[(op, self.names[0])]
            cells = [f"{keyed[(op, n)]['gbps']:.4g} ({keyed[(op, n)]['of_copy']:.0%})" for n in self.names]
            ratio = f"{first['gbps'] / keyed[(op, self.names[1])]['gbps']:.2f}" if len(self.names) > 1 else "-"
            cells = [op, first["shape"], first["dtype"], first["layout"], f"{first['copy_gbps']:.4g}", *cells, ratio]
            lines.append("| " + " | ".join(cells) + " |")
        self.emit(lines)
        if self.csv_path:
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                if f.tell() == 0:
                    writer.writeheader()
                writer.writerows(rows)


def scores(backends: dict, batch: int, size: int, repeats: int, device=None) -> dict:
    device = device or torch.device("cuda")
    torch.manual_seed(0)
    model = frozen(import_torchvision().models.resnet50()).to(device, torch.bfloat16)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last
    )
    g = torch.randn(batch, 1000, device=device, dtype=torch.bfloat16)
    scored = default_modules(model, x)
    fns = {"floor": lambda: floor_step(model, x, g, scored)}
    for name in backends:
        fns[f"score {name}"] = lambda name=name: rg.score(model, [x, x, x, x], backend=name)
    t = interleaved_medians(fns, repeats, 2, device)
    t = {k: (v if k == "floor" else v / 4) for k, v in t.items()}  # score: 4 batches per call
    return t


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default="", help="comma-separated NxCxHxW or NxTxC (default: the four conv shapes)")
    ap.add_argument("--dtypes", default="", help=f"comma-separated of {', '.join(DTYPES)} (default fp32,bf16)")
    ap.add_argument("--backends", default="", help="comma-separated (default: cuda|cpp, triton, torch)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed loop (default 100; quick: 20)")
    ap.add_argument("--repeats", type=int, default=5, help="timed loops per kernel (median)")
    ap.add_argument("--no-score", action="store_true", help="kernels only, not score() on ResNet-50")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--md", default=None, help="also write the markdown to this file (a line per case)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (--device cpu runs the code path on CPU)")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton backend defines its kernels
    try:
        ext = loader.load().how
    except BackendUnavailableError as e:
        ext = f"unavailable ({e})"
    wanted = [b for b in args.backends.split(",") if b] or (
        ["cuda", "triton", "torch"] if device.type == "cuda" else ["cpp", "triton", "torch"]
    )
    if set(wanted) - {"cuda", "cpp", "triton", "torch"}:
        ap.error(f"unknown backends {sorted(set(wanted) - {'cuda', 'cpp', 'triton', 'torch'})}")
    backends = {}
    for name in wanted:
        reason = why_unavailable(name, device)
        if reason is None:
            backends[name] = load_backend(name, device)
        else:
            print(f"(backend {name!r} not measured: {reason})")
    if not backends:
        sys.exit("no backend to measure")
    shapes = parse_shapes(args.shapes) or (SHAPES[:1] if args.quick else SHAPES)
    dtypes = [DTYPES[d] for d in args.dtypes.split(",") if d] or (
        [torch.bfloat16] if args.quick else [torch.float32, torch.bfloat16]
    )
    iters = args.iters or (20 if args.quick else 100)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    command = " ".join(argv if argv is not None else sys.argv[1:])
    timing = f"{iters} calls per timed loop, median of {args.repeats} loops"
    if device.type == "cpu":
        timing += "; CPU wall clock (the Triton interpreter's GB/s mean nothing)"
    header = [f"# {' vs '.join(backends)} kernels on {where}",
              f"{versions()}, extension {ext}, commit {commit()}, {datetime.date.today().isoformat()}",
              f"command: python -m benchmarks.gpu_cuda_vs_triton {command}", timing, ""]  # fmt: skip
    table = Table(list(backends), args.md, args.csv, header)
    for shape, dtype, layout, cdim, fmt in cases(shapes, dtypes):
        table.add(one_case(backends, shape, dtype, layout, cdim, fmt, iters, args.repeats, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.no_score:
        return
    batch, size = (8, 64) if args.quick or device.type == "cpu" else (64, 224)
    t = scores(backends, batch, size, 3 if args.quick else 9, device)
    lines = [f"\n## score(), ResNet-50 bf16 channels_last, batch {batch}, {size}x{size} (4 batches per call)\n",
             "| | ms/batch | / floor |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v * 1e3:.2f} | {v / t['floor']:.3f} |" for k, v in t.items()]
    table.emit(lines)


if __name__ == "__main__":
    main()
