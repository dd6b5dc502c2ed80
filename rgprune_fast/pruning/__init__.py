"""From scores to a smaller network: ``ranking.py`` (global ranking, keep-masks), ``masking.py`` (masks
applied by hooks or baked into the weights; do the scores fit the model), ``counting.py`` (parameters
and MACs) and ``tp_adaptor.py`` (physical pruning through Torch-Pruning; optional dependency, import
it explicitly: ``from rgprune_fast.pruning.tp_adaptor import prune_physically``)."""

from .counting import count_macs, count_params
from .masking import MaskHandle, apply_masks, bake_masks, check_scores_fit, masked, output_channels
from .ranking import LAYER_NORMALIZATIONS, check_scores, masks, normalize_per_layer, prune_count, rank

__all__ = [
    "LAYER_NORMALIZATIONS",
    "MaskHandle",
    "apply_masks",
    "bake_masks",
    "check_scores",
    "check_scores_fit",
    "count_macs",
    "count_params",
    "masked",
    "masks",
    "normalize_per_layer",
    "output_channels",
    "prune_count",
    "rank",
]
