"""``rgprune-fast demo [--quick] [--out DIR]``: the paper's experiment on shipped MNIST digits."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from .checks import check_device, check_writable, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the cut-down run: under 3 minutes on a 2-core CPU")
    p.add_argument("--out", type=Path, default=Path("rgprune-demo"), help="output folder (default: ./rgprune-demo)")
    p.add_argument("--cache-dir", type=Path, help="where trained weights are cached (default: ~/.cache/rgprune_fast)")
    p.add_argument("--no-cache", action="store_true", help="always retrain; do not read or write the cache")
    p.add_argument("--data", choices=["auto", "mnist", "digits"], default="auto", help="default: mnist, else digits")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, ...")
    p.add_argument(
        "--no-mc-gradient",
        action="store_true",
        help="Taylor criteria only: skip mc_gradient (about two thirds of the full run's time)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads (default: 1: the networks are small, and a fixed count keeps the numbers reproducible)",
    )


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    # Mistakes fail here, before the (minutes of) training
    check_writable(args.out, folder=True)
    check_device(args.device)
    from ..demo import FULL, QUICK, run_demo

    config = replace(QUICK if args.quick else FULL, data=args.data)
    if args.no_mc_gradient:
        config = replace(config, mc_gradient=None)
    cache = None if args.no_cache else (args.cache_dir or "default")
    command = "rgprune-fast " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    run_demo(args.out, config=config, cache_dir=cache, command=command, device=args.device, threads=args.threads)
    return 0
