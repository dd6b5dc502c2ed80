"""``rgprune-fast prune MODEL SCORES --ratio R [--physical] --out pruned.pt``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..pruning import LAYER_NORMALIZATIONS, bake_masks, check_scores_fit, masks, output_channels
from ..pruning.counting import count_macs, count_params
from . import scores_file
from .atomic import write_atomically
from .checks import check_ratio, check_writable, positive_int
from .errors import CliError
from .models import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the model the scores were computed for (as given to `score`)")
    p.add_argument("scores", metavar="SCORES", type=Path, help="scores.pt or scores.json written by `score`")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the scored units to prune (0..1)")
    p.add_argument(
        "--physical",
        action="store_true",
        help="remove the channels with Torch-Pruning (pip install torch-pruning) instead of zeroing them",
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
    p.add_argument("--out", type=Path, required=True, help="where to torch.save the pruned model")


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


def run(args: argparse.Namespace) -> int:
    # Mistakes fail here, before loading anything, not after the pruning
    check_ratio(args.ratio)
    if args.physical and args.ratio == 1:
        raise CliError("--ratio 1 with --physical would remove every unit; give a ratio below 1")
    check_writable(args.out)
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
    recorded = meta.get("architecture")
    if recorded and recorded != scores_file.architecture_fingerprint(model):
        raise CliError(
            f"{args.scores} was computed for another architecture ({meta.get('model')}): {loaded.description} has "
            "different parameter names or shapes (an already pruned model needs new scores)"
        )
    try:
        check_scores_fit(model, scores, example)
    except ValueError as e:
        raise CliError(f"{args.scores} does not fit {loaded.description}: {e}") from None
    print(f"model: {loaded.description}")
    print(f"scores: {method} from {args.scores} (scored on {meta.get('model', '?')} with {meta.get('data', '?')})")
    params, macs = count_params(model), count_macs(model, example)
    units = sum(s.numel() for s in scores.values())
    if args.physical:
        from ..pruning.tp_adaptor import prune_physically  # optional dependency: torch-pruning

        before = output_channels(model, list(scores), example)
        prune_physically(model, scores, example, ratio=args.ratio, normalize=args.normalize_layers)
        after = output_channels(model, list(scores), example)
        removed = sum(before.values()) - sum(after.values())
        print(f"removed {removed} of {units} scored units (Torch-Pruning, global pruning ratio {args.ratio})")
    else:
        keep = masks(scores, ratio=args.ratio, normalize=args.normalize_layers, allow_empty=args.allow_empty)
        bake_masks(model, keep)
        zeroed = sum(int((~k).sum()) for k in keep.values())
        print(f"zeroed {zeroed} of {units} scored units (their weights set to 0; --physical removes them)")
    print(f"  {'':<11} {'before':>14} {'after':>14}")
    print(_row("parameters", params, count_params(model)))
    print(_row("MACs", macs, count_macs(model, example)))
    write_atomically([(args.out, lambda f: torch.save(model, f))])
    print(f"wrote {args.out}")
    return 0
