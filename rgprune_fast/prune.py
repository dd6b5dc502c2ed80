"""From scores to pruning decisions: a global ranking over every scored channel, keep-masks, and masks
applied to a model, either removably (forward hooks) or baked into the weights.

Masking zeroes a scored module's output channels (the pre-activations ``score`` measured). Downstream
layers then see exactly what they would see if the channel were removed, as long as what follows maps
0 to 0 (ReLU, pooling, a Conv/Linear's input): that is why a masked Conv-BN-ReLU chain computes the
same function as the physically pruned one (``tests/test_tp_adaptor.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from . import registry
from .batches import split_batch
from .errors import UnsupportedModuleError

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
    """How many of ``total`` channels a pruning ``ratio`` removes (rounded as Torch-Pruning does)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    return total - int(total * (1.0 - ratio))


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


def _channel_dim(module: nn.Module) -> int:
    return registry.rule_for(module).channel_dim


def _masked_modules(model: nn.Module, keep: Masks) -> list[tuple[str, nn.Module, torch.Tensor]]:
    found = []
    for name, mask in keep.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the masks name module {name!r}, which is not in the model") from None
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(f"masks[{name!r}] must be a 1-D bool tensor (True = keep)")
        found.append((name, module, mask))
    return found


class MaskHandle:
    """The hooks installed by :func:`apply_masks`; ``remove()`` (or leaving the ``with``) undoes them."""

    def __init__(self, handles: list) -> None:
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _mask_hook(name: str, mask: torch.Tensor, dim: int):
    def hook(module: nn.Module, args, out):
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModuleError(f"cannot mask module {name!r}: it returns {type(out).__name__}")
        channels = out.shape[dim]
        if channels != mask.numel():
            raise ValueError(f"masks[{name!r}] has {mask.numel()} entries but the module outputs {channels} channels")
        shape = [1] * out.dim()
        shape[dim] = channels
        return out * mask.to(device=out.device, dtype=out.dtype).view(shape)

    return hook


def apply_masks(model: nn.Module, keep: Masks) -> MaskHandle:
    """Zero the masked channels of each module's output (forward hooks), until ``handle.remove()``.

    Usable as a context manager: ``with apply_masks(model, m): evaluate(model)``.
    """
    handles = []
    for name, module, mask in _masked_modules(model, keep):
        handles.append(module.register_forward_hook(_mask_hook(name, mask, _channel_dim(module))))
    return MaskHandle(handles)


@contextmanager
def masked(model: nn.Module, keep: Masks) -> Iterator[nn.Module]:
    """``with masked(model, keep): ...`` runs ``model`` with the masks applied."""
    handle = apply_masks(model, keep)
    try:
        yield model
    finally:
        handle.remove()


@torch.no_grad()
def bake_masks(model: nn.Module, keep: Masks) -> None:
    """Make the masks permanent by zeroing weights, so that masked channels output exactly 0.

    BatchNorm and 1-D-affine normalisation layers: weight and bias of the channel (``0·x̂ + 0``).
    Conv/Linear: the channel's weights and bias. Anything else raises
    :class:`~rgprune_fast.errors.UnsupportedModuleError` naming it (use :func:`apply_masks`).
    """
    for name, module, mask in _masked_modules(model, keep):
        drop = ~mask
        if isinstance(module, _ConvTransposeNd):
            if module.groups != 1:
                raise UnsupportedModuleError(f"cannot bake masks into grouped ConvTranspose {name!r}")
            params = [(module.weight, 1), (module.bias, 0)]
        elif isinstance(module, (_ConvNd, nn.Linear)):
            params = [(module.weight, 0), (module.bias, 0)]
        elif isinstance(module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
                raise UnsupportedModuleError(
                    f"cannot bake masks into {name!r}: it has no per-channel affine weight; use apply_masks()"
                )
            params = [(weight, 0), (getattr(module, "bias", None), 0)]
        else:
            raise UnsupportedModuleError(
                f"cannot bake masks into {name!r} ({type(module).__name__}); use apply_masks() instead"
            )
        for param, dim in params:
            if param is None:
                continue
            if param.shape[dim] != mask.numel():
                raise ValueError(
                    f"masks[{name!r}] has {mask.numel()} entries but {name!r} has {param.shape[dim]} channels"
                )
            param.index_fill_(dim, drop.nonzero().view(-1).to(param.device), 0.0)


@torch.no_grad()
def output_channels(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, int]:
    """Channels of each named module's output in one eval-mode forward of ``example_inputs``."""
    found: dict[str, int] = {}
    handles = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the scores name module {name!r}, which is not in the model") from None

        def hook(module, args, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() >= 1:
                found[name] = out.shape[_channel_dim(module)]

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        split_batch(example_inputs, 0).call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def check_scores_fit(model: nn.Module, scores: Scores, example_inputs: Any) -> None:
    """Raise ``ValueError`` naming the first module whose scores do not match the model's channels."""
    checked = check_scores(scores)
    channels = output_channels(model, list(checked), example_inputs)
    for name, s in checked.items():
        if name not in channels:
            raise ValueError(f"module {name!r} of the scores is not called by the model's forward pass")
        if channels[name] != s.numel():
            raise ValueError(
                f"the scores of module {name!r} have {s.numel()} channels but the model's module outputs "
                f"{channels[name]}: the scores were computed for a different model"
            )
