"""Checks of the command line's input that run before the work they guard: a mistake costs a one-line
error (:class:`CliError`) at once, not a traceback after minutes of loading and scoring."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from torch import nn

from .errors import CliError


def one_line(text: str) -> str:
    """``text`` with its lines joined: error messages (torch's are often several lines) stay one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def positive_int(text: str) -> int:
    """argparse ``type`` of counts and sizes (``--batch-size``, ``--num-classes``, ...): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def check_ratio(ratio: float) -> None:
    """``--ratio``: a fraction of the units (NaN fails too: it compares false with everything)."""
    if not (isinstance(ratio, (int, float)) and not math.isnan(ratio) and 0 <= ratio <= 1):
        raise CliError(f"--ratio must be a number in [0, 1], got {ratio}")


def parse_ratio(text: str) -> float | dict[str, float]:
    """``--ratio``: one fraction for every unit kind (``0.3``) or one per kind (``heads=0.25,neurons=0.3``)."""
    if "=" not in text:
        try:
            ratio = float(text)
        except ValueError:
            raise CliError(
                f"--ratio must be a number in [0, 1] or KIND=R,... (e.g. heads=0.25,neurons=0.3), got {text!r}"
            ) from None
        check_ratio(ratio)
        return ratio
    ratios = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        try:
            ratios[kind] = float(value)
        except ValueError:
            raise CliError(f"--ratio {part!r}: {value!r} is not a number") from None
        if not kind:
            raise CliError(f"--ratio {part!r} names no unit kind (e.g. heads=0.25)")
        if not 0 <= ratios[kind] <= 1:
            raise CliError(f"--ratio {part!r}: the fraction must be in [0, 1]")
    return ratios


def check_device(spec: str) -> torch.device:
    """``--device`` names a device torch knows and this machine has (a tensor can be made on it)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {spec!r} is not a device torch knows; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "meta":
        raise CliError("--device meta holds no data: scores cannot be computed on it; use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CliError(f"--device {spec}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    try:
        torch.empty(1, device=device)
    except Exception as e:  # whatever the backend raises: it cannot be used here
        raise CliError(f"--device {spec} cannot be used on this machine: {one_line(e)}") from None
    return device


def check_writable(path: Path, option: str = "--out", folder: bool = False) -> None:
    """Fail now, before any work, when ``path`` (a file, or a ``folder``) cannot be written: it is a folder
    (a file), a file, an existing path on its way is a file, or the folder that would hold it is not
    writable. Missing folders are fine: they are made when the output is written."""
    if folder and path.exists() and not path.is_dir():
        raise CliError(f"{option} {str(path)!r} is a file, not a folder")
    if not folder and path.is_dir():
        raise CliError(f"{option} {str(path)!r} is a folder; give a file name")
    existing = path if folder and path.is_dir() else path.absolute().parent
    while not existing.exists():  # also false below a file (not a directory): stops at that file
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"cannot write {option} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"cannot write {option} {str(path)!r}: folder {str(existing)!r} is not writable")


def check_data_fits(model: nn.Module, example: torch.Tensor, model_description: str, data: str) -> None:
    """One example through ``model`` without gradients: data of the wrong shape or channel count fails
    here with a line naming both, not as a traceback from inside the scoring."""
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:  # whatever the forward raises on this input
        shape = "x".join(str(s) for s in example.shape[1:])
        raise CliError(
            f"DATA {data} (examples of shape {shape}) does not fit {model_description}: {one_line(e)}"
        ) from e
