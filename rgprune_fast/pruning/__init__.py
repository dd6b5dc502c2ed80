"""From scores to a smaller network: ``ranking.py`` (rankings, keep-masks with a budget per unit kind),
``targets.py`` (what a key points at), ``masking.py`` (masks applied by hooks), ``baking.py`` (masks baked
into the weights), ``fitting.py`` (do the scores fit the model), ``counting.py`` (parameters
and MACs) and ``tp_adaptor.py`` (physical pruning through Torch-Pruning; optional dependency, import
it explicitly: ``from rgprune_fast.pruning.tp_adaptor import prune_physically``)."""

from .baking import bake_masks
from .counting import count_macs, count_params
from .fitting import check_scores_fit, output_channels
from .hf_checkpoint import load_pruned, save_pruned
from .hf_slicing import prune_transformer, transformer_widths
from .masking import MaskHandle, apply_masks, masked
from .ranking import (
    ALLOCATIONS,
    LAYER_NORMALIZATIONS,
    check_scores,
    kinds_of,
    masks,
    normalize_per_layer,
    prune_count,
    rank,
)

__all__ = [
    "ALLOCATIONS",
    "LAYER_NORMALIZATIONS",
    "MaskHandle",
    "apply_masks",
    "bake_masks",
    "check_scores",
    "check_scores_fit",
    "count_macs",
    "count_params",
    "kinds_of",
    "load_pruned",
    "masked",
    "masks",
    "normalize_per_layer",
    "output_channels",
    "prune_count",
    "prune_transformer",
    "rank",
    "save_pruned",
    "transformer_widths",
]
