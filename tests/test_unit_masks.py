"""Masks for every kind of unit: attention heads and MLP neurons (``:input`` keys, grouped channels),
Mixture-of-Experts neurons (``:experts``), with a budget per kind and global or per-layer-uniform
allocation; applied by hooks, baked into weights, checked against the model, and checked against an
independent removal (the head's value rows zeroed, the expert's down projection zeroed) in float64."""

import models
import pytest
import torch
import zoo

import rgprune_fast as rg
from rgprune_fast.pruning import (
    apply_masks,
    bake_masks,
    check_scores_fit,
    kinds_of,
    masked,
    masks,
    output_channels,
    prune_count,
)

pytestmark = pytest.mark.skipif(models.import_transformers() is None, reason="transformers is not installed")

HEADS = "bert.encoder.layer.{}.attention.output.dense:input"
NEURONS = "bert.encoder.layer.{}.output.dense:input"


def _bert_scores():
    model, _ = models.hf_model("bert")
    g = torch.Generator().manual_seed(3)
    scores = {}
    for i in range(2):
        scores[HEADS.format(i)] = torch.rand(4, generator=g)
        scores[NEURONS.format(i)] = torch.rand(48, generator=g) * 1e-3  # far smaller than the heads' scores
    return model.double(), scores


def _pruned(keep, kind_keys):
    return sum(int((~keep[k]).sum()) for k in kind_keys)


def test_kinds_are_read_from_the_keys():
    _, scores = _bert_scores()
    assert set(kinds_of(scores).values()) == {"heads", "neurons"}
    assert kinds_of({"features.0": torch.ones(2), "m.experts:experts": torch.ones(2)}) == {
        "features.0": "channels",
        "m.experts:experts": "experts",
    }
    assert kinds_of(scores, lambda key: "all") == dict.fromkeys(scores, "all")


def test_each_kind_gets_its_own_budget():
    _, scores = _bert_scores()
    heads, neurons = [HEADS.format(i) for i in range(2)], [NEURONS.format(i) for i in range(2)]
    # one ratio: each kind loses that fraction, although neuron scores are all below head scores
    keep = masks(scores, ratio=0.25)
    assert _pruned(keep, heads) == prune_count(8, 0.25) and _pruned(keep, neurons) == prune_count(96, 0.25)
    keep = masks(scores, ratio={"heads": 0.25, "neurons": 0.3})
    assert _pruned(keep, heads) == 2 and _pruned(keep, neurons) == prune_count(96, 0.3)
    keep = masks(scores, ratio={"heads": 0.5})  # kinds not named keep every unit
    assert _pruned(keep, heads) == 4 and _pruned(keep, neurons) == 0
    keep = masks(scores, n={"heads": 3, "neurons": 10})
    assert _pruned(keep, heads) == 3 and _pruned(keep, neurons) == 10
    # within a kind the ranking is global: the 3 lowest head scores over both layers
    flat = torch.cat([scores[k] for k in heads])
    lowest = set(torch.sort(flat).indices[:3].tolist())
    dropped = {i * 4 + c for i, k in enumerate(heads) for c in (~keep[k]).nonzero().view(-1).tolist()}
    assert dropped == lowest


def test_uniform_allocation_prunes_every_module_alike():
    _, scores = _bert_scores()
    scores[HEADS.format(1)] = scores[HEADS.format(1)] + 10.0  # globally, layer 0 would lose every pruned head
    keep = masks(scores, ratio={"heads": 0.5, "neurons": 0.3}, allocation="uniform")
    for i in range(2):
        assert int((~keep[HEADS.format(i)]).sum()) == 2
        assert int((~keep[NEURONS.format(i)]).sum()) == prune_count(48, 0.3)
        s = scores[HEADS.format(i)]
        assert set((~keep[HEADS.format(i)]).nonzero().view(-1).tolist()) == set(torch.sort(s).indices[:2].tolist())
    glob = masks(scores, ratio={"heads": 0.5}, allocation="global", allow_empty=True)
    assert int((~glob[HEADS.format(0)]).sum()) == 4 and int((~glob[HEADS.format(1)]).sum()) == 0
    # each module keeps one unit unless allow_empty
    keep = masks(scores, ratio={"heads": 1.0}, allocation="uniform")
    assert all(int(keep[HEADS.format(i)].sum()) == 1 for i in range(2))
    keep = masks(scores, ratio={"heads": 1.0}, allocation="uniform", allow_empty=True)
    assert all(int(keep[HEADS.format(i)].sum()) == 0 for i in range(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 3}, r"several unit kinds \(heads, neurons\).*n=\{'heads': \.\.\., 'neurons': \.\.\.\}"),
        ({"ratio": {"head": 0.2}}, "names unit kind 'head', which the scores do not have; they have heads, neurons"),
        ({"ratio": 0.3, "allocation": "layer"}, "unknown allocation 'layer'; use one of global, uniform"),
        ({"n": {"heads": 2}, "allocation": "uniform"}, "give ratio=, not n="),
        ({"ratio": {"heads": 1.5}}, r"ratio must be a number in \[0, 1\], got 1.5"),
        ({"n": {"heads": -1}}, "n must be a non-negative int, got -1"),
        ({"ratio": {"heads": 0.9}}, "cannot prune 8 of 8 heads while keeping one per module"),
        ({"ratio": 0.3, "kinds": {}}, "kinds has no entry for scores key"),
    ],
)
def test_budget_errors_name_the_problem(kwargs, message):
    _, scores = _bert_scores()
    with pytest.raises(ValueError, match=message):
        masks(scores, **kwargs)


