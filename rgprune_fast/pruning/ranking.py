"""From scores to pruning decisions: a global ranking over every scored channel, and keep-masks that
prune the least important ones."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Union

import torch

from ..engine.transformer_units import unit_kind

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


ALLOCATIONS = ("global", "uniform")
Budget = Union[int, float, Mapping[str, Union[int, float]], None]
KindsOf = Union[Mapping[str, str], Callable[[str], str], None]


def kinds_of(scores: Scores, kinds: KindsOf = None) -> dict[str, str]:
    """``{key: kind}`` for every key of ``scores``: ``kinds`` (a dict or a function of the key) when
    given, else the kind read from the module's name and side (``"heads"``, ``"neurons"``, ``"experts"``,
    ``"inputs"`` or ``"channels"``; see :func:`rgprune_fast.engine.transformer_units.unit_kind`)."""
    found = {}
    for key in scores:
        if kinds is None:
            kind = unit_kind(key)
        elif isinstance(kinds, Mapping):
            if key not in kinds:
                raise ValueError(f"kinds has no entry for scores key {key!r}")
            kind = kinds[key]
        else:
            kind = kinds(key)
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"the kind of {key!r} must be a non-empty str, got {kind!r}")
        found[key] = kind
    return found


def _budgets(what: str, budget: Budget, present: list[str]) -> dict[str, int | float]:
    """``{kind: budget}`` for every kind present: one number applies to each kind separately."""
    if not isinstance(budget, Mapping):
        return dict.fromkeys(present, budget)
    unknown = [k for k in budget if k not in present]
    if unknown:
        raise ValueError(
            f"{what}= names unit kind {unknown[0]!r}, which the scores do not have; they have {', '.join(present)}"
        )
    return {kind: budget[kind] for kind in present if kind in budget}  # kinds not named: nothing pruned


def _prune_global(checked: dict, n: int, normalize, allow_empty: bool, what: str) -> list[tuple[str, int]]:
    ranking = rank(checked, normalize=normalize)
    if not allow_empty:  # the last (most important) entry of each module in the ranking is protected
        protected = {name: None for name in checked}
        for name, c in ranking:
            protected[name] = c
        ranking = [(name, c) for name, c in ranking if protected[name] != c]
    if n > len(ranking):
        total = sum(s.numel() for s in checked.values())
        hint = "" if allow_empty else f" while keeping one per module ({len(checked)} modules; allow_empty=True)"
        raise ValueError(f"cannot prune {n} of {total} {what}{hint}: at most {len(ranking)}")
    return ranking[:n]


def _prune_uniform(checked: dict, ratio: float, allow_empty: bool) -> list[tuple[str, int]]:
    pruned = []
    for name, s in checked.items():
        count = min(prune_count(s.numel(), ratio), s.numel() - (0 if allow_empty else 1))
        order = torch.sort(s.double(), stable=True).indices[:count].tolist()
        pruned += [(name, c) for c in order]
    return pruned


def masks(
    scores: Scores,
    *,
    n: Budget = None,
    ratio: Budget = None,
    normalize: str | None = "none",
    allow_empty: bool = False,
    allocation: str = "global",
    kinds: KindsOf = None,
) -> Masks:
    """Keep-masks that prune the least important units, with a budget per unit kind.

    Units of different kinds (attention heads, MLP neurons, conv channels, ...) are never ranked on one
    scale: each kind present in ``scores`` gets its own budget. A convolutional network's scores have
    one kind (``"channels"``), so for it ``ratio=0.3`` simply prunes 30 % of all channels.

    Args:
        scores: ``{key: scores [units]}`` for one method, as returned by ``rg.score``.
        n: units to prune: one int (each kind, when the scores have a single kind) or ``{kind: int}``.
        ratio: fraction to prune, instead of ``n``: one number for every kind, or ``{kind: fraction}``
            (e.g. ``{"heads": 0.25, "neurons": 0.3}``); kinds not named keep all their units.
        normalize: per-layer rescaling before a global ranking: ``"none"``, ``"l2"`` or ``"mean"``.
        allow_empty: allow a module to lose every unit. By default each module keeps its most important
            unit (a global budget that needs more raises ``ValueError``; ``uniform`` stops one short).
        allocation: ``"global"`` ranks a kind's units across all layers together; ``"uniform"`` prunes
            the same fraction (``ratio``) from every module, ``ceil(ratio * units)`` of its lowest.
        kinds: the kind of each key (dict or function of the key); default: read from the key
            (:func:`kinds_of`).

    Returns:
        ``{key: bool tensor [units]}``, True = keep.
    """
    checked = check_scores(scores)
    if (n is None) == (ratio is None):
        raise ValueError("pass exactly one of n= (units to prune) or ratio= (fraction to prune)")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; use one of {', '.join(ALLOCATIONS)}")
    if allocation == "uniform" and n is not None:
        raise ValueError("allocation='uniform' prunes a fraction of every module: give ratio=, not n=")
    kind_of = kinds_of(checked, kinds)
    present = list(dict.fromkeys(kind_of.values()))
    if n is not None and not isinstance(n, Mapping) and len(present) > 1:
        raise ValueError(
            f"the scores hold several unit kinds ({', '.join(present)}), which are not comparable: give n per "
            f"kind, e.g. n={{{', '.join(f'{k!r}: ...' for k in present)}}}"
        )
    keep = {name: torch.ones(s.numel(), dtype=torch.bool) for name, s in checked.items()}
    what = "n" if n is not None else "ratio"
    for kind, budget in _budgets(what, n if n is not None else ratio, present).items():
        group = {key: s for key, s in checked.items() if kind_of[key] == kind}
        if ratio is not None:
            count = prune_count(sum(s.numel() for s in group.values()), budget)  # also checks the number
        elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"n must be a non-negative int, got {budget!r}")
        else:
            count = budget
        if allocation == "uniform":
            pruned = _prune_uniform(group, budget, allow_empty)
        else:
            pruned = _prune_global(group, count, normalize, allow_empty, kind)
        for key, c in pruned:
            keep[key][c] = False
    return keep
