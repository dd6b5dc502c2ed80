"""Monte-Carlo gradient importance: the estimator on a toy problem with a known answer, the masked and
K-batched forwards against explicit ones, determinism, CNN and transformer models, errors."""

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast.engine.batching import as_batch, logits_of, replicate
from rgprune_fast.engine.planning import plan_taps, resolve_units
from rgprune_fast.engine.probe import run_probe
from rgprune_fast.scorers.mc_gradient import centred_ranks, sample_masks


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
    theta = rg.mc_gradient(model, data, gradient=gradient, modules="0", steps=150, keep=0.5)["0"]
    assert theta.shape == (8,)
    assert theta[4:].max() < 0.25 < 0.75 < theta[:4].min(), theta


def conv_plans(model, batch, modules=None):
    probe = run_probe(model, as_batch(batch))
    return plan_taps(model, probe, resolve_units(model, modules), molchanov=False)


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
            batched = model(*replicate(as_batch(x), k, n).args)
        for i in range(k):
            with sample_masks(plans, {key: m[i : i + 1].expand(n, -1) for key, m in drawn.items()}):
                torch.testing.assert_close(batched[i * n : (i + 1) * n], model(x), rtol=1e-4, atol=1e-5)


def test_deterministic_and_seeded():
    model, data = toy()
    a = rg.mc_gradient(model, data, modules="0", steps=20, seed=1)
    b = rg.mc_gradient(model, data, modules="0", steps=20, seed=1)
    c = rg.mc_gradient(model, data, modules="0", steps=20, seed=2)
    assert torch.equal(a["0"], b["0"]) and not torch.equal(a["0"], c["0"])


def assert_every_unit_is_masked(model, batch):
    """One batched forward in which replica i switches off every channel of unit spec i alone: each
    replica's output must differ from the unmasked one, so every mask reaches its units."""
    batch = as_batch(batch)
    plans = plan_taps(model, run_probe(model, batch), None, molchanov=False)
    with torch.no_grad():
        reference = logits_of(batch.call(model))
        n, k = reference.shape[0], len(plans)
        masks = {p.key: torch.ones(k * n, p.channels) for p in plans}
        for i, p in enumerate(plans):
            masks[p.key][i * n : (i + 1) * n] = 0
        with sample_masks(plans, masks):
            masked = logits_of(replicate(batch, k, n).call(model))
    for i, p in enumerate(plans):
        assert not torch.equal(masked[i * n : (i + 1) * n], reference), p.key


@pytest.mark.parametrize("name", models.ZOO)
def test_every_model_of_the_oracle_tests(name):
    """The same units (keys, sizes) as the Taylor criteria with both gradients, deterministic, and
    masks that reach every unit."""
    model, data = models.make(name), models.batches(name)
    expected = {k: (v.numel(),) for k, v in rg.score(model, data).items()}
    assert list(expected) == models.expected_units(name, model)
    for gradient in ("label", "random"):
        theta = rg.mc_gradient(model, data, gradient=gradient, steps=2, samples=3)
        assert {k: tuple(v.shape) for k, v in theta.items()} == expected
        again = rg.mc_gradient(model, data, gradient=gradient, steps=2, samples=3)
        assert all(torch.equal(theta[k], again[k]) for k in theta)
    assert_every_unit_is_masked(model, data[0][0])


@pytest.mark.parametrize("kind", models.HF_MODELS)
def test_every_transformer_of_the_transformer_tests(kind):
    """Llama (grouped-query attention, shifted LM labels), GPT-2, BERT and ViT (class labels): head and
    neuron units, as for the Taylor criteria, and masks that reach every unit."""
    if models.import_transformers() is None:
        pytest.skip("transformers is not installed")
    model, units = models.hf_model(kind)
    data = [{**inputs, "labels": labels} for inputs, labels in models.hf_batches(kind)]
    for gradient in ("label", "random"):
        theta = rg.mc_gradient(model, data, gradient=gradient, steps=2, samples=3)
        assert [(k, v.numel()) for k, v in theta.items()] == units
    assert_every_unit_is_masked(model, models.hf_batches(kind)[0][0])


def test_on_step_snapshots_equal_shorter_runs():
    model, data = toy()
    seen = {}
    final = rg.mc_gradient(model, data, modules="0", steps=9, on_step=seen.__setitem__)
    assert sorted(seen) == list(range(1, 10)) and torch.equal(seen[9]["0"], final["0"])
    for steps in (1, 4):
        assert torch.equal(seen[steps]["0"], rg.mc_gradient(model, data, modules="0", steps=steps)["0"])
    assert not torch.equal(seen[4]["0"], seen[9]["0"])


def test_one_pass_iterators_are_cycled():
    model, data = toy()
    a = rg.mc_gradient(model, data[:2], modules="0", steps=7)
    b = rg.mc_gradient(model, iter(data[:2]), modules="0", steps=7)
    assert torch.equal(a["0"], b["0"])


def test_centred_ranks():
    r = centred_ranks(torch.tensor([0.3, 0.1, 0.3, 0.9]))
    torch.testing.assert_close(r, torch.tensor([1.5, 0.0, 1.5, 3.0]) / 3 - 0.5)
    assert centred_ranks(torch.tensor([2.0])).item() == 0.0


def test_errors():
    model, data = toy()
    with pytest.raises(ValueError, match="unknown method 'mc_gradient'.*rgprune_fast.mc_gradient"):
        rg.score(model, data, method="mc_gradient")
    with pytest.raises(ValueError, match="gradient='label'"):
        rg.mc_gradient(model, data, gradient=lambda o, b: o)
    with pytest.raises(ValueError, match="keep must lie in"):
        rg.mc_gradient(model, data, keep=1.5)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        rg.mc_gradient(model, data, samples=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        rg.score(model, data, method="taylorfo", steps=3)
    with pytest.raises(TypeError, match="on_step must be callable"):
        rg.mc_gradient(model, data, on_step=3)
    with pytest.raises(ValueError, match="needs targets"):
        rg.mc_gradient(model, [x for x, _ in data], gradient="label")
    with pytest.raises(rg.EmptyDataError):
        rg.mc_gradient(model, [])
