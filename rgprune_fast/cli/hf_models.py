"""Hugging Face checkpoints on the command line: ``MODEL`` a folder with a ``config.json`` (as
``save_pretrained`` writes it, pruned by ``rgprune-fast prune`` or not), ``DATA`` text:
``docstrings`` (sentences of the standard library's docstrings, shipped with Python) or ``text:FILE``
(one example per line), tokenized with the checkpoint's own tokenizer."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CliError

MAX_LENGTH = 128


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    tokenizer: object | None
    description: str


def is_checkpoint(spec: str) -> bool:
    """``MODEL`` is a Hugging Face checkpoint folder."""
    return Path(spec).is_dir() and (Path(spec) / "config.json").is_file()


def load_checkpoint(folder: str) -> LoadedCheckpoint:
    """The checkpoint's model (pruned widths too) in eval mode, and its tokenizer if it has one."""
    from ..pruning.hf_checkpoint import _transformers, load_pruned

    try:
        tf = _transformers()
    except ModuleNotFoundError:
        raise CliError(f"{folder!r} is a Hugging Face checkpoint: install transformers to load it") from None
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()  # the command's output is its own lines (and errors one line)
    try:
        model = load_pruned(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the Hugging Face checkpoint {folder!r}: {str(e).splitlines()[0]}") from None
    tokenizer = None
    with contextlib.suppress(OSError, ValueError):  # a checkpoint without a tokenizer: only text DATA needs one
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    name = type(model).__name__
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return LoadedCheckpoint(model.eval(), tokenizer, f"Hugging Face {name} ({dtype}) from {folder}")


def text_lines(spec: str, *, count: int, seed: int) -> tuple[list[str], str]:
    """The examples of the text ``spec`` names (``count`` sentences of ``docstrings``), and their
    description; checked before any model is loaded."""
    if spec == "docstrings":
        from ..demo.transformer.data import load

        sentences = load(count, 0, seed=seed)
        return list(sentences.score), f"{len(sentences.score)} sentences of the standard library's docstrings"
    if spec.startswith("text:"):
        path = Path(spec[5:])
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read text DATA {str(path)!r}: {e}") from None
        if not lines:
            raise CliError(f"text DATA {str(path)!r} has no non-empty line")
        return lines, f"{len(lines)} lines of {path}"
    raise CliError(
        f"DATA for a Hugging Face checkpoint is docstrings or text:FILE (one example per line), not {spec!r}"
    )


def text_batches(lines: list[str], tokenizer, *, batch_size: int) -> list[dict]:
    """``lines`` tokenized with the checkpoint's tokenizer, ``batch_size`` per batch."""
    if tokenizer is None:
        raise CliError("the checkpoint has no tokenizer, so text DATA cannot be fed to it")
    out = []
    for start in range(0, len(lines), batch_size):
        encoded = tokenizer(
            lines[start : start + batch_size], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        out.append({k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)})
    return out


def save_checkpoint(model: nn.Module, tokenizer, out: Path) -> None:
    """Save into a temporary folder next to ``out``, then rename it into place (an old ``out`` is
    replaced only once the new one is complete)."""
    from ..pruning.hf_checkpoint import save_pruned

    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent or Path(".")))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # a folder like any other once renamed (mkdtemp makes it private)
    try:
        save_pruned(model, staging, tokenizer=tokenizer)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent or Path(".")))
            os.replace(out, old / "x")
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(old / "x", out)  # the previous checkpoint back in place
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
