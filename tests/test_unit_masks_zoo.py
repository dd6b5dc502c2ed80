"""Masks of the default units on every transformer of the public model zoo (tests/zoo.py: timm,
torchvision and Hugging Face): per-kind budgets prune every kind, the hooked model equals the model with
the masks baked into its weights, and where ``prune_transformer`` knows the blocks, the physically
pruned model equals both."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import zoo

import rgprune_fast as rg
from rgprune_fast.errors import UnsupportedModuleError
from rgprune_fast.pruning import bake_masks, kinds_of, masked, masks, prune_transformer

# Families prune_transformer must handle (docs/transformer_pruning.md); others must refuse by name.
PHYSICAL = ("hf-llama", "hf-qwen2", "hf-mistral", "hf-gpt2", "hf-bert", "hf-roberta", "hf-wrapped-bert", "hf-vit")


def _cases():
    found = []
    if importlib.util.find_spec("timm"):
        found += zoo.TIMM
    if importlib.util.find_spec("torchvision"):
        found += [zoo._tv(n) for n in zoo.torchvision_names()]
    if importlib.util.find_spec("transformers"):
        found += zoo.HF
    return [pytest.param(c, id=c.id) for c in found if c.heads or c.neurons or c.experts]


def _output(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out[0]


@pytest.mark.parametrize("case", _cases())
def test_default_unit_masks_apply_bake_and_prune_alike(case):
    model = case.build().eval()
    for module in model.modules():  # torchvision's ViT starts with a zero classifier: outputs all 0
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    inputs = case.inputs(torch.Generator().manual_seed(0))
    scores = rg.score(model, [inputs], gradient="random", seed=1)
    kind_of = kinds_of(scores)
    # 30 % of every kind that has more units than the one per module it keeps (multi-query attention:
    # one unit per layer, which stays)
    prunable = {kind for key, kind in kind_of.items() if scores[key].numel() > 1}
    keep = masks(scores, ratio=dict.fromkeys(prunable, 0.3))
    for kind in prunable:  # every such kind loses units
        assert any(not bool(keep[k].all()) for k, v in kind_of.items() if v == kind), kind
    before = _output(model, inputs)
    with masked(model, keep):
        hooked = _output(model, inputs)
    assert not torch.allclose(hooked, before)
    scale = hooked.abs().max().clamp(min=1e-6)
    baked_model = copy.deepcopy(model)
    bake_masks(baked_model, keep)
    assert (_output(baked_model, inputs) - hooked).abs().max() <= 1e-5 * scale
    pruned = copy.deepcopy(model)
    unit_keep = {k: v for k, v in keep.items() if ":" in k}  # hybrids' BatchNorms are Torch-Pruning's job
    if any(case.id.startswith(p) for p in PHYSICAL) and not case.experts:
        report = prune_transformer(pruned, unit_keep)
        assert report["params_after"] < report["params_before"]
    else:  # a model whose blocks it does not know: refused by name, or (if it knew them after all) exact
        try:
            prune_transformer(pruned, unit_keep)
        except UnsupportedModuleError as e:
            assert "'" in str(e)  # names the module
            return
        masked_units = copy.deepcopy(model)
        with masked(masked_units, unit_keep):
            hooked = _output(masked_units, inputs)
    assert (_output(pruned, inputs) - hooked).abs().max() <= 1e-5 * scale
