"""Transformers: default units (MLP neurons, attention heads), input-side and grouped units, causal-LM
label gradients, against the float64-reduction oracle; checkpointing, torch.compile and meta models."""

import models
import pytest
import torch
from oracle import oracle_scores
from reference import rel_err

import rgprune_fast as rg

pytestmark = pytest.mark.skipif(models.import_transformers() is None, reason="transformers is not installed")
METHODS = list(rg.METHODS)


def as_dicts(batches):
    """The (inputs, labels) batches as the dict batches users pass (labels under 'labels')."""
    return [{**inputs, "labels": labels} for inputs, labels in batches]


def enable_checkpointing(model, reentrant):
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def assert_matches(ours, ref, tol=1e-5):
    for m in ref:
        assert list(ours[m]) == list(ref[m])
        for k in ref[m]:
            assert ours[m][k].shape == ref[m][k].shape, (m, k)
            err = rel_err(ours[m][k], ref[m][k])
            assert err <= tol, f"{m} {k}: {err:.3g}"


@pytest.mark.parametrize("kind", models.HF_MODELS)
def test_default_units(kind):
    model, expected = models.hf_model(kind)
    scores = rg.score(model, as_dicts(models.hf_batches(kind)))
    assert [(k, v.numel()) for k, v in scores.items()] == expected


@pytest.mark.parametrize("gradient", ["label", "random"])
@pytest.mark.parametrize("kind", models.HF_MODELS)
def test_matches_oracle(kind, gradient):
    model, expected = models.hf_model(kind)
    batches = models.hf_batches(kind)
    ours = rg.score(model, as_dicts(batches), method=METHODS, gradient=gradient, seed=4)
    # the expected units, written out in models.py: 4 heads of 8 channels (Llama: 2 key/value groups of 16),
    # or neurons of one channel
    units = [rg.Unit(key.split(":")[0], "input", 32 // n if n <= 4 else 1) for key, n in expected]
    shift = kind in ("llama", "gpt2")
    ref = oracle_scores(model, batches, units, METHODS, gradient, True, seed=4, dtype=None, shift=shift)
    assert_matches(ours, ref)


def test_explicit_units_output_and_groups():
    model, _ = models.hf_model("llama")
    batches = models.hf_batches("llama")
    units = [
        rg.Unit("model.layers.0.mlp.up_proj"),  # output channels
        rg.Unit("model.layers.0.mlp.down_proj", "input"),
        rg.Unit("model.layers.1.self_attn.q_proj", "output", channels_per_unit=8),  # query heads at q_proj output
        rg.Unit("model.layers.1.self_attn.o_proj", "input", channels_per_unit=16),  # pairs of heads
    ]
    ours = rg.score(model, as_dicts(batches), modules=units, method=METHODS, gradient="label")
    assert list(ours["taylorfo"]) == [u.key for u in units]
    assert [v.numel() for v in ours["taylorfo"].values()] == [48, 48, 4, 2]
    ref = oracle_scores(model, batches, units, METHODS, "label", True, dtype=None, shift=True)
    assert_matches(ours, ref)


def test_causal_lm_labels_are_shifted():
    """Label gradient of a causal LM: position t against token t + 1 (not t), pads ignored."""
    model, _ = models.hf_model("llama")
    batches = models.hf_batches("llama")
    ours = rg.score(model, as_dicts(batches), method="taylorfo_sq", gradient="label", normalize=False)
    units = [rg.Unit(k.split(":")[0], "input", 1 if v.numel() > 4 else 8) for k, v in ours.items()]
    shifted = oracle_scores(model, batches, units, ["taylorfo_sq"], "label", False, dtype=None, shift=True)
    aligned = oracle_scores(model, batches, units, ["taylorfo_sq"], "label", False, dtype=None, shift=False)
    key = "model.layers.0.mlp.down_proj:input"
    assert rel_err(ours[key], shifted["taylorfo_sq"][key]) < 1e-5
    assert rel_err(ours[key], aligned["taylorfo_sq"][key]) > 1e-2


def test_gradient_checkpointing_gives_the_same_scores():
    model, _ = models.hf_model("llama")
    data = as_dicts(models.hf_batches("llama"))
    plain = rg.score(model, data, method=METHODS, gradient="label")
    enable_checkpointing(model, reentrant=False)
    checkpointed = rg.score(model, data, method=METHODS, gradient="label")
    assert not model.training and not any(m.training for m in model.modules())
    assert_matches(checkpointed, plain, 1e-6)


def test_compiled_model_is_scored_through_its_module():
    model, _ = models.hf_model("gpt2")
    data = as_dicts(models.hf_batches("gpt2"))
    compiled = torch.compile(model, backend="eager")
    assert_matches(rg.score(compiled, data, method=METHODS), rg.score(model, data, method=METHODS), 0.0)


def test_meta_model_is_refused():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="meta device"):
        rg.score(model, torch.randn(2, 4))


def test_bad_units():
    model, _ = models.hf_model("llama")
    data = as_dicts(models.hf_batches("llama"))
    with pytest.raises(ValueError, match="units of 5 channels do not divide"):
        rg.score(model, data, modules=rg.Unit("model.layers.0.mlp.down_proj", "input", 5))
    with pytest.raises(ValueError, match="side must be"):
        rg.Unit("x", "middle")
    with pytest.raises(rg.UnsupportedModuleError, match="not a floating-point tensor"):
        rg.score(model, data, modules=rg.Unit("model.embed_tokens", "input"))
    with pytest.raises(ValueError, match=r"targets of shape \(3, 6\) do not fit"):
        rg.score(model, [{**data[0], "labels": data[0]["labels"][:, :6]}], gradient="label")


def test_naive_matches_on_transformer_units():
    from rgprune_fast.scorers import naive

    model, _ = models.hf_model("bert")
    data = as_dicts(models.hf_batches("bert"))
    assert_matches(naive.score(model, data, method=METHODS), rg.score(model, data, method=METHODS))


def test_reentrant_checkpointing_is_refused_not_silently_zero():
    model, _ = models.hf_model("llama")
    enable_checkpointing(model, reentrant=True)
    with pytest.raises(rg.UnsupportedModuleError, match="use_reentrant=False"):
        rg.score(model, as_dicts(models.hf_batches("llama")))
