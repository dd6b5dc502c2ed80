"""Monte-Carlo gradient importance: the estimator on a toy problem with a known answer, the masked and
K-batched forwards against explicit ones, determinism, CNN and transformer models, errors."""

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast import batches as batching
from rgprune_fast.mc_gradient import centred_ranks, replicate, sample_masks
from rgprune_fast.probe import run_probe
from rgprune_fast.selection import plan_taps, resolve_units


def toy():
    """Hidden units 0-3 pass on the four input features that decide the class; units 4-7 see the same
    features but their outgoing weights are zero: they carry no signal and must get low keep
    probabilities."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([torch.eye(4), torch.eye(4)]) * 3)
        model[0].bias.fill_(0.5)
        model[2].weight.zero_()
        model[2].weight[:, :4] = torch.eye(4)
        model[2].bias.zero_()
    x = torch.rand(256, 4)
    data = [(x[i : i + 32], x[i : i + 32].argmax(1)) for i in range(0, 256, 32)]
    return model.eval(), data


@pytest.mark.parametrize("gradient", ["label", "random"])
def test_units_without_signal_get_low_keep_probability(gradient):
    model, data = toy()
    theta = rg.score(model, data, method="mc_gradient", gradient=gradient, modules="0", steps=150, keep=0.5)["0"]
    assert theta.shape == (8,)
    assert theta[4:].max() < 0.25 < 0.75 < theta[:4].min(), theta


def conv_plans(model, batch, modules=None):
    probe = run_probe(model, batching.split_batch(batch, 0))
    return plan_taps(model, probe, resolve_units(model, modules), need_group=False)


def test_masked_forward_equals_explicitly_masked_model():
    model, (x, _) = models.make("conv_bn_relu"), models.batches("conv_bn_relu")[0]
    plans = conv_plans(model, x)
    keep = {"1": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1.0]), "4": (torch.arange(12) % 3 != 0).float()}
    with torch.no_grad(), sample_masks(plans, {k: v.expand(x.shape[0], -1) for k, v in keep.items()}):
        masked = model(x)
    explicit = models.make("conv_bn_relu")
    with torch.no_grad():
        for name, m in keep.items():  # a BN channel whose weight and bias are 0 outputs 0
            bn = explicit.get_submodule(name)
            bn.weight.mul_(m)
            bn.bias.mul_(m)
        reference = explicit(x)
    torch.testing.assert_close(masked, reference, rtol=1e-6, atol=1e-6)


def test_k_batched_forward_equals_k_separate_forwards():
    model, (x, _) = models.make("resnet18"), models.batches("resnet18")[0]
    plans = conv_plans(model, x)
    k, n = 3, x.shape[0]
    g = torch.Generator().manual_seed(0)
    drawn = {p.key: torch.bernoulli(torch.full((k, p.units), 0.7), generator=g) for p in plans}
    with torch.no_grad():
        with sample_masks(plans, {key: m.repeat_interleave(n, 0) for key, m in drawn.items()}):
            batched = model(*replicate(batching.split_batch(x, 0), k, n).args)
        for i in range(k):
            with sample_masks(plans, {key: m[i : i + 1].expand(n, -1) for key, m in drawn.items()}):
                torch.testing.assert_close(batched[i * n : (i + 1) * n], model(x), rtol=1e-4, atol=1e-5)


def test_deterministic_and_seeded():
    model, data = toy()
    a = rg.score(model, data, method="mc_gradient", modules="0", steps=20, seed=1)
    b = rg.score(model, data, method="mc_gradient", modules="0", steps=20, seed=1)
    c = rg.score(model, data, method="mc_gradient", modules="0", steps=20, seed=2)
    assert torch.equal(a["0"], b["0"]) and not torch.equal(a["0"], c["0"])


CNN_MODELS = ("conv_bn_relu", "resnet18", "mobilenet_v2", "densenet121", "vgg_no_bn", "mlp", "token_mlp")


@pytest.mark.parametrize("name", CNN_MODELS)
def test_every_model_of_the_oracle_tests(name):
    """The same units (keys, sizes) as the Taylor criteria; probabilities in [0, 1]; both gradients."""
    model, data = models.make(name), models.batches(name)
    expected = {k: v.shape for k, v in rg.score(model, data).items()}
    for gradient in ("label", "random"):
        theta = rg.score(model, data, method=["mc_gradient"], gradient=gradient, steps=2, samples=3)["mc_gradient"]
        assert {k: v.shape for k, v in theta.items()} == expected
        assert all(((v >= 0) & (v <= 1)).all() for v in theta.values())


@pytest.mark.parametrize("kind", models.HF_MODELS)
def test_every_transformer_of_the_transformer_tests(kind):
    """Llama (grouped-query attention, shifted LM labels), GPT-2, BERT and ViT (class labels): head and
    neuron units, as for the Taylor criteria."""
    if models.import_transformers() is None:
        pytest.skip("transformers is not installed")
    model, units = models.hf_model(kind)
    data = [{**inputs, "labels": labels} for inputs, labels in models.hf_batches(kind)]
    for gradient in ("label", "random"):
        theta = rg.score(model, data, method="mc_gradient", gradient=gradient, steps=2, samples=3)
        assert [(k, v.numel()) for k, v in theta.items()] == units
        assert all(((v >= 0) & (v <= 1)).all() for v in theta.values())


def test_on_step_snapshots_equal_shorter_runs():
    model, data = toy()
    seen = {}
    final = rg.score(model, data, method="mc_gradient", modules="0", steps=9, on_step=seen.__setitem__)
    assert sorted(seen) == list(range(1, 10)) and torch.equal(seen[9]["0"], final["0"])
    for steps in (1, 4):
        assert torch.equal(seen[steps]["0"], rg.score(model, data, method="mc_gradient", modules="0", steps=steps)["0"])
    assert not torch.equal(seen[4]["0"], seen[9]["0"])


def test_one_pass_iterators_are_cycled():
    model, data = toy()
    a = rg.score(model, data[:2], method="mc_gradient", modules="0", steps=7)
    b = rg.score(model, iter(data[:2]), method="mc_gradient", modules="0", steps=7)
    assert torch.equal(a["0"], b["0"])


def test_centred_ranks():
    r = centred_ranks(torch.tensor([0.3, 0.1, 0.3, 0.9]))
    torch.testing.assert_close(r, torch.tensor([1.5, 0.0, 1.5, 3.0]) / 3 - 0.5)
    assert centred_ranks(torch.tensor([2.0])).item() == 0.0


def test_errors():
    model, data = toy()
    with pytest.raises(ValueError, match="cannot be combined"):
        rg.score(model, data, method=["mc_gradient", "taylorfo"])
    with pytest.raises(ValueError, match="gradient='label'"):
        rg.score(model, data, method="mc_gradient", gradient=lambda o, b: o)
    with pytest.raises(ValueError, match="keep must lie in"):
        rg.score(model, data, method="mc_gradient", keep=1.5)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        rg.score(model, data, method="mc_gradient", samples=0)
    with pytest.raises(TypeError, match="options of method 'mc_gradient' only"):
        rg.score(model, data, method="taylorfo", steps=3)
    with pytest.raises(TypeError, match="on_step must be callable"):
        rg.score(model, data, method="mc_gradient", on_step=3)
    with pytest.raises(ValueError, match="needs targets"):
        rg.score(model, [x for x, _ in data], method="mc_gradient", gradient="label")
    with pytest.raises(rg.EmptyDataError):
        rg.score(model, [], method="mc_gradient")
