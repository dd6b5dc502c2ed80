"""``rgprune-fast prune MODEL SCORES --ratio R [--physical] --out pruned.pt``; for a Hugging Face
checkpoint folder, ``--out`` is a checkpoint folder (per-layer widths recorded; ``load_pruned`` reads it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import UnsupportedModuleError
from ..pruning import (
    ALLOCATIONS,
    LAYER_NORMALIZATIONS,
    bake_masks,
    check_scores_fit,
    kinds_of,
    masks,
    output_channels,
)
from ..pruning.counting import count_macs, count_params
from . import scores_file
from .atomic import write_atomically
from .checks import check_writable, parse_ratio, positive_int
from .errors import CliError
from .hf_models import is_checkpoint, load_checkpoint, save_checkpoint
from .models import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the model the scores were computed for (as given to `score`)")
    p.add_argument("scores", metavar="SCORES", type=Path, help="scores.pt or scores.json written by `score`")
    p.add_argument(
        "--ratio",
        required=True,
        help="fraction of each unit kind to prune (0..1), or one per kind: heads=0.25,neurons=0.3",
    )
    p.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default="global",
        help="global: rank a kind's units over all layers; uniform: the same fraction from every layer",
    )
    p.add_argument(
        "--physical",
        action="store_true",
        help="remove the units instead of zeroing them: Hugging Face checkpoints by slicing their weights, "
        "other models with Torch-Pruning (pip install torch-pruning)",
    )
    p.add_argument("--method", help="which criterion of the scores file to use (needed when it holds several)")
    p.add_argument(
        "--normalize-layers",
        choices=LAYER_NORMALIZATIONS,
        default="none",
        help="rescale each layer's scores before the global ranking (default: none)",
    )
    p.add_argument("--allow-empty", action="store_true", help="allow a layer to lose every unit (masking only)")
    p.add_argument("--weights", metavar="FILE", help="state dict for a named MODEL")
    p.add_argument("--num-classes", type=positive_int, help="classes of a named MODEL (default: as recorded in SCORES)")
    p.add_argument("--seed", type=int, help="seed of a named MODEL's random weights (default: as recorded in SCORES)")
    p.add_argument(
        "--out", type=Path, required=True, help="where to torch.save the pruned model (checkpoints: a folder)"
    )


def _pick_method(scores: dict, wanted: str | None, path: Path) -> str:
    if wanted is not None:
        if wanted not in scores:
            raise CliError(f"{str(path)!r} has no {wanted!r} scores; it has {', '.join(scores)}")
        return wanted
    if len(scores) == 1:
        return next(iter(scores))
    raise CliError(f"{str(path)!r} holds several criteria ({', '.join(scores)}); choose one with --method")


def _row(label: str, before: int, after: int) -> str:
    change = f"{100 * (after - before) / before:+.1f} %" if before else "n/a"
    return f"  {label:<11} {before:>14,} {after:>14,}   {change}"


def _check_architecture(meta: dict, model, description: str, path: Path) -> None:
    recorded = meta.get("architecture")
    if recorded and recorded != scores_file.architecture_fingerprint(model):
        raise CliError(
            f"{path} was computed for another architecture ({meta.get('model')}): {description} has "
            "different parameter names or shapes (an already pruned model needs new scores)"
        )


def _check_fit(args: argparse.Namespace, model, description: str, scores: dict, example, meta: dict, method: str):
    """The scores fit the model (else one line), then what is pruned with what."""
    try:
        check_scores_fit(model, scores, example)
    except ValueError as e:
        raise CliError(f"{args.scores} does not fit {description}: {e}") from None
    print(f"model: {description}")
    print(f"scores: {method} from {args.scores} (scored on {meta.get('model', '?')} with {meta.get('data', '?')})")


def _masks(args: argparse.Namespace, scores: dict, ratio) -> dict:
    try:
        options = {"normalize": args.normalize_layers, "allow_empty": args.allow_empty}
        return masks(scores, ratio=ratio, allocation=args.allocation, **options)
    except ValueError as e:
        raise CliError(f"--ratio {args.ratio}: {e}") from None


def _report(model, params: int, macs: int | None, example) -> None:
    print(f"  {'':<11} {'before':>14} {'after':>14}")
    print(_row("parameters", params, count_params(model)))
    if macs is not None:
        print(_row("MACs", macs, count_macs(model, example)))


def _run_checkpoint(args: argparse.Namespace, ratio) -> int:
    from ..pruning.hf_slicing import prune_transformer

    all_scores, meta = scores_file.load(args.scores)
    method = _pick_method(all_scores, args.method, args.scores)
    scores = all_scores[method]
    keep = _masks(args, scores, ratio)  # a ratio that does not fit the scores fails before the loading
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.model
    _check_architecture(meta, model, checkpoint.description, args.scores)
    example = None
    if checkpoint.tokenizer is not None:
        example = dict(checkpoint.tokenizer(["An example sentence."], return_tensors="pt"))
    elif any(not key.endswith((":input", ":experts")) for key in scores):
        raise CliError(f"{args.model!r} has no tokenizer, which checking output-channel scores needs")
    _check_fit(args, model, checkpoint.description, scores, example, meta, method)
    params = count_params(model)
    macs = count_macs(model, example) if example is not None else None
    dropped = {kind: 0 for kind in kinds_of(scores).values()}
    for key, kind in kinds_of(scores).items():
        dropped[kind] += int((~keep[key]).sum())
    counts = ", ".join(f"{n} {kind}" for kind, n in dropped.items())
    if args.physical:
        try:
            prune_transformer(model, keep)
        except (ValueError, UnsupportedModuleError) as e:
            raise CliError(f"cannot prune {checkpoint.description}: {e}") from None
        print(f"removed {counts} ({args.allocation} allocation)")
    else:
        bake_masks(model, keep)
        print(f"zeroed {counts} ({args.allocation} allocation; their weights set to 0; --physical removes them)")
    _report(model, params, macs, example)
    save_checkpoint(model, checkpoint.tokenizer, args.out)
    print(f"wrote {args.out}/ (load it with rgprune_fast.pruning.load_pruned)")
    return 0


def run(args: argparse.Namespace) -> int:
    # Mistakes fail here, before loading anything, not after the pruning
    ratio = parse_ratio(args.ratio)
    check_writable(args.out)
    if is_checkpoint(args.model):
        return _run_checkpoint(args, ratio)
    if args.physical and not isinstance(ratio, float):
        raise CliError("--physical with Torch-Pruning takes one --ratio (its global pruning ratio), not one per kind")
    if args.physical and ratio == 1:
        raise CliError("--ratio 1 with --physical would remove every unit; give a ratio below 1")
    all_scores, meta = scores_file.load(args.scores)
    method = _pick_method(all_scores, args.method, args.scores)
    scores = all_scores[method]
    num_classes = args.num_classes or meta.get("num_classes") or 1000
    seed = (meta.get("seed") or 0) if args.seed is None else args.seed
    loaded = load_model(args.model, weights=args.weights, num_classes=num_classes, seed=seed)
    model = loaded.model
    shape = meta.get("input_shape")
    if not shape:
        raise CliError(f"{str(args.scores)!r} does not record the input shape; re-create it with `rgprune-fast score`")
    example = torch.randn(1, *shape)
    _check_architecture(meta, model, loaded.description, args.scores)
    _check_fit(args, model, loaded.description, scores, example, meta, method)
    params, macs = count_params(model), count_macs(model, example)
    units = sum(s.numel() for s in scores.values())
    if args.physical:
        from ..pruning.tp_adaptor import prune_physically  # optional dependency: torch-pruning

        before = output_channels(model, list(scores), example)
        prune_physically(model, scores, example, ratio=ratio, normalize=args.normalize_layers)
        after = output_channels(model, list(scores), example)
        per_unit = {key: before[key] // scores[key].numel() for key in before}  # heads: head_dim channels
        removed = sum((before[key] - after.get(key, 0)) // per_unit[key] for key in before)
        print(f"removed {removed} of {units} scored units (Torch-Pruning, global pruning ratio {ratio})")
    else:
        keep = _masks(args, scores, ratio)
        bake_masks(model, keep)
        zeroed = sum(int((~k).sum()) for k in keep.values())
        print(f"zeroed {zeroed} of {units} scored units (their weights set to 0; --physical removes them)")
    _report(model, params, macs, example)
    write_atomically([(args.out, lambda f: torch.save(model, f))])
    print(f"wrote {args.out}")
    return 0
