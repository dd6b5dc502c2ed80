"""What every benchmark shares: the floor (docs/design.md, "Performance contract"), model builders, timing helpers."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast._torchvision import import_torchvision  # noqa: F401  (re-exported for the benchmarks)
from rgprune_fast.engine.batching import as_batch, logits_of
from rgprune_fast.engine.planning import plan_taps
from rgprune_fast.engine.probe import run_probe


def default_modules(model: nn.Module, batch: torch.Tensor) -> list[nn.Module]:
    """The modules ``rg.score`` scores by default (for the floor's stopping point)."""
    was_training = model.training
    model.eval()
    plans = plan_taps(model, run_probe(model, as_batch(batch[:2], 0)), None, molchanov=False)
    model.train(was_training)
    return [p.module for p in plans]


def floor_step(model: nn.Module, batch: torch.Tensor, g: torch.Tensor, scored: list[nn.Module]) -> None:
    """The floor: forward + backward of the output gradient ``g`` with every parameter frozen and no
    taps. Backward reaches exactly as far as a scorer's must: the inputs of the earliest scored
    modules are made to require grad (as leaves), and nothing earlier is differentiated."""
    leaves = []

    def pre_hook(module, args):
        x = args[0]
        if isinstance(x, torch.Tensor) and not x.requires_grad and x.is_floating_point():
            x.requires_grad_(True)
            leaves.append(x)

    handles = [m.register_forward_pre_hook(pre_hook) for m in scored]
    try:
        y = logits_of(model(batch))
    finally:
        for h in handles:
            h.remove()
    torch.autograd.grad(y, leaves, g)


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def commit() -> str:
    """The checkout's short commit (+dirty); ``RGPRUNE_COMMIT`` when set (a copy of the tree without .git, as on
    the GPU machines)."""
    if os.environ.get("RGPRUNE_COMMIT"):
        return os.environ["RGPRUNE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> str:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "absent"
    return f"torch {torch.__version__}, triton {tv}, rgprune_fast {rg.__version__}"
