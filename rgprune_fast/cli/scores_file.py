"""Scores on disk: ``scores.pt`` (``torch.save``) and ``scores.json`` side by side, same content.

Layout: ``{"format": "rgprune_fast.scores", "version": 1, "meta": {...}, "scores": {method: {module: [C]}}}``
with tensors in the ``.pt`` file and lists of floats in the ``.json`` file. ``meta`` records how the
scores were made (model, data, gradient, ...) and the per-example input shape, which ``prune`` needs.

Both files are written whole or not at all, the ``.json`` renamed into place before the ``.pt``: a
``.pt`` file never appears without its ``.json``. Reading checks every field ``prune`` uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_atomically
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
    """Write the ``.pt`` file (torch.save) and its JSON twin, atomically; returns both paths."""
    path, twin = paths(out)
    payload = {"format": FORMAT, "version": VERSION, "meta": meta, "scores": scores}
    as_lists = {m: {k: v.tolist() for k, v in per.items()} for m, per in scores.items()}
    text = json.dumps({**payload, "scores": as_lists}, indent=1)
    write_atomically([(twin, lambda f: f.write(text.encode())), (path, lambda f: torch.save(payload, f))])
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
    return _scores(payload.get("scores"), path), _meta(payload.get("meta", {}), path)


def _malformed(path: Path, what: str) -> CliError:
    return CliError(f"scores file {str(path)!r} is malformed: {what} (write it with `rgprune-fast score`)")


def _kind(value: Any) -> str:
    """What ``value`` is, for an error message: its type, and a short repr of a plain value."""
    if isinstance(value, (dict, list, tuple, torch.Tensor)):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r:.40}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores(raw: Any, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{method: {module: float32 [C]}}`` from the file's ``scores``, every level checked."""
    if not isinstance(raw, dict) or not raw:
        raise _malformed(path, f"'scores' must map each method to {{module: scores}}, got {_kind(raw)}")
    scores = {}
    for method, per_module in raw.items():
        if not isinstance(method, str) or not isinstance(per_module, dict) or not per_module:
            raise _malformed(
                path, f"'scores' of method {method!r} must map module names to scores, got {_kind(per_module)}"
            )
        scores[method] = {}
        for module, values in per_module.items():
            if not isinstance(module, str):
                raise _malformed(path, f"module names must be strings, got {_kind(module)} in {method!r}")
            scores[method][module] = _vector(values, f"{method}/{module}", path)
    return scores


def _vector(values: Any, where: str, path: Path) -> torch.Tensor:
    """One module's scores: a non-empty list (JSON) or 1-D tensor (``.pt``) of finite numbers."""
    if isinstance(values, torch.Tensor):
        fits = values.dim() == 1 and values.numel() > 0 and values.dtype != torch.bool and not values.is_complex()
    else:
        fits = isinstance(values, (list, tuple)) and len(values) > 0 and all(_is_number(v) for v in values)
    if not fits:
        wrong = next((v for v in values if not _is_number(v)), None) if isinstance(values, (list, tuple)) else None
        got = _kind(values) if wrong is None else f"a list holding {_kind(wrong)}"
        raise _malformed(path, f"the scores of {where} must be a non-empty list of numbers, got {got}")
    vector = torch.as_tensor(values, dtype=torch.float32)
    if not torch.isfinite(vector).all():
        raise _malformed(path, f"the scores of {where} are not all finite numbers")
    return vector


def _positive_ints(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_int(v) and v > 0 for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The meta fields `prune` reads, and what each must be (None: not recorded).
_META_FIELDS = {
    "input_shape": (_positive_ints, "a list of positive integers"),
    "num_classes": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "seed": (_is_int, "an integer"),
    "architecture": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "data": (lambda v: isinstance(v, str), "a string"),
}


def _meta(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _malformed(path, f"'meta' must be a dict, got {_kind(raw)}")
    for key, (fits, expected) in _META_FIELDS.items():
        value = raw.get(key)
        if value is not None and not fits(value):
            raise _malformed(path, f"meta {key!r} must be {expected}, got {_kind(value)}")
    return dict(raw)
