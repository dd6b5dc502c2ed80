"""From scores to pruning decisions: a global ranking over every scored channel, and keep-masks that
prune the least important ones."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import torch

Scores = Mapping[str, torch.Tensor]
Masks = dict[str, torch.Tensor]
LAYER_NORMALIZATIONS = ("none", "l2", "mean")


def check_scores(scores: Scores) -> dict[str, torch.Tensor]:
    """``scores`` as ``{module name: float 1-D CPU tensor}``; a clear error for anything else."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty {module name: 1-D tensor} dict, as returned by rg.score()")
    checked = {}
    for name, value in scores.items():
        if isinstance(value, Mapping):
            raise ValueError(
                f"scores holds several methods ({', '.join(map(repr, scores))}); pass one of them, "
                f"e.g. scores[{next(iter(scores))!r}]"
            )
        if not isinstance(name, str):
            raise TypeError(f"score keys must be module names (str), got {type(name).__name__}")
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"scores[{name!r}] must be a 1-D floating-point tensor, got {shape}")
        if value.numel() == 0:
            raise ValueError(f"scores[{name!r}] is empty")
        if not torch.isfinite(value).all():
            raise ValueError(f"scores[{name!r}] contains NaN or Inf")
        checked[name] = value.detach().cpu()
    return checked


def normalize_per_layer(scores: Scores, how: str | None = "none") -> dict[str, torch.Tensor]:
    """Rescale each layer's scores so that layers compete on equal terms in a global ranking.

    ``"l2"`` divides by the layer's L2 norm, ``"mean"`` by its mean; ``"none"``/``None`` leaves them.
    A layer whose scores are all zero stays zero.
    """
    how = "none" if how is None else how
    if how not in LAYER_NORMALIZATIONS:
        raise ValueError(f"unknown per-layer normalization {how!r}; use one of {', '.join(LAYER_NORMALIZATIONS)}")
    out = {}
    for name, s in check_scores(scores).items():
        s = s.double()
        scale = s.norm() if how == "l2" else s.mean() if how == "mean" else torch.ones((), dtype=s.dtype)
        out[name] = s / scale if scale > 0 else s
    return out


def rank(scores: Scores, *, normalize: str | None = "none") -> list[tuple[str, int]]:
    """Every scored channel as ``(module name, channel)``, least important first.

    Ties keep ``scores``' order (module by module, channel by channel), so the ranking is deterministic.
    """
    normalized = normalize_per_layer(scores, normalize)
    flat = torch.cat(list(normalized.values()))
    order = torch.sort(flat, stable=True).indices.tolist()
    index = [(name, c) for name, s in normalized.items() for c in range(s.numel())]
    return [index[i] for i in order]


def prune_count(total: int, ratio: float) -> int:
    """How many of ``total`` channels a pruning ``ratio`` removes: ``ceil(ratio * total)``, counted
    exactly, with ``ratio`` taken as the decimal it prints as (``0.8`` is 4/5, not the binary float just
    above it), so ``0.8`` of 5 prunes 4 and ``0.9`` of 10 prunes 9. The kept count ``floor((1 - ratio) *
    total)`` is Torch-Pruning's rounding, without its floating-point error."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    exact = Fraction(repr(float(ratio)))  # the shortest decimal that reads back as this float
    return math.ceil(exact * total)


def masks(
    scores: Scores,
    *,
    n: int | None = None,
    ratio: float | None = None,
    normalize: str | None = "none",
    allow_empty: bool = False,
) -> Masks:
    """Keep-masks that prune the ``n`` (or ``ratio`` of all) least important channels globally.

    Args:
        scores: ``{module name: scores [C]}`` for one method, as returned by ``rg.score``.
        n: number of channels to prune, over all modules together.
        ratio: fraction of all scored channels to prune (instead of ``n``).
        normalize: per-layer rescaling before the global ranking: ``"none"``, ``"l2"`` or ``"mean"``.
        allow_empty: allow a module to lose every channel. By default each module keeps its most
            important channel, and asking for more than that leaves raises ``ValueError``.

    Returns:
        ``{module name: bool tensor [C]}``, True = keep.
    """
    checked = check_scores(scores)
    total = sum(s.numel() for s in checked.values())
    if (n is None) == (ratio is None):
        raise ValueError("pass exactly one of n= (channels to prune) or ratio= (fraction to prune)")
    if ratio is not None:
        n = prune_count(total, ratio)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    ranking = rank(checked, normalize=normalize)
    if not allow_empty:  # the last (most important) entry of each module in the ranking is protected
        protected = {name: None for name in checked}
        for name, c in ranking:
            protected[name] = c
        ranking = [(name, c) for name, c in ranking if protected[name] != c]
    if n > len(ranking):
        hint = (
            "" if allow_empty else f" while keeping one channel per module ({len(checked)} modules; allow_empty=True)"
        )
        raise ValueError(f"cannot prune {n} of {total} channels{hint}: at most {len(ranking)}")
    keep = {name: torch.ones(s.numel(), dtype=torch.bool) for name, s in checked.items()}
    for name, c in ranking[:n]:
        keep[name][c] = False
    return keep
