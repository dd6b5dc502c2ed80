"""Scores on disk: ``scores.pt`` (``torch.save``) and ``scores.json`` side by side, same content.

Layout: ``{"format": "rgprune_fast.scores", "version": 1, "meta": {...}, "scores": {method: {module: [C]}}}``
with tensors in the ``.pt`` file and lists of floats in the ``.json`` file. ``meta`` records how the
scores were made (model, data, gradient, ...) and the per-example input shape, which ``prune`` needs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CliError

FORMAT = "rgprune_fast.scores"
VERSION = 1


def architecture_fingerprint(model: nn.Module) -> str:
    """A hash of the names and shapes of every parameter and buffer: equal for the same architecture
    whatever its weights, different for another network (or a physically pruned one)."""
    entries = [f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items()]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def paths(out: Path) -> tuple[Path, Path]:
    """The ``.pt`` and ``.json`` files for ``--out`` (``scores.pt`` or ``scores.json`` give both)."""
    pt = out.with_suffix(".pt") if out.suffix == ".json" else out
    return pt, pt.with_suffix(".json")


def save(out: Path, scores: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> list[Path]:
    """Write the ``.pt`` file (torch.save) and its JSON twin; returns both paths."""
    path, twin = paths(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "meta": meta, "scores": scores}
    torch.save(payload, path)
    as_lists = {m: {k: v.tolist() for k, v in per.items()} for m, per in scores.items()}
    twin.write_text(json.dumps({**payload, "scores": as_lists}, indent=1))
    return [path, twin]


def load(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``(scores by method, meta)`` from a ``.pt`` or ``.json`` scores file; a clear error otherwise."""
    if not path.is_file():
        raise CliError(f"scores file {str(path)!r} does not exist")
    try:
        if path.suffix == ".json":
            payload = json.loads(path.read_text())
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CliError(f"cannot read scores file {str(path)!r}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CliError(f"{str(path)!r} is not an rgprune-fast scores file (write one with `rgprune-fast score`)")
    if payload.get("version") != VERSION:
        raise CliError(
            f"{str(path)!r} has scores format version {payload.get('version')}; this version reads {VERSION}"
        )
    scores = {
        method: {name: torch.as_tensor(v, dtype=torch.float32) for name, v in per.items()}
        for method, per in payload["scores"].items()
    }
    return scores, dict(payload.get("meta", {}))
