"""Physical pruning through Torch-Pruning with rgprune_fast scores (rgprune_fast/tp_adaptor.py).

Why masking equals removing on a Conv-BN-ReLU chain: the scored units are the BatchNorm outputs.
Zeroing BN channel c makes ReLU output 0 there, so the next Conv gets 0 in input channel c — the same
as that Conv without input channel c (zero padding adds zeros only; its bias does not depend on c).
After the last BN, ReLU -> average pooling -> Linear likewise sees 0 for c, the same as the Linear
without input feature c. Nothing on the way adds a constant to channel c: that would break it
(e.g. masking a Conv whose output feeds a BN: the BN would add beta - gamma*mean/std to the zeros),
which is why rg.score scores the BN, not the Conv before it. Run in float64, the two models then
agree to rounding, and the pruned BN keeps exactly the running statistics of the unmasked channels.
"""

import copy
from types import SimpleNamespace

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast.pruning import apply_masks, masks

tp = pytest.importorskip("torch_pruning", reason="physical pruning needs torch-pruning (the test extra has it)")
from rgprune_fast.pruning.tp_adaptor import ScoreImportance, output_layers, prune_physically  # noqa: E402


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["taylorfo_sq", "taylorfo", "molchanov_group"])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_physically_pruned_chain_equals_masked_chain(method, ratio):
    model = models.make("conv_bn_relu").double()
    data = [(x.double(), t) for x, t in models.batches("conv_bn_relu")]
    scores = rg.score(model, data, method=method, gradient="label")
    keep = masks(scores, ratio=ratio)  # the same count and global ranking as Torch-Pruning's
    pruned = prune_physically(copy.deepcopy(model), scores, data[0][0][:1], ratio=ratio)

    for bn, name in ((pruned[1], "1"), (pruned[4], "4")):
        assert bn.num_features == int(keep[name].sum())
        assert torch.equal(bn.running_mean, model.get_submodule(name).running_mean[keep[name]])
    assert pruned[3].in_channels == int(keep["1"].sum()) and pruned[8].in_features == int(keep["4"].sum())

    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad(), apply_masks(model, keep):
        expected = model(x)
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert params(pruned) < params(model)


def test_residual_groups_combine_their_members_scores():
    model = models.make("resnet18")
    scores = rg.score(model, models.batches("resnet18"))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    # The stem's 64 channels are added to by layer1's blocks: bn1, layer1.0.bn2, layer1.1.bn2 are coupled.
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(64)))
    stem = scores["bn1"] + scores["layer1.0.bn2"] + scores["layer1.1.bn2"]
    torch.testing.assert_close(ScoreImportance(model, scores)(group), stem)
    torch.testing.assert_close(ScoreImportance(model, scores, reduction="mean")(group), stem / 3)
    biggest = torch.stack([scores["bn1"], scores["layer1.0.bn2"], scores["layer1.1.bn2"]]).amax(0)
    torch.testing.assert_close(ScoreImportance(model, scores, reduction="max")(group), biggest)
    # A plain group (one block's inner channels) maps one module's scores one to one.
    inner = graph.get_pruning_group(model.layer2[0].conv1, tp.prune_conv_out_channels, list(range(128)))
    torch.testing.assert_close(ScoreImportance(model, scores)(inner), scores["layer2.0.bn1"])
    # A group without scored modules is left alone (None: Torch-Pruning skips it).
    head = graph.get_pruning_group(model.fc, tp.prune_linear_out_channels, list(range(10)))
    assert ScoreImportance(model, scores)(head) is None


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_prune_globally_and_run(name):
    model = models.make(name)
    scores = rg.score(model, models.batches(name), method="taylorfo_sq")
    example = torch.randn(1, 3, 32, 32)
    assert output_layers(model, example) == [model.fc if name == "resnet18" else model.classifier[1]]
    before = params(model)
    prune_physically(model, scores, example, ratio=0.3)
    assert params(model) < 0.9 * before
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the pruned model can be scored again
    again = rg.score(model, [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))])
    assert sum(s.numel() for s in again.values()) < sum(s.numel() for s in scores.values())


