"""Default module selection, modules= resolution, and the tap each module gets."""

import models
import pytest
from oracle import oracle_scores
from reference import rel_err
from torch import nn

import rgprune_fast as rg
from rgprune_fast.engine.batching import as_batch
from rgprune_fast.engine.planning import plan_taps, resolve_units
from rgprune_fast.engine.probe import run_probe


def plans_of(name, modules=None):
    model, data = models.make(name), models.batches(name)
    probe = run_probe(model, as_batch(data[0], 0))
    return model, plan_taps(model, probe, resolve_units(model, modules), molchanov=False)


@pytest.mark.parametrize("name", models.ZOO)
def test_default_selection(name):
    model, plans = plans_of(name)
    assert [p.name for p in plans] == models.expected_units(name, model)


def test_tap_kinds():
    _, plans = plans_of("resnet18")
    assert {p.kind for p in plans} == {"batchnorm"}
    _, plans = plans_of("vgg_no_bn")
    assert [p.kind for p in plans] == ["relu", "relu", "relu", "relu"]
    _, plans = plans_of("mlp")
    assert [p.kind for p in plans] == ["relu", "generic"]  # '2' feeds a GELU
    _, plans = plans_of("token_mlp")
    assert [p.kind for p in plans] == ["relu", "generic"]  # 'up' feeds an in-place ReLU on a view
    _, plans = plans_of("densenet121")
    kinds = {p.name: p.kind for p in plans}
    assert kinds["features.denseblock1.denselayer1.conv2"] == "generic"  # concatenated, never modified
    assert kinds["features.norm5"] == "batchnorm"


def test_modules_by_name_type_and_object():
    model = models.make("resnet18")

    def names(spec):
        return [u.key for u in resolve_units(model, spec)]

    assert names("layer1.0.conv1") == ["layer1.0.conv1"]
    assert names([model.layer1[0].bn1, "bn1"]) == ["bn1", "layer1.0.bn1"]
    convs = names(nn.Conv2d)
    assert convs == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    data = models.batches("resnet18")
    scores = rg.score(model, data, modules=[nn.Conv2d, "fc"])
    assert list(scores) == convs + ["fc"]  # explicit choice may include the output layer
    assert scores["conv1"].shape == (64,) and scores["fc"].shape == (10,)


def test_explicit_modules_outside_the_default_match_oracle():
    """A conv feeding a BN (scored together with that BN) and a LayerNorm."""
    methods = ["taylorfo", "taylorfo_sq", "molchanov_group"]
    cases = [
        ("resnet18", ["conv1", "layer1.0.conv2", "layer1.0.bn2"], ["conv1", "layer1.0.conv2", "layer1.0.bn2"]),
        ("token_mlp", ["norm", "up"], ["up", "norm"]),  # results in named_modules() order
    ]
    for name, modules, keys in cases:
        model, data = models.make(name), models.batches(name)
        ours = rg.score(model, data, modules=modules, method=methods)
        assert list(ours["taylorfo"]) == keys
        ref = oracle_scores(model, data, keys, methods, "random", True, dtype=None)
        for m in methods:
            for k in ref[m]:
                assert rel_err(ours[m][k], ref[m][k]) <= 1e-5, (m, k)
