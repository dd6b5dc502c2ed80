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
from .experiment import MC_METHOD
from .train import default_cache_dir, trained_model


@dataclass
class DemoOutputs:
    csv: Path
    markdown: Path
    costs_csv: Path
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
    outputs = DemoOutputs(out / "results.csv", out / "results.md", out / "costs.csv")
    results: list[experiment.Result] = []
    costs: list[experiment.Cost] = []
    for arch in config.architectures:
        model, acc, cached = trained_model(arch, data, config, cache, log)
        title = report.MODEL_TITLES.get(arch, arch)
        log(f"{title}: test accuracy {100 * acc:.1f} %{' (cached weights)' if cached else ''}")
        path = out / "models" / f"{arch}.pt"
        torch.save(copy.deepcopy(model).cpu(), path)  # a whole-model file for `rgprune-fast score/prune`
        outputs.models.append(path)
        model_results, model_costs = experiment.run(arch, model, data, config, log)
        results += model_results
        costs += model_costs
    report.write_csv(results, outputs.csv)
    report.write_costs_csv(costs, outputs.costs_csv)
    for arch in config.architectures:
        name = report.MODEL_TITLES.get(arch, arch)
        title = f"{name} on {data.name.upper()} {side}x{side} ({config.name}): units pruned vs test accuracy"
        outputs.plots.append(plots.plot_model(report.final(results), arch, out / f"pruning_{arch}.png", title))
    if config.mc_gradient is not None:
        title = f"{data.name.upper()} {side}x{side} ({config.name}): mean accuracy over the pruning levels vs compute"
        outputs.plots.append(plots.plot_compute(results, costs, out / "compute.png", title))
    outputs.seconds = time.perf_counter() - started
    largest = config.data_sizes[-1]
    size_label = "all" if largest is None else str(largest)
    text = _markdown(results, costs, config, data, size_label, command, outputs.seconds)
    outputs.markdown.write_text(text)
    log("")
    log(text)
    log(f"wrote {outputs.csv}, {outputs.costs_csv}, {outputs.markdown}, {', '.join(str(p) for p in outputs.plots)}")
    log(f"models for `rgprune-fast score/prune`: {', '.join(str(p) for p in outputs.models)}")
    return outputs


def _markdown(results, costs, config: DemoConfig, data, size_label: str, command: str, seconds: float) -> str:
    side = data.image_shape[-1]
    every = results
    results = report.final(results)
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
            *(_mc_markdown(every, costs, config) if config.mc_gradient is not None else []),
        ]
    )


def _mc_markdown(results, costs, config: DemoConfig) -> list[str]:
    mc = config.mc_gradient
    return [
        f"### {MC_METHOD} against the Taylor criteria: compute and wall time",
        "",
        f"{MC_METHOD}: {mc.samples} masks per step, {mc.batch} examples per step (all D when fewer), "
        f"{mc.steps} steps, lr {mc.lr}, keep {mc.keep}; label-free (`_rand`) adds one unmasked forward per step. "
        "Compute in forward-equivalents: one example through a forward pass = 1, a backward pass = 2; "
        "a Taylor pass (forward + backward of each of the D examples, all five criteria at once) costs 3 per "
        "example. Wall times: one thread, each score() call whole (structure probe included), after an "
        "untimed warm-up call; a Taylor pass's time is the mean over its gradient and normalisation runs.",
        "",
        "Mean test accuracy (%) over the pruning levels against compute and wall time (the Taylor "
        f"criteria get more compute from more examples D, {MC_METHOD} from more steps; at the largest D its "
        "keep probabilities are also evaluated after fewer steps):",
        "",
        report.compute_table(results, costs),
        "",
        report.mc_claims(results, costs),
        "",
    ]
