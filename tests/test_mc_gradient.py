"""Monte-Carlo gradient importance: the estimator on a toy problem with a known answer, units with no
influence ranked below every unit with influence (a trained ConvNet, a GPT-2), the masked and K-batched
forwards against explicit ones, determinism, CNN and transformer models, errors."""

import copy
import functools
import math

import models
import pytest
import torch
from torch import nn
from untouched import assert_same, snapshot

import rgprune_fast as rg
from rgprune_fast.engine.batching import as_batch, logits_of, replicate
from rgprune_fast.engine.planning import plan_taps, resolve_units
from rgprune_fast.engine.probe import run_probe
from rgprune_fast.errors import NonFiniteStatisticsError
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


DEAD_CHANNELS = {"1": [1, 4], "4": [0, 3, 7]}  # BN outputs whose outgoing weights are zero


def quadrant_task(n, generator):
    """8x8 images; the class is the quadrant with the largest mean of channel 0."""
    x = torch.randn(n, 3, 8, 8, generator=generator)
    quadrants = x[:, 0].unflatten(1, (2, 4)).unflatten(3, (2, 4)).mean((2, 4)).flatten(1)
    return x, quadrants.argmax(1)


def convnet_with_dead_channels():
    """A fresh copy of :func:`trained_convnet_with_dead_channels` (trained once per session)."""
    model, data = trained_convnet_with_dead_channels()
    return copy.deepcopy(model), data


@functools.cache
def trained_convnet_with_dead_channels():
    """A small ConvNet trained on the quadrant task with the outgoing weights of ``DEAD_CHANNELS`` held at
    zero: those channels have no influence on the output, every other one was trained to have some."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(40, 4),
    )  # fmt: skip
    alive_in_conv = torch.ones(1, 8, 1, 1)
    alive_in_conv[:, DEAD_CHANNELS["1"]] = 0
    alive_in_head = torch.ones(1, 10, 4)
    alive_in_head[:, DEAD_CHANNELS["4"]] = 0
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(300):
        with torch.no_grad():  # the dead channels' outgoing weights stay zero
            model[3].weight.mul_(alive_in_conv)
            model[8].weight.mul_(alive_in_head.flatten(1))
        x, y = quadrant_task(64, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model[3].weight.mul_(alive_in_conv)
        model[8].weight.mul_(alive_in_head.flatten(1))
    generator = torch.Generator().manual_seed(5)
    return model.eval(), [quadrant_task(16, generator) for _ in range(4)]


def mean_score(model, data, gradient):
    """What mc_gradient maximises, for the whole network: the mean probability of the labels, or the
    overlap of the softmax with the unmasked network's (``reference``)."""
    with torch.no_grad():
        p = [torch.softmax(model(x), -1) for x, _ in data]
    if gradient == "label":
        return lambda: torch.cat([torch.softmax(model(x), -1).gather(1, y[:, None]) for x, y in data]).mean()
    return lambda: torch.cat(
        [torch.minimum(torch.softmax(model(x), -1), q).sum(-1) for (x, _), q in zip(data, p)]
    ).mean()


def single_unit_influence(model, data, gradient):
    """``{bn name: [drop of the score when that channel alone is switched off]}`` (forward hooks)."""
    score = mean_score(model, data, gradient)
    with torch.no_grad():
        base = score()
        out = {}
        for key in DEAD_CHANNELS:
            bn, drops = model.get_submodule(key), []
            for c in range(bn.num_features):
                handle = bn.register_forward_hook(lambda m, a, o, c=c: o.index_fill(1, torch.tensor([c]), 0.0))
                drops.append(float(base - score()))
                handle.remove()
            out[key] = drops
    return out


def split_dead_live(theta, dead, influence=None, threshold=0.0):
    """Keep probabilities of the dead units, and of the live ones whose influence exceeds ``threshold``."""
    dead_theta, live_theta = [], []
    for key, values in theta.items():
        for i, value in enumerate(values.tolist()):
            if i in dead.get(key, ()):
                dead_theta.append(value)
            elif influence is None or influence[key][i] > threshold:
                live_theta.append(value)
    return dead_theta, live_theta


def test_convnet_channels_without_influence_rank_below_every_live_channel():
    """Label-free, every live channel of the trained ConvNet changes the output (checked: the premise)
    and must come out above every dead channel; the dead ones must also fall below the start (0.9)."""
    model, data = convnet_with_dead_channels()
    influence = single_unit_influence(model, data, "random")
    for key, channels in DEAD_CHANNELS.items():
        assert all(influence[key][c] == 0 for c in channels)
    assert min(v for key, drops in influence.items() for i, v in enumerate(drops) if i not in DEAD_CHANNELS[key]) > 0.01
    for seed in (0, 1):
        theta = rg.mc_gradient(model, data, seed=seed)
        dead, live = split_dead_live(theta, DEAD_CHANNELS)
        assert max(dead) < min(live) and max(dead) < 0.85, (seed, dead, live)


def test_convnet_with_labels_ranks_dead_channels_below_channels_that_matter_for_the_labels():
    """With labels, importance is what a channel does for the probability of the labels. The one tolerance:
    live channels whose switching off alone lowers that probability by less than 0.005 (here one channel
    of the 13, which changes the output but not the labels' probability) are not compared."""
    model, data = convnet_with_dead_channels()
    influence = single_unit_influence(model, data, "label")
    theta = rg.mc_gradient(model, data, gradient="label")
    dead, live = split_dead_live(theta, DEAD_CHANNELS, influence, threshold=0.005)
    assert len(live) >= 12 and max(dead) < min(live), (dead, live)


