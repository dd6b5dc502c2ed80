"""Physical pruning through Torch-Pruning (optional dependency: ``pip install torch-pruning``).

:class:`ScoreImportance` is a ``torch_pruning.importance.Importance`` that answers with rgprune_fast
scores: for each dependency group it looks up every scored module whose output channels the group
removes (or, for ``:input`` keys, whose input channels it removes: heads and neurons, each unit's score
on each of its channels) and maps their scores onto the group's root channels. Members coupled by residual additions
(torchvision ResNet: the stem BN and every block's last BN share channels) are combined, by default by
summing, because removing a coupled channel removes the unit in every member and first-order Taylor
estimates of removing several units add up. Groups with no scored member return ``None``, which
Torch-Pruning reads as "do not prune this group".

:func:`prune_physically` runs ``tp.pruner.MetaPruner`` with global pruning and this importance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..optional import require

tp = require("torch_pruning", package="torch-pruning", extra="prune", purpose="physical pruning")

from ..engine.batching import as_batch  # noqa: E402  (after the optional-dependency check)
from ..engine.model_state import preserved  # noqa: E402
from ..engine.module_rules import PRODUCERS  # noqa: E402
from ..engine.probe import run_probe  # noqa: E402
from ..errors import UnsupportedModuleError  # noqa: E402
from .ranking import check_scores, normalize_per_layer  # noqa: E402
from .targets import expand, input_width, resolve  # noqa: E402

REDUCTIONS = ("sum", "mean", "max")


def _out_channels(module: nn.Module) -> int | None:
    """Output channels of the usual scored modules (``None`` for others: checked per group instead)."""
    for attribute in ("num_features", "out_channels", "out_features"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    return None


class ScoreImportance(tp.importance.Importance):
    """Torch-Pruning importance built from rgprune_fast scores.

    Args:
        model: the model the scores belong to (module names are resolved against it).
        scores: ``{module name: scores [C]}`` for one method (``rg.score(model, data)``).
        reduction: how coupled members' scores combine per root channel: ``"sum"``, ``"mean"``, ``"max"``.
        normalize: per-layer rescaling before combining: ``"none"``, ``"l2"`` or ``"mean"``.
    """

    def __init__(
        self, model: nn.Module, scores: dict[str, torch.Tensor], reduction: str = "sum", normalize: str | None = "none"
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
        self.reduction = reduction
        self._by_module: dict[nn.Module, torch.Tensor] = {}  # output channels
        self._by_input: dict[nn.Module, torch.Tensor] = {}  # input channels (``:input`` keys), per channel
        for key, s in normalize_per_layer(check_scores(scores), normalize).items():
            target = resolve(model, key, "scores")
            if target.side == "experts":
                raise UnsupportedModuleError(
                    f"{key!r}: Torch-Pruning cannot remove Mixture-of-Experts neurons; use masks() with bake_masks()"
                )
            if target.side == "input":
                width = input_width(target.module)
                if width is None:
                    raise UnsupportedModuleError(f"{key!r}: Torch-Pruning input channels of a {type(target.module)}")
                self._by_input[target.module] = expand(s.float(), width, f"the scores of {key!r}")
                continue
            channels = _out_channels(target.module)
            if channels is not None and channels != s.numel():
                raise ValueError(
                    f"the scores of module {key!r} have {s.numel()} channels but it has {channels}: "
                    "scores describe the model they were computed on (pruned since? score it again)"
                )
            self._by_module[target.module] = s.float()

    @torch.no_grad()
    def __call__(self, dependency_group: Any) -> torch.Tensor | None:
        graph = dependency_group._DG
        roots = len(dependency_group[0].idxs)
        total = torch.zeros(roots)
        count = torch.zeros(roots)
        best = torch.full((roots,), -torch.inf)
        seen: set[int] = set()
        for item in dependency_group:
            module = item.dep.target.module
            if id(module) in seen:
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                scored = self._by_module
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                scored = self._by_input  # a consumer whose input channels are the scored units
            else:
                continue
            if module not in scored:
                continue
            root_idxs = list(item.root_idxs)
            if any(r is None for r in root_idxs):
                continue
            seen.add(id(module))
            s = scored[module]
            own = tp._helpers.to_plain_idxs(item.idxs)
            if max(own, default=-1) >= s.numel():
                raise ValueError(
                    f"scores of a module have {s.numel()} channels but Torch-Pruning sees more "
                    f"({type(module).__name__} with at least {max(own) + 1}); the scores do not fit this model"
                )
            values = s[torch.as_tensor(own, dtype=torch.long)]
            at = torch.as_tensor(root_idxs, dtype=torch.long)
            total.index_add_(0, at, values)
            count.index_add_(0, at, torch.ones_like(values))
            best.scatter_reduce_(0, at, values, reduce="amax")
        if not seen:
            return None
        if self.reduction == "sum":
            imp = total
        elif self.reduction == "mean":
            imp = total / count.clamp(min=1)
        else:
            imp = best
        # Root channels no scored member covers are never chosen before scored ones.
        return torch.where(count > 0, imp, torch.full_like(imp, torch.inf))


def output_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """The Conv/Linear modules whose output (or a view of it) is the model's output: never pruned."""
    with preserved(model):
        model.eval()
        probe = run_probe(model, as_batch(example_inputs, 0))
    return [m for name, m in model.named_modules() if isinstance(m, PRODUCERS) and probe.produces_output(name)]


def prune_physically(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    example_inputs: Any,
    *,
    ratio: float,
    ignored_layers: Sequence[nn.Module] | None = None,
    reduction: str = "sum",
    normalize: str | None = "none",
    round_to: int | None = None,
) -> nn.Module:
    """Remove channels from ``model`` in place with ``tp.pruner.MetaPruner`` (global pruning).

    Args:
        model: the model (pruned in place and returned).
        scores: ``{module name: scores [C]}`` for one method.
        example_inputs: a batch the model accepts (for Torch-Pruning's tracing), e.g. ``torch.randn(1, 3, 32, 32)``.
        ratio: Torch-Pruning's global pruning ratio: the fraction of all dependency groups' channels to remove.
            Groups without scored modules are not pruned, so the scored groups lose more than ``ratio``.
        ignored_layers: modules to leave alone; default: the layer producing the model output.
        reduction, normalize: see :class:`ScoreImportance`.
        round_to: keep channel counts multiples of this (Torch-Pruning's ``round_to``).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    importance = ScoreImportance(model, scores, reduction=reduction, normalize=normalize)
    ignored = list(output_layers(model, example_inputs) if ignored_layers is None else ignored_layers)
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=importance,
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=round_to,
        )
        pruner.step()
    finally:
        model.train(was_training)
    return model
