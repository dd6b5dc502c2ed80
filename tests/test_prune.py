"""Ranking, masks, and masks applied to a model (rgprune_fast/prune.py)."""

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast.pruning import (
    apply_masks,
    bake_masks,
    check_scores_fit,
    masked,
    masks,
    normalize_per_layer,
    output_channels,
    prune_count,
    rank,
)

SCORES = {"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.05, 3.0, 0.3])}


def test_rank_is_global_and_ascending_with_stable_ties():
    assert rank(SCORES) == [("b", 1), ("a", 1), ("b", 0), ("b", 3), ("a", 0), ("a", 2), ("b", 2)]
    tied = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0, 1.0])}
    assert rank(tied) == [("x", 1), ("y", 0), ("x", 0), ("y", 1)]  # ties keep module, then channel order


def test_per_layer_normalization_changes_the_ranking():
    l2 = normalize_per_layer(SCORES, "l2")
    assert torch.allclose(l2["b"].norm(), torch.tensor(1.0, dtype=torch.float64))
    mean = normalize_per_layer(SCORES, "mean")
    assert torch.allclose(mean["a"].mean(), torch.tensor(1.0, dtype=torch.float64))
    assert rank(SCORES, normalize="l2")[:2] == [("b", 1), ("b", 0)]  # b's large channel shrinks its others
    zero = normalize_per_layer({"z": torch.zeros(3)}, "l2")
    assert torch.equal(zero["z"], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown per-layer normalization 'max'"):
        normalize_per_layer(SCORES, "max")


def test_masks_by_count_and_ratio():
    keep = masks(SCORES, n=3)
    assert keep["a"].tolist() == [True, False, True]
    assert keep["b"].tolist() == [False, False, True, True]
    assert prune_count(7, 0.5) == 4  # ceil(0.5 * 7): keeps floor(0.5 * 7), Torch-Pruning's rounding
    assert sum(int((~m).sum()) for m in masks(SCORES, ratio=0.5).values()) == 4
    assert all(m.all() for m in masks(SCORES, n=0).values())


def test_ratio_counts_exactly():
    """``1 - ratio`` in floating point made 0.8 of 5 prune 5 and 0.9 of 10 prune 10 (105 such pairs)."""
    assert prune_count(5, 0.8) == 4 and prune_count(10, 0.9) == 9
    for total in range(1, 200):
        for k in range(101):
            assert prune_count(total, k / 100) == -(-total * k // 100), (total, k)
    scores = {"a": torch.arange(5.0), "b": torch.arange(10.0)}
    assert sum(int((~m).sum()) for m in masks(scores, ratio=0.8, allow_empty=True).values()) == 12


def test_masks_never_empty_a_layer_unless_asked():
    keep = masks(SCORES, n=5)  # 7 channels, 2 modules: at most 5 prunable
    assert keep["a"].tolist() == [False, False, True] and keep["b"].tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="cannot prune 6 of 7 channels while keeping one per module.*at most 5"):
        masks(SCORES, n=6)
    everything = masks(SCORES, n=7, allow_empty=True)
    assert not any(m.any() for m in everything.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of n="),
        ({"n": 1, "ratio": 0.1}, "exactly one of n="),
        ({"n": -1}, "non-negative int"),
        ({"ratio": 1.5}, r"ratio must be a number in \[0, 1\]"),
    ],
)
def test_masks_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masks(SCORES, **kwargs)


def test_bad_scores_are_named():
    with pytest.raises(ValueError, match="several methods.*scores\\['taylorfo'\\]"):
        masks({"taylorfo": SCORES, "taylorfo_sq": SCORES}, n=1)
    with pytest.raises(ValueError, match=r"scores\['a'\] must be a 1-D"):
        masks({"a": torch.ones(2, 2)}, n=1)
    with pytest.raises(ValueError, match=r"scores\['a'\] contains NaN"):
        masks({"a": torch.tensor([1.0, float("nan")])}, n=1)
    with pytest.raises(ValueError, match="non-empty"):
        masks({}, n=1)


def _model_and_data():
    model = models.make("conv_bn_relu")
    data = models.batches("conv_bn_relu")
    return model, data, rg.score(model, data)


def test_apply_masks_zeroes_channels_and_is_removable():
    model, data, scores = _model_and_data()
    x = data[0][0]
    keep = masks(scores, n=5)
    before = model(x)
    handle = apply_masks(model, keep)
    masked_out = model(x)
    handle.remove()
    assert not torch.equal(before, masked_out)
    assert torch.equal(model(x), before)  # removed: the model is as before
    with masked(model, keep):
        inside = model(x)
    assert torch.equal(inside, masked_out)
    # the scored outputs' masked channels are exactly zero (hooks registered later see the masked output)
    with apply_masks(model, keep):
        outs = {}
        hs = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)) for n in keep]
        model(x)
        for h in hs:
            h.remove()
    for name, m in keep.items():
        assert (outs[name][:, ~m] == 0).all() and (outs[name][:, m] != 0).any()


def test_bake_masks_equals_apply_masks():
    model, data, scores = _model_and_data()
    x = data[0][0]
    keep = masks(scores, ratio=0.4)
    with apply_masks(model, keep):
        expected = model(x)
    bake_masks(model, keep)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_bake_masks_conv_and_linear_and_errors():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.GELU())
    x = torch.randn(2, 2, 6, 6)
    keep = {"0": torch.tensor([True, False, True, False]), "3": torch.tensor([False, True, True])}
    with apply_masks(model, keep):
        expected = model(x)
    bake_masks(model, keep)
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(rg.UnsupportedModuleError, match="cannot bake masks into '4'"):
        bake_masks(model, {"4": torch.tensor([True])})
    with pytest.raises(ValueError, match="masks name module 'nope'"):
        apply_masks(model, {"nope": torch.tensor([True])})
    with pytest.raises(ValueError, match=r"masks\['0'\] has 3 entries but '0' has 4 channels"):
        bake_masks(model, {"0": torch.tensor([True, False, True])})
    short = apply_masks(model, {"0": torch.tensor([True, False, True])})
    with pytest.raises(ValueError, match=r"masks\['0'\] has 3 entries but the module outputs 4"):
        model(x)
    short.remove()


def test_bake_masks_is_all_or_nothing():
    """A bad second entry used to raise after the first module's weights were zeroed."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.GELU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_seconds = [
        ({"3": torch.tensor([True, False])}, ValueError),  # wrong length
        ({"4": torch.tensor([True])}, rg.UnsupportedModuleError),  # a GELU has no weights
        ({"nope": torch.tensor([True])}, ValueError),  # not in the model
        ({"3": torch.tensor([1, 0, 1])}, ValueError),  # not bool
    ]
    for second, error in bad_seconds:
        with pytest.raises(error):
            bake_masks(model, {"0": torch.tensor([True, False, True, False]), **second})
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), (second, k)
    with pytest.raises(ValueError):
        apply_masks(model, {"0": torch.tensor([True, False, True, False]), "nope": torch.tensor([True])})
    assert all(not m._forward_hooks for m in model.modules())


def test_scores_fit_check_names_the_module():
    model, data, scores = _model_and_data()
    x = data[0][0][:1]
    assert output_channels(model, list(scores), x) == {"1": 8, "4": 12}
    check_scores_fit(model, scores, x)
    with pytest.raises(ValueError, match="scores of module '4' have 11 channels but the model's module outputs 12"):
        check_scores_fit(model, {**scores, "4": torch.ones(11)}, x)
    with pytest.raises(ValueError, match="'9', which is not in the model"):
        check_scores_fit(model, {"9": torch.ones(3)}, x)
