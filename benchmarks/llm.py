"""Large language models: peak memory and time per token of score() vs the floor vs weight-gradient
Taylor scoring (LLM-Pruner's ``|W * dL/dW|`` from a plain ``loss.backward()``), and the largest
batch x sequence each fits.

    PYTHONPATH=. python -m benchmarks.llm --out DIR                 # Llama-2-7B shape, bf16, seq 2048 (GPU)
    PYTHONPATH=. python -m benchmarks.llm --quick --out DIR         # a tiny Llama (CPU smoke test)
    PYTHONPATH=. python -m benchmarks.llm --layers 8 --max-batch 8 --max-seconds 60 --out DIR
                                                  # a 7B-shape stack of 8 layers, time-boxed (gpu_session.sh)

The model is built directly on the device from a ``LlamaConfig`` with random weights (no download;
needs ``transformers``). Each method is run at batch 1, 2, 4, ... until it runs out of memory (or
``--max-batch``); time is the median of ``--repeats`` calls after one warm-up. ``--layers`` keeps the
shape's layer width but stacks fewer (or more) layers; ``--max-seconds`` starts no larger batch after
that long. llm.json and llm.md are rewritten after every batch size (a killed run keeps what it did).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import rgprune_fast as rg

from .common import commit, floor_step, import_torchvision, sync
from .suite import environment

SHAPES = {  # name: (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
    "tiny": (64, 176, 2, 4, 2, 320),
}


def build_llama(shape: str, device: torch.device, dtype: torch.dtype, checkpointing: bool, layers: int | None = None):
    import_torchvision()  # transformers imports torchvision, which needs the op shim on CPU torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, shape_layers, heads, kv, vocab = SHAPES[shape]
    layers = layers or shape_layers
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=4096)  # fmt: skip
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), vocab


def weight_taylor(model, batch: dict) -> dict:
    """LLM-Pruner-style element importance ``|W * dL/dW|`` summed per output row, from loss.backward()."""
    params = [p for p in model.parameters() if p.dim() == 2]
    for p in params:
        p.requires_grad_(True)
    try:
        model(**batch).loss.backward()
        return {i: (p.detach() * p.grad).abs().sum(1) for i, p in enumerate(params)}
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def methods(model, vocab: int, batch: int, seq: int, device: torch.device) -> dict:
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    data = {"input_ids": ids, "labels": ids}
    scored = [model.get_submodule(k.split(":")[0]) for k in rg.score(model, {"input_ids": ids[:1, :8]})]
    g = torch.randn(batch, seq, vocab, device=device, dtype=torch.bfloat16 if device.type == "cuda" else None)

    def floor():
        floor_step(lambda x: model(input_ids=x), ids, g, scored)

    return {
        "floor": floor,
        "score": lambda: rg.score(model, data, gradient="label"),
        "weight_taylor": lambda: weight_taylor(model, data),
    }


def run_one(fn, device, repeats: int):
    """(median seconds, peak MB) of ``fn``; ``None`` when it runs out of memory."""
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return statistics.median(times), peak
    except torch.OutOfMemoryError:
        return None


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="a tiny Llama (CPU-friendly smoke test)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 2048; quick: 16)")
    ap.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 64; quick: 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="the model's own (non-reentrant) checkpointing")
    ap.add_argument("--layers", type=int, default=None, help="layers stacked (default: the shape's, 32 for 7B)")
    ap.add_argument("--max-seconds", type=float, default=None, help="start no larger batch after this long")
    args = ap.parse_args(argv)
    started = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    shape = "tiny" if args.quick else "llama2-7b"
    seq = args.seq or (16 if args.quick else 2048)
    max_batch = args.max_batch or (2 if args.quick else 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, vocab = build_llama(shape, device, dtype, args.checkpointing, args.layers)
    layers = model.config.num_hidden_layers
    config = f"{shape}/seq{seq}/{str(dtype)[6:]}" + (f"/{layers}layers" if args.layers else "")
    meta = environment(device)
    title = f"{shape}, {layers} layers, seq {seq}, {str(dtype)[6:]}, {meta['device']}; torch {meta['torch']}"
    title += f"; commit {commit()}"
    rows, fits, stopped = [], {}, None
    batch = 1
    while batch <= max_batch and len(fits) < 3:
        if batch > 1 and args.max_seconds is not None and time.monotonic() - started > args.max_seconds:
            stopped = f"stopped before batch {batch}: past --max-seconds {args.max_seconds:g}"
            print(f"  {stopped}", flush=True)
            break
        fns = methods(model, vocab, batch, seq, device)
        for name, fn in fns.items():
            if name in fits:
                continue
            result = run_one(fn, device, args.repeats)
            if result is None:
                fits[name] = batch // 2
                print(f"  {name}: out of memory at batch {batch} x {seq}", flush=True)
                continue
            seconds, peak = result
            rows.append({"config": config, "method": name, "batch": batch, "seq": seq, "layers": layers,
                         "ms": seconds * 1e3, "ms_per_token": seconds * 1e3 / (batch * seq), "peak_mb": peak,
                         "checkpointing": args.checkpointing, **meta})  # fmt: skip
            print(f"  {name} batch {batch}x{seq}: {seconds * 1e3:.1f} ms, peak "
                  f"{'-' if peak is None else f'{peak:.0f} MB'}", flush=True)  # fmt: skip
        del fns
        batch *= 2
        write(args.out, rows, fits, seq, title, batch // 2, stopped)
    print(write(args.out, rows, fits, seq, title, batch // 2, stopped))
    return rows


def write(out: Path, rows: list[dict], fits: dict, seq: int, title: str, tried: int, stopped: str | None) -> str:
    """llm.json and llm.md so far; a method that has not run out of memory fits ``tried``, the largest batch
    measured."""
    fits = {name: fits.get(name, tried) for name in ("floor", "score", "weight_taylor")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm.json").write_text(json.dumps({"rows": rows, "largest_batch": fits, "seq": seq, "stopped": stopped},
                                             indent=1))  # fmt: skip
    lines = [f"# {title}", "", "| method | batch | ms | ms/token | peak MB |", "|---|---|---|---|---|"]
    for r in rows:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['method']} | {r['batch']} | {r['ms']:.1f} | {r['ms_per_token']:.4f} | {peak} |")
    lines += ["", "Largest batch x sequence that fits: " + ", ".join(f"{k} {v} x {seq}" for k, v in fits.items())]
    if stopped:
        lines.append(f"Time box: {stopped}.")
    text = "\n".join(lines) + "\n"
    (out / "llm.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
