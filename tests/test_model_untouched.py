"""score() leaves the model exactly as it found it, also when it raises midway."""

import copy

import models
import pytest
import torch
from untouched import assert_same, snapshot

import rgprune_fast as rg
from rgprune_fast.scorers import naive


def messy_model():
    """Training mode with one submodule in eval, some frozen parameters, some existing .grad."""
    model = models.make("resnet18").train()
    model.layer2.eval()
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
    model.bn1.bias.grad = torch.ones_like(model.bn1.bias)
    return model


@pytest.mark.parametrize("scorer", [rg.score, naive.score], ids=["score", "naive"])
@pytest.mark.parametrize("method", [["taylorfo_sq"], list(rg.METHODS)])
def test_model_untouched(scorer, method):
    model = messy_model()
    before = snapshot(model)
    scorer(model, models.batches("resnet18"), method=method, gradient="label")
    assert_same(before, snapshot(model))


def test_scores_in_eval_mode():
    """Training-mode BN would use batch statistics; the scores must be those of eval mode."""
    model, data = messy_model(), models.batches("resnet18")
    evaluated = copy.deepcopy(model).eval()
    a = rg.score(model, data)
    b = rg.score(evaluated, data)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("method", [["taylorfo_sq"], list(rg.METHODS)])
def test_model_untouched_when_raising_midway(method):
    model = messy_model()
    before = snapshot(model)
    calls = []

    def failing_gradient(output, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in batch 1")
        return torch.randn_like(output)

    with pytest.raises(RuntimeError, match="boom in batch 1"):
        rg.score(model, models.batches("resnet18", sizes=(2, 2, 2)), gradient=failing_gradient, method=method)
    assert_same(before, snapshot(model))
    # and the model still works normally afterwards (no tap left in its graph)
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.grad_fn is not None and "Tap" not in type(out.grad_fn).__name__


def test_inputs_untouched():
    model = models.make("vgg_no_bn")
    data = models.batches("vgg_no_bn")
    copies = [(x.clone(), t.clone()) for x, t in data]
    rg.score(model, data, gradient="label")
    for (x, t), (x0, t0) in zip(data, copies):
        assert torch.equal(x, x0) and torch.equal(t, t0)
        assert not x.requires_grad