def gpt2_with_dead_units():
    """A tiny random GPT-2 (2 layers, 4 heads, 32 MLP neurons per layer) whose MLP neurons 3, 10, 20 of
    layer 0 and 5, 17 of layer 1 and attention head 2 of layer 1 have zero outgoing weights."""
    tf = models.import_transformers()
    torch.manual_seed(0)
    config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=32, vocab_size=61, n_positions=64,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    model = tf.GPT2LMHeadModel(config).eval()
    dead = {"transformer.h.0.mlp.c_proj:input": [3, 10, 20], "transformer.h.1.mlp.c_proj:input": [5, 17],
            "transformer.h.1.attn.c_proj:input": [2]}  # fmt: skip
    with torch.no_grad():
        for key, units in dead.items():
            projection = model.get_submodule(key.split(":")[0])  # Conv1D: weight [in, out]
            width = 8 if ".attn." in key else 1  # a head is 8 input channels
            for u in units:
                projection.weight[u * width : (u + 1) * width] = 0
    generator = torch.Generator().manual_seed(3)
    data = []
    for _ in range(4):
        ids = torch.randint(0, 61, (4, 12), generator=generator)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return model, data, dead


def test_transformer_units_without_influence_rank_below_every_live_unit():
    """MLP neurons and an attention head with zero outgoing weights, among 72 units of a random GPT-2:
    every dead unit below every live one (label-free, 300 steps of 32 masks)."""
    if models.import_transformers() is None:
        pytest.skip("transformers is not installed")
    model, data, dead = gpt2_with_dead_units()
    theta = rg.mc_gradient(model, data, steps=300, samples=32)
    assert sum(v.numel() for v in theta.values()) == 72
    dead_theta, live_theta = split_dead_live(theta, dead)
    assert len(dead_theta) == 6 and max(dead_theta) < min(live_theta), (dead_theta, sorted(live_theta)[:5])


@pytest.mark.parametrize("keep", [0.6, 0.8])
def test_keep_ratio_pressure_holds_the_mean_keep_probability(keep):
    model, data = convnet_with_dead_channels()
    theta = torch.cat(list(rg.mc_gradient(model, data, keep=keep).values()))
    assert abs(theta.mean().item() - keep) < 0.02, theta.mean()


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


def bad_label_cases(data):
    """(name, batches, error type, message) for every way the labels can be wrong."""
    x, y = data[0]
    return [
        ("out of range", [(x, y + 4)], ValueError, r"batch 0 .*targets must lie in \[0, 4\)"),
        ("negative", [(x, y - 5)], ValueError, r"targets must lie in \[0, 4\).*min -"),
        ("float", [(x, y.float())], TypeError, "targets must be integer class indices, got dtype torch.float32"),
        ("bool", [(x, y > 1)], TypeError, "targets must be integer class indices"),
        ("wrong length", [(x, y[:-1])], ValueError, r"targets of shape \(15,\) do not fit the model output"),
        ("second batch", [data[0], (x, y + 4)], ValueError, r"batch 1 \(0-based\).*targets must lie in"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_labels_raise_one_clear_error_and_leave_the_model_as_found(case):
    model, data = convnet_with_dead_channels()
    name, batches, error, message = bad_label_cases(data)[case]
    before = snapshot(model)
    with pytest.raises(error, match=message):
        rg.mc_gradient(model, batches, gradient="label", steps=3, samples=2)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("gradient", ["label", "random"])
@pytest.mark.parametrize("where", ["inputs", "weights", "inf inputs"])
def test_non_finite_outputs_raise_naming_the_batch(gradient, where):
    model, data = convnet_with_dead_channels()
    x, y = data[1]
    bad = x.clone()
    if where == "inputs":
        bad[2, 0, 3, 3] = math.nan
    elif where == "inf inputs":
        bad[:, 0] = math.inf
    else:
        with torch.no_grad():  # inf, not NaN: the snapshot must equal itself
            model[0].weight[0, 0, 0, 0] = math.inf
    before = snapshot(model)
    with pytest.raises(NonFiniteStatisticsError, match=r"NaN/Inf in .* batch (1|0) \(0-based\)"):
        rg.mc_gradient(model, [data[0], (bad, y)], gradient=gradient, steps=3, samples=2)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize(
    "option, value, error, message",
    [
        ("keep", "0.5", TypeError, "keep must be a real number, got str '0.5'"),
        ("keep", True, TypeError, "keep must be a real number, got bool True"),
        ("keep", math.nan, ValueError, "keep must lie in"),
        ("samples", 2.0, TypeError, "samples must be a positive int, got float 2.0"),
        ("steps", True, TypeError, "steps must be a positive int, got bool"),
        ("steps", 0, ValueError, "steps must be a positive int, got 0"),
        ("lr", "1", TypeError, "lr must be a real number"),
        ("lr", math.inf, ValueError, "lr must be a finite number >= 0"),
        ("pressure", math.nan, ValueError, "pressure must be a finite number >= 0"),
        ("cost", -0.1, ValueError, "cost must be a finite number >= 0"),
    ],
)
def test_options_are_checked(option, value, error, message):
    model, data = toy()
    with pytest.raises(error, match=message):
        rg.mc_gradient(model, data, **{option: value})
