"""``rgprune-fast demo``: train (or load from the cache) the two networks, run the paper's experiment
on each, and write the CSV, the tables, the plots and the trained models."""

from __future__ import annotations

import copy
import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..optional import require
from . import data as demo_data
from . import experiment, plots, report
from .config import FULL, QUICK, DemoConfig
from .train import default_cache_dir, trained_model


@dataclass
class DemoOutputs:
    csv: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def machine() -> str:
    """CPU model and core count (or the GPU), for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    threads = torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({threads} thread{'s' * (threads != 1)})"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def run_demo(
    out_dir: Path | str,
    *,
    quick: bool = False,
    cache_dir: Path | str | None = "default",
    config: DemoConfig | None = None,
    command: str = "",
    device: torch.device | str = "cpu",
    threads: int | None = 1,
    log=print,
) -> DemoOutputs:
    """Run the demo into ``out_dir`` (``quick``: :data:`QUICK`, else :data:`FULL`, or ``config``).

    ``cache_dir``: where trained weights are cached; ``"default"`` is ~/.cache/rgprune_fast, ``None``
    always retrains. ``device``: where training, scoring and evaluation run. ``threads``: CPU threads
    (``None``: torch's default). One is the default: the networks are too small for more threads to
    pay off much, extra threads are very slow on a busy machine, and a fixed count keeps the float
    reduction order, hence the numbers (and the cached weights), reproducible.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(out_dir, quick, cache_dir, config, command, device, log)
    finally:
        torch.set_num_threads(previous)


def _run(out_dir, quick, cache_dir, config, command, device, log) -> DemoOutputs:
    started = time.perf_counter()
    config = config or (QUICK if quick else FULL)
    require("matplotlib", extra="demo", purpose="the demo's plots")  # fail before any training
    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    cache = default_cache_dir() if cache_dir == "default" else None if cache_dir is None else Path(cache_dir)
    data = demo_data.load(config.data, seed=config.seed, image_size=config.image_size).to(device)
    side = data.image_shape[-1]
    log(f"rgprune-fast demo ({config.name}): {data.description}")
    log(
        f"  {len(data.train_x)} training images (importances), {len(data.test_x)} test images (accuracy), "
        f"used at {side}x{side}; weights cache: {cache if cache is not None else 'off'}"
    )
    outputs = DemoOutputs(out / "results.csv", out / "results.md")
    results: list[experiment.Result] = []
    for arch in config.architectures:
        model, acc, cached = trained_model(arch, data, config, cache, log)
        title = report.MODEL_TITLES.get(arch, arch)
        log(f"{title}: test accuracy {100 * acc:.1f} %{' (cached weights)' if cached else ''}")
        path = out / "models" / f"{arch}.pt"
        torch.save(copy.deepcopy(model).cpu(), path)  # a whole-model file for `rgprune-fast score/prune`
        outputs.models.append(path)
        results += experiment.run(arch, model, data, config, log)
    report.write_csv(results, outputs.csv)
    for arch in config.architectures:
        name = report.MODEL_TITLES.get(arch, arch)
        title = f"{name} on {data.name.upper()} {side}x{side} ({config.name}): units pruned vs test accuracy"
        outputs.plots.append(plots.plot_model(results, arch, out / f"pruning_{arch}.png", title))
    outputs.seconds = time.perf_counter() - started
    largest = config.data_sizes[-1]
    size_label = "all" if largest is None else str(largest)
    text = _markdown(results, config, data, size_label, command, outputs.seconds)
    outputs.markdown.write_text(text)
    log("")
    log(text)
    log(f"wrote {outputs.csv}, {outputs.markdown}, {', '.join(str(p) for p in outputs.plots)}")
    log(f"models for `rgprune-fast score/prune`: {', '.join(str(p) for p in outputs.models)}")
    return outputs


def _markdown(results, config: DemoConfig, data, size_label: str, command: str, seconds: float) -> str:
    side = data.image_shape[-1]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    return "\n".join(
        [
            f"## rgprune-fast demo ({config.name})",
            "",
            f"{data.description}, at {side}x{side}: importances from D of the {len(data.train_x)} training "
            f"images, accuracy on {config.test_examples or len(data.test_x)} test images. "
            f"Machine: {machine()}; rgprune_fast {__version__}; {stamp}; {seconds:.0f} s"
            + (f"; command: `{command}`" if command else "")
            + ".",
            "",
            f"### Test accuracy (%) after pruning the P least important units globally (D = {size_label})",
            "",
            report.accuracy_table(results, size_label),
            "",
            "### Mean test accuracy (%) over the pruning levels, every data size D",
            "",
            report.summary_table(results),
            "",
            "### What this run says about the paper's claims",
            "",
            report.claims(results),
            "",
        ]
    )
