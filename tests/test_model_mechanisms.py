"""The mechanisms that make public models score exactly, each on a small model written to isolate it:
taps chosen from what a class computes, in-place activations, the default selection's skip contract,
folded batches, linear layers applied through their weights, Mixture-of-Experts neurons, encoder
outputs without logits, output layers, user hooks, and the label gradient's precision."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from oracle_by_example import Spec, oracle_by_example
from reference import rel_err
from torch import nn
from untouched import assert_same, snapshot

import rgprune_fast as rg


def fixed_gradient(output, batch):
    g = torch.Generator().manual_seed(99)
    return torch.randn(output.shape, generator=g, dtype=torch.float64).to(output.dtype)


def assert_exact(model, x, scores, specs=None, tol=1e-5, gradient=fixed_gradient, targets=None):
    specs = specs or [Spec(k, k.partition(":")[0], k.partition(":")[2] or "output", len(v)) for k, v in scores.items()]
    ref = oracle_by_example(model, x, targets, specs, ["taylorfo_sq"], gradient)["taylorfo_sq"]
    for key, value in scores.items():
        assert rel_err(value, ref[key]) <= tol, key


def score_all(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", rg.SkippedUnitsWarning)
        return rg.score(model, [x], method="taylorfo_sq", gradient=fixed_gradient, **kwargs)


class ActBatchNorm(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm subclass whose forward adds an activation."""

    def forward(self, x):
        return F.silu(super().forward(x))