def _bert_inputs():
    (inputs, _), *_ = models.hf_batches("bert")
    return inputs


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_head_masks_remove_the_head():
    """Masking head h of layer 0 gives the output of the model whose head h has zero values (an
    independent way to silence a head: its context vectors are then exactly 0)."""
    model, scores = _bert_scores()
    inputs = _bert_inputs()
    keep = {HEADS.format(0): torch.tensor([True, False, True, True])}
    reference = models.hf_model("bert")[0].double()
    value = reference.bert.encoder.layer[0].attention.self.value
    with torch.no_grad():
        value.weight[8:16] = 0
        value.bias[8:16] = 0
    expected = _logits(reference, inputs)
    before = _logits(model, inputs)
    with masked(model, keep):
        got = _logits(model, inputs)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(got, before)
    assert torch.equal(_logits(model, inputs), before)  # hooks gone


@pytest.mark.parametrize("kind", models.HF_MODELS)
def test_apply_and_bake_agree_on_default_units(kind):
    model, _ = models.hf_model(kind)
    model = model.double()
    batch = models.hf_batches(kind)[0][0]
    scores = rg.score(model, [batch], gradient="random")
    keep = masks(scores, ratio={"heads": 0.25, "neurons": 0.3})
    check_scores_fit(model, scores, batch)
    assert output_channels(model, list(scores), batch) == {
        key: model.get_submodule(key.split(":")[0]).weight.shape[0 if kind == "gpt2" else 1] for key in scores
    }
    before = _logits(model, batch)
    with masked(model, keep):
        hooked = _logits(model, batch)
    bake_masks(model, keep)
    baked = _logits(model, batch)
    assert torch.allclose(hooked, baked, rtol=0, atol=1e-12)
    assert not torch.allclose(before, baked)


def test_masks_of_a_functional_projection_apply():
    """torchvision's ViT applies ``out_proj`` through its weights: masking its heads still works."""
    tv = zoo.import_torchvision()
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3)
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the classifier
    model = model.double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    key = "encoder.layers.encoder_layer_0.self_attention.out_proj:input"
    keep = {key: torch.tensor([False, True])}
    with torch.no_grad():
        before = model(x)
        with masked(model, keep):
            hooked = model(x)
        assert "forward" not in model.encoder.layers[0].self_attention.__dict__
        bake_masks(model, keep)
        baked = model(x)
    assert torch.allclose(hooked, baked, rtol=0, atol=1e-12) and not torch.allclose(before, baked)


def _mixtral():
    tf = models.import_transformers()
    torch.manual_seed(0)
    config = tf.MixtralConfig(vocab_size=61, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, num_local_experts=3,
                              num_experts_per_tok=2, max_position_embeddings=32)  # fmt: skip
    config._experts_implementation = "eager"  # the grouped kernels have no float64 on CPU
    model = tf.MixtralForCausalLM(config).double().eval()
    return model, {"input_ids": torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(1))}


def test_expert_masks_apply_and_bake():
    model, inputs = _mixtral()
    key = next(k for k in rg.score(model, [inputs], gradient="random") if k.endswith(":experts"))
    experts = model.get_submodule(key.split(":")[0])
    keep = torch.ones(3 * 8, dtype=torch.bool)
    keep[8:16] = False  # every neuron of expert 1
    keep[3] = False
    expected_model, _ = _mixtral()
    with torch.no_grad():
        down = expected_model.get_submodule(key.split(":")[0]).down_proj
        down[1] = 0
        down[0, :, 3] = 0
    expected = _logits(expected_model, inputs)
    with masked(model, {key: keep}):
        hooked = _logits(model, inputs)
    assert "forward" not in experts.__dict__
    assert torch.allclose(hooked, expected, rtol=0, atol=1e-12)
    bake_masks(model, {key: keep})
    assert torch.allclose(_logits(model, inputs), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="has 5 entries but .* has 24 neurons"):
        apply_masks(model, {key: torch.ones(5, dtype=torch.bool)})


def test_unit_masks_that_do_not_fit_are_refused_before_anything_changes():
    model, scores = _bert_scores()
    inputs = _bert_inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {HEADS.format(0): torch.ones(4, dtype=torch.bool), HEADS.format(1): torch.ones(5, dtype=torch.bool)}
    for action in (apply_masks, bake_masks):
        with pytest.raises(ValueError, match=r"has 5 entries, which do not split the module's 32 channels"):
            action(model, bad)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="the masks name module 'bert.nope', which is not in the model"):
        apply_masks(model, {"bert.nope:input": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"layer.1.attention.output.dense:input'.*5 entries.*different model"):
        check_scores_fit(model, {**scores, HEADS.format(1): torch.ones(5)}, inputs)
    check_scores_fit(model, scores, inputs)


def test_head_masks_must_cover_whole_heads():
    """Masks or scores made for another width (before the heads were pruned: 8 entries where 4 heads of
    8 channels remain) would cut half heads: refused, naming the key. An empty dict masks nothing."""
    model, scores = _bert_scores()
    half_heads = {HEADS.format(0): torch.ones(8, dtype=torch.bool)}
    for action in (apply_masks, bake_masks):
        with pytest.raises(ValueError, match=r"4 channels each, not whole heads of 8 channels"):
            action(model, half_heads)
    with pytest.raises(ValueError, match="not whole heads"):
        check_scores_fit(model, {**scores, HEADS.format(0): torch.ones(8)}, _bert_inputs())
    with apply_masks(model, {}):
        pass
    bake_masks(model, {})
