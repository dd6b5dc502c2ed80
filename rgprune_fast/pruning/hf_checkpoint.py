"""Saving and loading pruned Hugging Face transformers.

After pruning, layers differ in width, which a transformers config cannot express; ``from_pretrained``
would refuse the checkpoint (shape mismatch). :func:`save_pruned` therefore records every block's width
in the saved ``config.json`` (key :data:`WIDTHS_KEY`), and :func:`load_pruned` has ``from_pretrained``
build the model from its config, shrunk to those widths by the same slicing code as the pruning, then
load the weights strictly (every key present, no extra one, every shape equal; else ``ValueError``).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from .._torchvision import import_torchvision
from .hf_slicing import find_block, prune_transformer, transformer_widths

WIDTHS_KEY = "rgprune_fast_widths"


def _transformers():
    with contextlib.suppress(ImportError):  # transformers imports torchvision (if installed), which needs
        import_torchvision()  # op schemas on some torch builds
    import transformers

    return transformers


def save_pruned(model: nn.Module, folder: str | os.PathLike, tokenizer=None, **kwargs) -> None:
    """``model.save_pretrained(folder, **kwargs)`` with every block's width recorded in the config
    (``config.rgprune_fast_widths``, which stays set on ``model.config``); the tokenizer too, if given."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise ValueError("save_pruned() takes a Hugging Face PreTrainedModel (with .config and .save_pretrained)")
    setattr(config, WIDTHS_KEY, transformer_widths(model))
    model.save_pretrained(folder, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _shrink_masks(model: nn.Module, widths: dict) -> dict[str, torch.Tensor]:
    """Keep-masks that bring a freshly built model to the recorded ``widths`` (which channels are kept
    does not matter: the weights are loaded afterwards); one entry per head or neuron."""
    keep = {}
    for key, width in widths.items():
        name = key.rpartition(":")[0]
        try:
            block = find_block(model, name)
        except AttributeError:
            block = None
        if block is None:
            raise ValueError(f"the recorded widths name {key!r}, which is not a prunable block of this model")
        if block.kind == "mlp":
            mask = torch.arange(block.units, device="cpu") < int(width["neurons"])
        else:
            heads, kv_heads, head_dim = int(width["heads"]), int(width["kv_heads"]), int(width["head_dim"])
            n_rep = block.units // block.kv_heads
            if head_dim != block.head_dim or kv_heads > block.kv_heads or heads % kv_heads or heads // kv_heads > n_rep:
                raise ValueError(f"the recorded widths of {key!r} ({width}) do not fit {block.name!r} as built")
            # the first heads // kv_heads query heads of each of the first kv_heads groups
            head = torch.arange(block.units, device="cpu")  # CPU also under from_pretrained's meta context
            group, rank = head // n_rep, head % n_rep
            mask = (group < kv_heads) & (rank < heads // kv_heads)
        if not bool(mask.all()):
            keep[key] = mask
    return keep


def _shrinking(model_class, widths: dict):
    """``model_class`` with an ``__init__`` that shrinks the new model to ``widths``, so that
    ``from_pretrained`` (its key renaming, dtype, device map, tied weights) loads the pruned shapes."""

    def __init__(self, config, *args, **kwargs):
        model_class.__init__(self, config, *args, **kwargs)
        prune_transformer(self, _shrink_masks(self, widths))

    return type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})


def load_pruned(folder: str | os.PathLike, model_class=None, **kwargs) -> nn.Module:
    """Load a model saved by :func:`save_pruned` (any per-layer widths), or an ordinary one, in eval mode.

    Args:
        folder: the saved folder.
        model_class: the transformers class to build; default: the config's ``architectures[0]``.
        kwargs: passed to ``model_class.from_pretrained`` (``dtype=``, ``device_map=``, ...).

    Raises ``ValueError`` listing the weights that are missing, unexpected or of another shape than the
    recorded widths give (``from_pretrained`` alone would initialise a missing weight randomly, with a warning).
    """
    tf = _transformers()
    folder = os.fspath(folder)
    config = tf.AutoConfig.from_pretrained(folder)
    if model_class is None:
        architectures = getattr(config, "architectures", None) or []
        if not architectures or not hasattr(tf, architectures[0]):
            raise ValueError(f"the config in {folder!r} names no transformers class; pass model_class=")
        model_class = getattr(tf, architectures[0])
    widths = getattr(config, WIDTHS_KEY, None)
    cls = _shrinking(model_class, widths) if widths else model_class
    kwargs.setdefault("ignore_mismatched_sizes", True)  # reported in `info`, then raised below with the keys
    model, info = cls.from_pretrained(folder, config=config, output_loading_info=True, **kwargs)
    model.__class__ = model_class  # the shrinking subclass only differs in __init__, which has run
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        found = "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))}" for k, v in problems.items())
        raise ValueError(f"the checkpoint in {folder!r} does not fit the model built from its config: {found}")
    return model.eval()