def test_metapruner_with_the_importance_directly():
    """The adaptor is an ordinary Importance: usable with tp.pruner.MetaPruner as users write it."""
    model = models.make("resnet18")
    scores = rg.score(model, models.batches("resnet18"))
    importance = ScoreImportance(model, scores, normalize="l2")
    assert isinstance(importance, tp.importance.Importance)
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, 3, 32, 32), importance, global_pruning=True, pruning_ratio=0.2, ignored_layers=[model.fc]
    )
    pruner.step()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_adaptor_errors_name_the_culprit():
    model = models.make("conv_bn_relu")
    with pytest.raises(ValueError, match="scores name module 'nope'"):
        ScoreImportance(model, {"nope": torch.ones(3)})
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        ScoreImportance(model, {"1": torch.ones(8)}, reduction="median")
    with pytest.raises(ValueError, match="several methods"):
        ScoreImportance(model, {"taylorfo": {"1": torch.ones(8)}})
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        prune_physically(model, {"1": torch.ones(8)}, torch.randn(1, 3, 16, 16), ratio=1.0)
    with pytest.raises(ValueError, match="scores of module '1' have 4 channels but it has 8"):
        ScoreImportance(model, {"1": torch.ones(4)})


def test_scores_of_a_model_pruned_since_are_refused():
    model = models.make("conv_bn_relu")
    scores = rg.score(model, models.batches("conv_bn_relu"))
    prune_physically(model, scores, torch.randn(1, 3, 16, 16), ratio=0.3)
    with pytest.raises(ValueError, match="pruned since\\? score it again"):
        prune_physically(model, scores, torch.randn(1, 3, 16, 16), ratio=0.3)


def test_unscored_root_channels_are_never_chosen_first():
    """A group whose scored members cover only some root channels: the others get +inf, and a
    module seen twice in a group counts once. (A duck-typed group: the shape of Torch-Pruning's.)"""
    root, bn, other = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(6)
    model = nn.ModuleDict({"root": root, "bn": bn, "other": other})

    def item(module, idxs, root_idxs, handler="out"):
        return SimpleNamespace(
            dep=SimpleNamespace(target=SimpleNamespace(module=module), handler=handler), idxs=idxs, root_idxs=root_idxs
        )

    class Group(list):
        _DG = SimpleNamespace(
            is_out_channel_pruning_fn=lambda fn: fn == "out", is_in_channel_pruning_fn=lambda fn: fn == "in"
        )

    group = Group(
        [
            item(root, list(range(6)), list(range(6))),
            item(bn, [0, 1, 2], [3, 4, 5]),  # bn's channels are the root's channels 3..5
            item(bn, [0, 1, 2], [3, 4, 5]),
            item(other, list(range(6)), list(range(6)), handler="in"),  # a consumer's input: not its units
        ]
    )
    scores = {"bn": torch.tensor([1.0, 2.0, 3.0]), "other": torch.full((6,), 9.0)}
    inf = float("inf")
    torch.testing.assert_close(ScoreImportance(model, scores)(group), torch.tensor([inf, inf, inf, 1.0, 2.0, 3.0]))
    # A module whose channel count is not an attribute is checked against the group instead.
    odd = nn.ModuleDict({"root": root, "act": nn.Hardswish()})
    with pytest.raises(ValueError, match="have 2 channels but Torch-Pruning sees more"):
        ScoreImportance(odd, {"act": torch.ones(2)})(
            Group([item(root, list(range(6)), list(range(6))), item(odd["act"], [0, 1, 2], [0, 1, 2])])
        )


def test_input_side_scores_prune_the_units_they_name():
    """Scores on a consumer's input (``"2:input"``, as transformers' neurons are scored) remove the same
    hidden units as the same scores on the producer's output; Mixture-of-Experts keys are refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    s = torch.rand(8, generator=torch.Generator().manual_seed(2))
    x = torch.randn(4, 5, dtype=torch.float64)
    by_output = prune_physically(copy.deepcopy(model), {"0": s}, x[:1], ratio=0.5, ignored_layers=[model[2]])
    clone = copy.deepcopy(model)
    by_input = prune_physically(clone, {"2:input": s}, x[:1], ratio=0.5, ignored_layers=[clone[2]])
    assert by_input[0].out_features == by_output[0].out_features == 4
    assert torch.equal(by_input[0].weight, by_output[0].weight)
    keep = {"2:input": s >= s.sort().values[4]}
    with torch.no_grad(), apply_masks(model, keep):
        torch.testing.assert_close(by_input(x), model(x), rtol=0, atol=1e-12)
    with pytest.raises(rg.UnsupportedModuleError, match="'0:experts'"):
        ScoreImportance(model, {"0:experts": s})
