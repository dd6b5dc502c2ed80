"""``rgprune-fast demo transformer``: load all-MiniLM-L6-v2 from its wheel, extract the sentences, run
the experiment and the physical pruning check, and write results.md, results.csv, ground_truth.csv and
the plots."""

from __future__ import annotations

import datetime
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ... import __version__
from ...optional import require
from ..run import machine
from . import data, experiment, physical, plots, report
from .config import FULL, QUICK, TransformerDemoConfig
from .encoder import MODEL_NAME, by_length, import_transformers, load_minilm, model_folder, provenance, tokenize
from .experiment import BOTH, rg_label


@dataclass
class TransformerDemoOutputs:
    csv: Path
    ground_truth_csv: Path | None
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    pruned_model: Path | None = None
    seconds: float = 0.0
    outcome: experiment.Outcome | None = None
    check: physical.PhysicalCheck | None = None
    provenance: str = ""  # whether the wheel's model files are the upstream ones


def commit() -> str:
    """The package checkout's ``git rev-parse --short HEAD`` (``+`` when it has uncommitted changes), or ``""``."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def check_installed() -> Path:
    """Fail in one line before any work when the model wheel, transformers or matplotlib is missing."""
    folder = model_folder()
    import_transformers()
    require("matplotlib", extra="demo", purpose="the demo's plots")
    return folder


def run_transformer_demo(
    out_dir: Path | str,
    *,
    quick: bool = False,
    config: TransformerDemoConfig | None = None,
    command: str = "",
    threads: int | None = 1,
    progress: bool = True,
    log=print,
) -> TransformerDemoOutputs:
    """Run the demo into ``out_dir`` (``quick``: :data:`QUICK`, else :data:`FULL`, or ``config``).
    ``threads``: CPU threads (``None``: torch's default); one by default, so that the float reduction
    order, hence every number, is the same from run to run."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(Path(out_dir), config or (QUICK if quick else FULL), command, progress, log)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, config: TransformerDemoConfig, command: str, progress: bool, log) -> TransformerDemoOutputs:
    started = time.perf_counter()
    folder = check_installed()
    out.mkdir(parents=True, exist_ok=True)
    sentences = data.load(config.n_score, config.n_evaluate, seed=config.seed)
    log(f"rgprune-fast demo transformer ({config.name}): {sentences.description}")
    encoder, tokenizer = load_minilm(folder)
    score_sentences = by_length(tokenizer, sentences.score, max_length=config.max_length)
    eval_sentences = by_length(tokenizer, sentences.evaluate, max_length=config.max_length)
    score_batches = tokenize(tokenizer, score_sentences, batch_size=config.score_batch, max_length=config.max_length)
    eval_batches = tokenize(tokenizer, eval_sentences, batch_size=config.eval_batch, max_length=config.max_length)
    log(f"{MODEL_NAME} from {folder}: {sum(p.numel() for p in encoder.parameters()):,} parameters")
    outcome, evaluator = experiment.run(encoder, score_batches, eval_batches, config, log=log, progress=progress)
    outputs = TransformerDemoOutputs(out / "results.csv", None, out / "results.md", outcome=outcome)
    outputs.provenance = provenance(folder)
    report.write_csv(outcome.rows, outputs.csv)
    if outcome.damage is not None:
        outputs.ground_truth_csv = out / "ground_truth.csv"
        report.write_ground_truth_csv(outcome, outputs.ground_truth_csv)
    if config.physical:
        scorer, allocation = best_rg(outcome, config)
        keep = experiment.headline_masks(outcome, scorer, allocation, config)
        step = time.perf_counter()
        outputs.check = physical.check(
            encoder,
            tokenizer,
            evaluator,
            keep,
            out / "pruned_minilm",
            sentences=eval_sentences,
            batch_size=config.eval_batch,
            max_length=config.max_length,
            scorer=scorer,
            allocation=allocation,
        )
        outcome.seconds["physical pruning check"] = time.perf_counter() - step
        outputs.pruned_model = outputs.check.folder
        log(
            f"physical pruning ({scorer}, {allocation}): {outputs.check.params_before:,} -> "
            f"{outputs.check.params_reloaded:,} parameters; reloaded in a fresh process: mean cosine "
            f"{outputs.check.reloaded_cosine:.6f} (masked: {outputs.check.masked_cosine:.6f})"
        )
    name = f"all-MiniLM-L6-v2 ({config.name})"
    outputs.plots.append(
        plots.plot_fidelity(outcome.rows, "cosine", out / "fidelity_cosine.png", f"{name}: mean cosine")
    )
    outputs.plots.append(
        plots.plot_fidelity(outcome.rows, "spearman", out / "fidelity_similarity.png", f"{name}: similarity ρ")
    )
    if outcome.damage is not None:
        title = f"{name}: head score rank vs measured damage rank (colour: layer)"
        outputs.plots.append(plots.plot_ground_truth(outcome, out / "ground_truth.png", title))
    outputs.seconds = time.perf_counter() - started
    text = markdown(outputs, config, sentences, command)
    outputs.markdown.write_text(text)
    log("")
    log(text)
    written = [outputs.csv, outputs.ground_truth_csv, outputs.markdown, *outputs.plots, outputs.pruned_model]
    log("wrote " + ", ".join(str(p) for p in written if p is not None))
    return outputs


def best_rg(outcome: experiment.Outcome, config: TransformerDemoConfig) -> tuple[str, str]:
    """The package's label-free criterion and allocation with the best mean cosine at the headline budget."""
    candidates = [r for r in outcome.rows if r.kind == BOTH and r.scorer in {rg_label(m) for m in config.rg_methods}]
    best = max(candidates, key=lambda r: r.cosine)  # first of equals: config order
    return best.scorer, best.allocation


def markdown(outputs: TransformerDemoOutputs, config: TransformerDemoConfig, sentences: data.Sentences, command: str):
    outcome, check = outputs.outcome, outputs.check
    rows = outcome.rows
    tf = import_transformers()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    revision = commit()
    heads, neurons = outcome.units["heads"], outcome.units["neurons"]
    headline = config.headline_ratio
    rg_scorers = [rg_label(m) for m in config.rg_methods]
    lines = [
        f"## rgprune-fast demo transformer ({config.name})",
        "",
        f"{MODEL_NAME} ({outcome.params:,} parameters; {heads} attention heads, {neurons:,} MLP neurons) as a "
        f"sentence encoder (mean pooling, L2 normalisation). {sentences.description} (sentence-set fingerprint "
        f"`{sentences.fingerprint()}`); at most {config.max_length} tokens per sentence, scoring batches of "
        f"{config.score_batch}. Seed {config.seed}. The wheel's model files are {outputs.provenance}.",
        "",
        f"Machine: {machine()}; Python {platform.python_version()}, transformers "
        f"{tf.__version__}, rgprune_fast {__version__}"
        + (f" (commit `{revision}`)" if revision else "")
        + f"; {stamp}; "
        f"{outputs.seconds:.0f} s" + (f"; command: `{command}`" if command else "") + ".",
        "",
        "Fidelity on the evaluation set: **mean cosine** of each sentence's pruned and unpruned embedding, and "
        "**similarity ρ**, the Spearman correlation of the pruned and unpruned pairwise cosine similarities. "
        "Pruning is masking (the units' inputs of the output projections zeroed); the physical check below shows "
        "that slicing the units out gives the same numbers.",
        "",
        f"### Headline: {100 * headline['neurons']:.0f} % of the neurons and {100 * headline['heads']:.0f} % of "
        "the heads pruned together",
        "",
        report.headline_table(rows, outcome),
        "",
    ]
    if outcome.correlations is not None:
        lines += [
            "### Ground truth for the heads: Spearman ρ of each scorer's head scores with the measured damage",
            "",
            report.damage_summary(outcome.damage),
            "",
            report.correlation_table(outcome.correlations),
            "",
        ]
    for kind in ("heads", "neurons"):
        for allocation in config.allocations:
            lines += [
                f"### {kind.capitalize()} pruned alone, {allocation} allocation: mean cosine / similarity ρ",
                "",
                report.ratio_table(rows, kind, allocation),
                "",
            ]
    lines += [
        "### Global against uniform allocation: mean cosine over the ratios",
        "",
        report.allocation_table(rows),
        "",
    ]
    if check is not None:
        lines += [
            f"### Physical pruning: `{check.scorer}` ({check.allocation}) at the headline budget, saved to "
            f"`{check.folder.name}/` and reloaded in a fresh process",
            "",
            report.physical_table(check),
            "",
            f"Largest difference between the masked and the reloaded model's embedding entries: "
            f"{check.max_difference:.1e} (fresh process: {check.seconds:.1f} s, start-up included).",
            "",
        ]
    lines += [
        "### Verdicts",
        "",
        report.verdicts(rows, outcome, check, rg_scorers),
        "",
        "### Scorers",
        "",
        *[f"- `{s}`: {report.SCORER_NOTES.get(s, s)}" for s in outcome.scores],
        "",
        "Wall time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome.seconds.items()) + ".",
        "",
    ]
    return "\n".join(lines)
