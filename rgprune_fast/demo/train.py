"""Train the demo networks (seeded, deterministic on one machine) and cache their weights."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import nets
from .config import DemoConfig
from .data import DigitsData

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$RGPRUNE_CACHE``, else ``$XDG_CACHE_HOME/rgprune_fast``, else ``~/.cache/rgprune_fast``."""
    if os.environ.get("RGPRUNE_CACHE"):
        return Path(os.environ["RGPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rgprune_fast"


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> float:
    """Top-1 accuracy in eval mode. Small batches: 1000 MNIST images at 16 channels make activations
    of 50 MB, which glibc maps and unmaps on every call (half the time went to page faults)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train(was_training)
    return correct / len(x)


def train(model: nn.Module, data: DigitsData, config: DemoConfig) -> None:
    """SGD with Nesterov momentum and a one-cycle schedule; shuffling from a seeded generator."""
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(data.train_x) // config.train_batch)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(data.train_x), generator=generator)
        for i in range(0, len(order), config.train_batch):
            idx = order[i : i + config.train_batch]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def _cache_path(cache_dir: Path, arch: str, data: DigitsData, config: DemoConfig) -> Path:
    key = {
        "arch": arch,
        "data": data.name,
        "torch": torch.__version__.split("+")[0],
        "device": data.train_x.device.type,
        "threads": torch.get_num_threads(),  # the float reduction order, hence the exact weights
        **config.training_key(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"{data.name}-{arch}-w{config.width}-e{config.epochs}-{digest}.pt"


def trained_model(
    arch: str, data: DigitsData, config: DemoConfig, cache_dir: Path | None, log=print
) -> tuple[nn.Module, float, bool]:
    """The trained network (eval mode, on the data's device), its test accuracy, and whether it came
    from the cache."""
    torch.manual_seed(config.seed)
    model = nets.build(arch, config.width, data.classes, data.image_shape[0]).to(data.train_x.device)
    path = _cache_path(cache_dir, arch, data, config) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            state = torch.load(path, map_location=data.train_x.device, weights_only=True)
            model.load_state_dict(state["state_dict"])
            model.eval()
            return model, accuracy(model, data.test_x, data.test_y), True
        except Exception as e:  # a stale or corrupt cache entry: retrain and overwrite it
            log(f"  ignoring unreadable cache entry {path} ({e})")
    started = time.perf_counter()
    train(model, data, config)
    log(f"  trained {arch} ({config.epochs} epochs) in {time.perf_counter() - started:.1f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"format": CACHE_FORMAT, "state_dict": model.state_dict()}, tmp)
        tmp.replace(path)  # atomic: a concurrent run never reads half a file
    return model, accuracy(model, data.test_x, data.test_y), False
