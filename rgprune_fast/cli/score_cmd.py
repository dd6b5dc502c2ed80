"""``rgprune-fast score MODEL DATA``: score every unit and write scores.pt + scores.json."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import __version__
from ..criteria import METHODS, parse_methods
from ..scorers.taylor import score
from . import scores_file
from .checks import check_data_fits, check_device, check_writable, positive_int
from .data import LoadedData, load_data
from .errors import CliError
from .hf_models import is_checkpoint, load_checkpoint, text_batches, text_lines
from .models import LoadedModel, input_channels, load_model


class _Counted:
    """An iterable of batches that counts the examples it hands out (and keeps ``len``)."""

    def __init__(self, batches) -> None:
        self.batches = batches
        self.examples = 0

    def __iter__(self):
        for batch in self.batches:
            self.examples += len(batch["input_ids"]) if isinstance(batch, dict) else len(batch[0])
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision/timm model name, a file saved with torch.save(model), or a Hugging Face checkpoint folder",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="mnist | digits | IMAGE_FOLDER | CIFAR_FOLDER | random:SHAPE; checkpoints: docstrings | text:FILE",
    )
    p.add_argument(
        "--method",
        nargs="+",
        default=["taylorfo_sq"],
        metavar="M",
        help=f"one or more of {', '.join(METHODS)}, or 'all' (default: taylorfo_sq); all from one pass",
    )
    p.add_argument(
        "--gradient", choices=["random", "label"], default="random", help="output gradient (default: random)"
    )
    p.add_argument("--no-normalize", action="store_true", help="do not scale each output gradient to unit norm")
    p.add_argument("--seed", type=int, default=0, help="seed of the random gradient, random weights and random data")
    p.add_argument("--weights", metavar="FILE", help="state dict for a named MODEL (default: random weights)")
    p.add_argument("--num-classes", type=positive_int, default=1000, help="classes of a named MODEL (default: 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--batches", type=positive_int, default=4, help="batches of random:SHAPE or docstrings data (default: 4)"
    )
    p.add_argument("--max-batches", type=positive_int, help="stop after this many batches")
    p.add_argument(
        "--image-size", type=positive_int, help="resize images to this side (default: native; ImageFolder 224)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, default=Path("scores.pt"), help="output file; a .json twin is written too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    methods = list(METHODS) if args.method == ["all"] else args.method
    # Mistakes fail here, before loading anything, not after the scoring
    parse_methods(methods)
    for path in scores_file.paths(args.out):
        check_writable(path)
    device = check_device(args.device)
    if is_checkpoint(args.model):
        if args.weights is not None:
            raise CliError("--weights is for model names; a Hugging Face checkpoint folder already holds its weights")
        lines, text = text_lines(args.data, count=args.batch_size * args.batches, seed=args.seed)
        checkpoint = load_checkpoint(args.model)
        batches = text_batches(lines, checkpoint.tokenizer, batch_size=args.batch_size)
        loaded = LoadedModel(checkpoint.model, checkpoint.description, False)
        data = LoadedData(batches, None, text)
        model = loaded.model.to(device)
    else:
        loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes, seed=args.seed)
        data = load_data(
            args.data,
            channels=input_channels(loaded.model),
            image_size=args.image_size,
            batch_size=args.batch_size,
            random_batches=args.batches,
            classes=min(args.num_classes, 10) if loaded.built_by_name else 10,
            seed=args.seed,
        )
        model = loaded.model.to(device)
        check_data_fits(model, data.example.to(device), loaded.description, args.data)
    print(f"model: {loaded.description}\ndata: {data.description}")
    counted = _Counted(data.batches)
    started = time.perf_counter()
    every = score(
        model,
        counted,
        method=methods,
        gradient=args.gradient,
        normalize=not args.no_normalize,
        seed=args.seed,
        max_batches=args.max_batches,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    first = every[methods[0]]
    meta = {
        "model": args.model,
        "model_description": loaded.description,
        "weights": args.weights,
        "num_classes": args.num_classes if loaded.built_by_name else None,
        "seed": args.seed,
        "data": args.data,
        "data_description": data.description,
        "examples": counted.examples,
        "input_shape": None if data.example is None else list(data.example.shape[1:]),
        "checkpoint": is_checkpoint(args.model),
        "methods": methods,
        "gradient": args.gradient,
        "normalize": not args.no_normalize,
        "modules": {name: s.numel() for name, s in first.items()},
        "architecture": scores_file.architecture_fingerprint(model),
        "rgprune_fast": __version__,
        "torch": str(torch.__version__),
    }
    written = scores_file.save(args.out, every, meta)
    units = sum(s.numel() for s in first.values())
    print(
        f"scored {units} units in {len(first)} modules over {counted.examples} examples in {seconds:.1f} s "
        f"({', '.join(methods)}; {args.gradient} gradient{'' if args.no_normalize else ', normalized'})"
    )
    flat = [(float(v), name, c) for name, s in first.items() for c, v in enumerate(s.tolist())]
    least = ", ".join(f"{name}[{c}]" for _, name, c in sorted(flat)[:5])
    print(f"least important ({methods[0]}): {least}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
