"""The benchmark suite: score() per backend vs the floor vs naive.py vs a training step, and the raw
reduction kernels vs the device's copy bandwidth, side by side in one run.

    PYTHONPATH=. python -m benchmarks.suite --out DIR            # GPU sizes when CUDA is present
    PYTHONPATH=. python -m benchmarks.suite --quick --out DIR    # small sizes (CPU-friendly)
    PYTHONPATH=. python -m benchmarks.suite --model [--out DIR]  # traffic-model PREDICTIONS, no GPU needed

Writes ``DIR/results.json`` (one row per configuration and scorer), ``DIR/results.md`` (tables, ratios, PASS/MISS)
and PNG plots (with matplotlib). Every number of a configuration comes from one process, measured
round-robin (floor, score per backend, naive, train step, floor, ...) after warm-up, median of
``--repeats``. ``score_ms`` is per batch of a call over ``--batches-per-call`` batches (the structure
probe amortised, as when scoring a data set); ``score_1batch_ms`` is a one-batch call, probe included.
Peak memory (GPU only) is ``torch.cuda.max_memory_allocated`` during one call, model and inputs
included. On CUDA each row also gets the traffic model's predicted score/floor at the measured batch
(``benchmarks/traffic.py``, docs/traffic_model.md; computed on the CPU after the measurements).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import rgprune_fast as rg
from rgprune_fast.backends import why_unavailable
from rgprune_fast.scorers import naive

from . import report
from .common import commit, default_modules, floor_step, interleaved_medians, sync
from .kernels import kernel_rows
from .models import build


@dataclass(frozen=True)
class Config:
    model: str
    dtype: str  # "bf16" (autocast) or "fp32"
    layout: str  # "nchw", "channels_last" or "tokens"
    example: tuple  # shape of one example: (3, H, W) or (T,) token ids
    batch: int  # upper bound; shrunk to fit free GPU memory

    @property
    def name(self) -> str:
        size = "x".join(str(v) for v in self.example)
        return f"{self.model}/{size}/{self.dtype}/{self.layout}"


GPU_CONFIGS = [
    Config("resnet50", "bf16", "channels_last", (3, 224, 224), 128),
    Config("resnet50", "bf16", "nchw", (3, 224, 224), 128),
    Config("resnet50", "fp32", "channels_last", (3, 224, 224), 128),
    Config("resnet50", "fp32", "nchw", (3, 224, 224), 128),
    Config("resnet18", "bf16", "channels_last", (3, 224, 224), 256),
    Config("resnet18", "fp32", "nchw", (3, 224, 224), 256),
    Config("vgg19_bn", "bf16", "channels_last", (3, 224, 224), 64),
    Config("resnet56", "bf16", "channels_last", (3, 32, 32), 512),
    Config("resnet56", "fp32", "nchw", (3, 32, 32), 512),
    Config("llama-2048-16", "bf16", "tokens", (2048,), 8),
]
QUICK_CONFIGS = [
    Config("resnet18", "fp32", "nchw", (3, 64, 64), 8),
    Config("resnet56", "fp32", "channels_last", (3, 32, 32), 16),
    Config("llama-64-2", "fp32", "tokens", (32,), 2),
]


VOCAB = 32000  # of the Llama-style models in benchmarks/models.py


def make_batch(cfg: Config, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if cfg.layout == "tokens":
        return torch.randint(0, VOCAB, (batch, *cfg.example), generator=g).to(device)
    x = torch.randn((batch, *cfg.example), generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last) if cfg.layout == "channels_last" else x


def autocast(cfg: Config, device: torch.device):
    if cfg.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_mb(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def functions(model, cfg: Config, batches: list[torch.Tensor], backends: list[str], device: torch.device):
    """The timed closures of one configuration (each runs under the config's autocast)."""
    with torch.no_grad(), autocast(cfg, device):
        shape = logits(model(batches[0][:1])).shape[1:]
    g = torch.randn((batches[0].shape[0], *shape), device=device)
    g = (g / g.norm(dim=-1, keepdim=True)).to(torch.bfloat16 if cfg.dtype == "bf16" else torch.float32)
    scored = default_modules(model, batches[0])
    params = list(model.parameters())

    def run(fn):
        def wrapped():
            with autocast(cfg, device):
                return fn()

        return wrapped

    def floor():
        for p in params:
            p.requires_grad_(False)
        floor_step(model, batches[0], g, scored)

    def train_step():
        for p in params:
            p.requires_grad_(True)
        y = logits(model(batches[0]))
        torch.autograd.backward(y, g)
        for p in params:
            p.grad = None

    fns = {"floor": run(floor)}
    for b in backends:
        fns[f"score:{b}"] = run(lambda b=b: rg.score(model, batches, backend=b))
    fns["score_1batch"] = run(lambda: rg.score(model, batches[:1], backend=backends[0]))
    fns["naive"] = run(lambda: naive.score(model, batches[:1]))
    fns["train_step"] = run(train_step)
    return fns


def fit_batch(cfg: Config, model, device: torch.device) -> int:
    """The largest power-of-two batch <= cfg.batch whose naive scoring (the hungriest call) fits in
    80 % of the free GPU memory; on CPU, cfg.batch."""
    if device.type != "cuda":
        return cfg.batch
    batch = cfg.batch
    while batch > 1:
        try:
            x = make_batch(cfg, batch, device, 0)
            with autocast(cfg, device):
                used = peak_mb(lambda x=x: naive.score(model, x), device)
            del x
            free, _ = torch.cuda.mem_get_info(device)
            if used * 2**20 < 0.8 * (free + torch.cuda.memory_allocated(device)):
                return batch
        except torch.OutOfMemoryError:
            pass
        torch.cuda.empty_cache()
        batch //= 2
    return 1


def measure_config(cfg: Config, args, device: torch.device, meta: dict) -> list[dict]:
    model = build(cfg.model)
    if model is None:
        print(f"  skipped {cfg.name}: transformers is not installed")
        return []
    model = model.to(device)
    if cfg.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    backends = [b for b in ("triton", "cuda", "cpp", "torch") if why_unavailable(b, device) is None]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is no performance path
    batch = fit_batch(cfg, model, device)
    batches = [make_batch(cfg, batch, device, i) for i in range(args.batches_per_call)]
    fns = functions(model, cfg, batches, backends, device)
    t = interleaved_medians(fns, args.repeats, args.warmup, device)
    t = {k: v * 1e3 for k, v in t.items()}
    for b in backends:
        t[f"score:{b}"] /= args.batches_per_call
    mem = {k: peak_mb(fn, device) for k, fn in fns.items() if k != "score_1batch"}
    rows = []
    for b in backends:
        rows.append({
            "config": cfg.name, "model": cfg.model, "dtype": cfg.dtype, "layout": cfg.layout, "batch": batch,
            "floor_ms": t["floor"], "score_ms": t[f"score:{b}"], "naive_ms": t["naive"],
            "train_step_ms": t["train_step"], "score_1batch_ms": t["score_1batch"] if b == backends[0] else None,
            "floor_peak_mb": mem["floor"], "score_peak_mb": mem[f"score:{b}"], "naive_peak_mb": mem["naive"],
            "backend": b, **meta,
        })  # fmt: skip
    print(f"  {cfg.name} batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()), flush=True)
    return rows


def join_predictions(rows: list[dict], configs: list[Config]) -> None:
    """The traffic model's predicted score/floor (benchmarks/traffic.py: CPU, fake tensors) into each
    measured row, at the row's batch; ``None`` where it could not be computed."""
    from . import traffic

    measured = {r["config"]: r["batch"] for r in rows if r.get("kind") != "kernel"}
    print("traffic model (predictions for the measured configs):", flush=True)
    try:
        predicted = traffic.predict([c for c in configs if c.name in measured], measured)
    except Exception as e:  # a prediction must never cost the measurements
        print(f"  no predictions: {type(e).__name__}: {e}")
        predicted = []
    ratios = {p["config"]: p["predicted_ratio"] for p in predicted}
    for r in rows:
        if r.get("kind") != "kernel":
            r["predicted_ratio"] = ratios.get(r["config"])


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    if device.type == "cpu":
        name = f"{name} ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "commit": commit()}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (required, except with --model)")
    ap.add_argument("--model", action="store_true", help="print the traffic model's PREDICTIONS for the configs "
                    "(GPU sizes unless --quick; fake tensors, no GPU needed); --out DIR writes model.json, "
                    "model.md")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU-friendly); default when CUDA is absent")
    ap.add_argument("--configs", default="", help="comma-separated substrings of config names to keep")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches-per-call", type=int, default=4)
    ap.add_argument("--max-minutes", type=float, default=7.5, help="skip the remaining configs after this long")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--llm", action="store_true", help="also run benchmarks.llm (Llama-2-7B shape, several minutes)")
    args = ap.parse_args(argv)
    wanted = [w for w in args.configs.split(",") if w]
    if args.model:
        from . import traffic

        configs = QUICK_CONFIGS if args.quick else GPU_CONFIGS
        configs = [c for c in configs if not wanted or any(w in c.name for w in wanted)]
        command = " ".join(["PYTHONPATH=. python -m benchmarks.suite", *(argv if argv is not None else sys.argv[1:])])
        return traffic.run(configs, args.out, command)
    if args.out is None:
        ap.error("--out is required (except with --model)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type != "cuda"
    meta = environment(device)
    started = time.monotonic()
    print(f"rgprune_fast benchmark suite on {meta['device']}: torch {meta['torch']}, triton {meta['triton']}, "
          f"commit {meta['commit']}{' (quick)' if quick else ''}", flush=True)  # fmt: skip
    rows = [] if args.no_kernels else kernel_rows(device, quick, meta)
    configs = QUICK_CONFIGS if quick else GPU_CONFIGS
    for cfg in configs:
        if wanted and not any(w in cfg.name for w in wanted):
            continue
        if time.monotonic() - started > args.max_minutes * 60:
            print(f"  skipped {cfg.name}: past --max-minutes {args.max_minutes}")
            continue
        rows += measure_config(cfg, args, device, meta)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))  # the measurements first (time boxes)
    if device.type == "cuda":
        join_predictions(rows, configs)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    date = datetime.date.today().isoformat()
    markdown = report.markdown(rows, meta, date, quick)
    (args.out / "results.md").write_text(markdown)
    report.plots(rows, args.out)
    print(markdown)
    if args.llm:
        from . import llm

        llm.main(["--out", str(args.out)] + (["--quick"] if quick else []))
    print(f"suite finished in {time.monotonic() - started:.0f} s; wrote {args.out}/results.json, results.md, *.png")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