def bn_subclass_net():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), ActBatchNorm(6), nn.Conv2d(6, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


def test_batchnorm_subclass_keeps_its_forward():
    model = bn_subclass_net()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    scores = score_all(model, x)
    assert list(scores) == ["1"]  # the BN (its conv feeds it); the last conv is the output
    assert_exact(model, x, scores)


class InplaceActs(nn.Module):
    """Convs followed by in-place activations of every kind."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.act = act
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.conv(x))).mean((2, 3))


@pytest.mark.parametrize(
    "act",
    [
        nn.SiLU(inplace=True),
        nn.Hardswish(inplace=True),
        nn.Hardsigmoid(inplace=True),
        nn.Mish(inplace=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.ReLU6(inplace=True),
    ],  # fmt: skip
    ids=lambda a: type(a).__name__,
)
def test_inplace_activations_are_scored_exactly(act):
    model = InplaceActs(act).eval()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    scores = score_all(model, x)
    assert_same(before, snapshot(model))
    assert list(scores) == ["conv"]
    assert_exact(model, x, scores)


def test_leaky_relu_is_fused_not_copied():
    from rgprune_fast.engine.batching import as_batch
    from rgprune_fast.engine.planning import plan_taps
    from rgprune_fast.engine.probe import run_probe

    model = InplaceActs(nn.LeakyReLU(0.2, inplace=True)).eval()
    plans = plan_taps(model, run_probe(model, as_batch(torch.randn(2, 3, 8, 8))), None, False)
    assert [(p.key, p.kind) for p in plans] == [("conv", "relu")]


def test_unscorable_inplace_activation_is_left_out_with_one_warning_and_raises_when_named():
    model = InplaceActs(nn.ELU(inplace=True)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(rg.UnsupportedModuleError, match="'conv'.*modified in place"):
        rg.score(model, x)  # the only unit: nothing left to score, the full reason

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = InplaceActs(nn.ELU(inplace=True)), nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.a(x) + self.b(x).mean((2, 3)))

    model = Two().eval()
    with pytest.warns(
        rg.SkippedUnitsWarning, match=r"1 module\(s\).*'a\.conv' \(its output is modified in place later\)"
    ) as w:
        scores = rg.score(model, x, gradient=fixed_gradient)
    assert len([m for m in w if issubclass(m.category, rg.SkippedUnitsWarning)]) == 1
    assert list(scores) == ["a.head", "b"]
    with pytest.raises(rg.UnsupportedModuleError, match="a.conv.*ELU"):
        rg.score(model, x, modules=["a.conv"])


def test_module_not_reaching_the_output_is_left_out():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            self.unused(x)
            return self.head(torch.relu(self.used(x)))

    with pytest.warns(rg.SkippedUnitsWarning, match="'unused' \\(its output never reaches"):
        scores = rg.score(Unused().eval(), torch.randn(2, 4))
    assert list(scores) == ["used"]


def test_classifier_conv_before_pooling_is_not_a_unit():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    assert list(score_all(model, torch.randn(2, 3, 8, 8))) == ["0"]


def test_user_backward_hook_does_not_change_the_selection():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(216, 3))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    plain = score_all(model, x)
    handle = model[0].register_full_backward_hook(lambda m, gi, go: None)
    try:
        hooked = score_all(model, x)
    finally:
        handle.remove()
    assert list(plain) == list(hooked) == ["1"]
    for key in plain:
        assert torch.equal(plain[key], hooked[key])


class Folded(nn.Module):
    """[N, T, C] -> [N * T, C] MLP (OPT-style), or the interleaved [T * N, C] fold when ``interleave``."""

    def __init__(self, interleave=False):
        super().__init__()
        self.interleave = interleave
        self.fc1, self.fc2, self.head = nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 3)

    def forward(self, x):
        n, t, c = x.shape
        rows = x.transpose(0, 1).reshape(-1, c) if self.interleave else x.reshape(-1, c)
        h = self.fc2(F.gelu(self.fc1(rows)))
        h = h.view(t, n, c).transpose(0, 1) if self.interleave else h.view(n, t, c)
        return self.head(h + x)


def test_batch_folded_by_a_reshape_is_scored_by_example():
    model = Folded().eval()
    x = torch.randn(3, 5, 4)
    units = ["fc1", rg.Unit("fc2", "input")]
    scores = rg.score(model, [x], method="taylorfo_sq", gradient=fixed_gradient, modules=units)
    assert_exact(model, x, scores)


def test_interleaved_fold_is_refused_with_the_reason():
    model = Folded(interleave=True).eval()
    with pytest.raises(rg.UnsupportedModuleError, match="fc1.*not as a reshape of \\[N, k, ...\\]"):
        rg.score(model, torch.randn(3, 5, 4), modules=["fc1"])
    with pytest.raises(rg.UnsupportedModuleError, match="first batch has one example"):
        rg.score(Folded().eval(), torch.randn(1, 5, 4), modules=["fc1"])


def test_multihead_attention_heads_through_its_out_proj():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            y, _ = self.self_attention(x, x, x, need_weights=False)
            return self.head(y + x)

    model = Block().eval()
    x = torch.randn(2, 5, 8)
    before = snapshot(model)
    scores = rg.score(model, [x], method="taylorfo_sq", gradient=fixed_gradient)
    assert_same(before, snapshot(model))
    assert {k: len(v) for k, v in scores.items()} == {"self_attention.out_proj:input": 2}
    spec = Spec("self_attention.out_proj:input", "self_attention.out_proj", "input", 2, via="self_attention")
    assert_exact(model, x, scores, [spec])


def test_encoder_output_gradient_is_zero_on_padding():
    tf = pytest.importorskip("transformers")
    import zoo

    case = next(c for c in zoo.HF if c.name == "bert-encoder")
    model = case.build()
    inputs = case.inputs(torch.Generator().manual_seed(0))
    assert inputs["attention_mask"][1, -1] == 0
    drawn = rg.score(model, [inputs], method="taylorfo_sq", seed=5)

    def same_draw_masked(output, batch):
        g = torch.randn(output.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
        g = g / (g.norm(dim=-1, keepdim=True) + 1e-12)
        return g * inputs["attention_mask"].unsqueeze(-1)

    masked = rg.score(model, [inputs], method="taylorfo_sq", gradient=same_draw_masked, normalize=False)
    for key in drawn:
        assert rel_err(drawn[key], masked[key]) < 1e-6
    with pytest.raises(ValueError, match="gradient='label' needs logits"):
        rg.score(model, [(inputs, torch.zeros(2, dtype=torch.long))], gradient="label")
    del tf


def test_label_gradient_keeps_its_digits_for_confident_predictions():
    from rgprune_fast.engine.gradients import OutputGradient

    logits = torch.tensor([[12.0, 0.5, -3.0, 1.25], [0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([0, 2])
    ours = OutputGradient("label", False, 0, torch.device("cpu"))(logits, targets, None).double()
    exact = torch.softmax(logits.double(), -1) - F.one_hot(targets, 4).double()
    assert rel_err(ours[0], exact[0]) < 1e-7  # p_t - 1 ~ -2e-5: float32 softmax - 1 keeps ~2 digits


def test_mixture_of_experts_neurons_with_both_scorers():
    pytest.importorskip("transformers")
    import zoo

    case = next(c for c in zoo.HF if c.name == "mixtral-moe")
    model = case.build()
    inputs = case.inputs(torch.Generator().manual_seed(0))
    experts = model.model.layers[0].mlp.experts
    key = "model.layers.0.mlp.experts:experts"
    scores = rg.score(model, [inputs], method="taylorfo_sq", gradient=fixed_gradient, modules=[rg.Unit(
        "model.layers.0.mlp.experts", "experts")])  # fmt: skip
    assert scores[key].shape == (experts.num_experts * experts.down_proj.shape[2],)
    assert_exact(model, inputs, scores, [Spec(key, "model.layers.0.mlp.experts", "experts", len(scores[key]))])
    keep = rg.mc_gradient(model, [inputs], steps=2, samples=2)
    assert keep[key].shape == scores[key].shape
    with pytest.raises(rg.UnsupportedModuleError, match="not a Mixture-of-Experts experts module"):
        rg.score(model, [inputs], modules=[rg.Unit("model.layers.0.mlp.gate", "experts")])


def test_mc_gradient_masks_a_folded_batch_by_example():
    model = Folded().eval()
    x = torch.randn(3, 5, 4)
    keep = rg.mc_gradient(model, [x], modules=["fc1", rg.Unit("fc2", "input")], steps=2, samples=2)
    assert keep["fc1"].shape == (8,) and keep["fc2:input"].shape == (8,)


def test_activation_whose_input_is_read_again_stays_in_place():
    class ReadAgain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.act, self.conv2, self.fc = (
                nn.Conv2d(3, 6, 3),
                nn.SiLU(inplace=True),
                nn.Conv2d(6, 4, 3),
                nn.Linear(4, 3),
            )

        def forward(self, x):
            y = self.conv1(x)
            self.act(y)  # in place: conv2 reads the activated values
            return self.fc(self.conv2(y).mean((2, 3)))

    model = ReadAgain().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(rg.SkippedUnitsWarning, match="'conv1' \\(its output is modified in place later\\)"):
        scores = rg.score(model, [x], method="taylorfo_sq", gradient=fixed_gradient)
    assert list(scores) == ["conv2"]
    assert_exact(model, x, scores)
    assert model.act.inplace is True


def test_forward_caches_are_removed_and_restored():
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head, self.seen = nn.Linear(4, 6), nn.Linear(6, 3), {}
            self.register_buffer("scale", torch.ones(6), persistent=False)

        def forward(self, x):
            self.last = self.fc(x)  # a tensor of the scoring call's graph
            self.seen["x"] = self.last
            self.calls = getattr(self, "calls", 0) + 1
            self.scale = self.scale * 1.0  # a buffer replaced in forward
            return self.head(torch.relu(self.last) * self.scale)

    model = Caching().eval()
    buffer = model.scale
    rg.score(model, torch.randn(2, 4))
    assert not hasattr(model, "last") and not hasattr(model, "calls")
    assert model.seen == {} and model.scale is buffer


def test_experts_not_scored_run_their_own_forward():
    pytest.importorskip("transformers")
    import zoo

    case = next(c for c in zoo.HF if c.name == "mixtral-moe")
    model = case.build()
    inputs = case.inputs(torch.Generator().manual_seed(0))
    experts = model.model.layers[0].mlp.experts
    replaced = []
    handle = experts.register_forward_pre_hook(lambda m, a: replaced.append("forward" in m.__dict__))
    try:
        rg.score(model, [inputs], modules=[rg.Unit("model.layers.0.self_attn.o_proj", "input", 8)])
    finally:
        handle.remove()
    assert replaced[0] is True  # the structure probe (and its one-example runs) check rgprune_fast's forward
    assert replaced[-1] is False  # not scored: the scoring batch runs the class's own forward


def test_a_fold_that_cannot_run_one_example_alone_is_refused_not_raised():
    class NeedsTwo(Folded):
        def forward(self, x):
            if x.shape[0] < 2:
                raise RuntimeError("this model needs two examples")
            return super().forward(x)

    with pytest.raises(rg.UnsupportedModuleError, match="'fc1'.*cannot be assigned to examples"):
        rg.score(NeedsTwo().eval(), torch.randn(2, 5, 4))


@pytest.mark.parametrize("name", ["mixtral-moe", "opt"])
def test_bfloat16_experts_and_folds_are_not_refused(name):
    """bf16 kernels round by ~4e-3: the experts' agreement check and the fold check scale with the dtype."""
    pytest.importorskip("transformers")
    import zoo

    case = next(c for c in zoo.HF if c.name == name)
    model = case.build().to(torch.bfloat16)
    scores = score_all(model, case.inputs(torch.Generator().manual_seed(0)))
    assert len(scores) == 4
    assert any(key.endswith(":experts") or key.endswith("fc2:input") for key in scores)
