"""Fused input taps of transformer MLPs (engine/fused_inputs.py): the gated MLP's product (Llama, Mistral,
Qwen2) and the activation before a plain MLP's down projection (GPT-2, BERT) reduce ``s`` from tensors
autograd keeps anyway. Against the oracle (every criterion, label and random gradients, padded batches,
float32 and float64), the generic input tap where the class is not recognised, and peak memory against
the floor (parameters frozen, one forward + backward of the same output gradient, no taps)."""

from __future__ import annotations

import copy
import weakref

import models
import pytest
import torch
import zoo
from oracle import oracle_scores
from reference import rel_err
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rgprune_fast as rg
from rgprune_fast.engine.gradients import OutputGradient
from rgprune_fast.engine.transformer_units import unit_kind
from rgprune_fast.taps import tapset

tf = models.import_transformers()
pytestmark = pytest.mark.skipif(tf is None, reason="transformers is not installed")
METHODS = list(rg.METHODS)
CASES = {c.name: c for c in zoo.HF}
FUSED = {"llama-gqa": "product", "qwen2-mqa": "product", "mistral": "product", "gpt2": "activation",
         "bert-cls": "activation"}  # fmt: skip


def _batches(case, sizes=(3, 2)):
    """Two batches; the second example of each is right-padded (zoo._tokens)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for n in sizes:
        inputs = zoo._tokens(n=n)(g) if "input_ids" in case.inputs(torch.Generator()) else case.inputs(g)
        shape = (n, 6) if case.causal else (n,)
        targets = (
            torch.randint(3, zoo.VOCAB, shape, generator=g) if case.causal else torch.randint(0, 3, shape, generator=g)
        )
        out.append((inputs, targets))
    return out


def _unit_specs(model, scores):
    specs = []
    for key, values in scores.items():
        name = key.split(":")[0]
        module = model.get_submodule(name)
        width = module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.in_features
        specs.append(rg.Unit(name, "input", width // len(values)))
    return specs


def _neuron_keys(scores):
    return [k for k in scores if unit_kind(k) == "neurons"]


@pytest.fixture
def generic_keys(monkeypatch):
    """The keys whose statistic came from a generic tap during the call."""
    seen: set[str] = set()
    original = tapset.GenericTap

    class Counting:
        @staticmethod
        def apply(x, anchor, tap):
            seen.add(tap.plan.key)
            return original.apply(x, anchor, tap)

    monkeypatch.setattr(tapset, "GenericTap", Counting)
    return seen


def _check(model, batches, gradient, dtype, causal):
    data = [{**inputs, "labels": targets} for inputs, targets in batches]
    ours = rg.score(model, data, method=METHODS, gradient=gradient, seed=3)
    units = _unit_specs(model, ours[METHODS[0]])
    ref = oracle_scores(model, batches, units, METHODS, gradient, True, seed=3, dtype=dtype, shift=causal)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for method in METHODS:
        assert list(ours[method]) == list(ref[method])
        for key, value in ours[method].items():
            err = rel_err(value, ref[method][key])
            assert err <= tol, (method, key, err)
    return ours


@pytest.mark.parametrize("gradient", ["label", "random"])
@pytest.mark.parametrize("name", list(FUSED))
def test_fused_matches_oracle(name, gradient, generic_keys):
    case = CASES[name]
    model = case.build()
    ours = _check(model, _batches(case), gradient, None, case.causal)
    neurons = _neuron_keys(ours[METHODS[0]])
    assert len(neurons) == 2
    assert not generic_keys & set(neurons), "the MLP neurons went through the generic input tap"


@pytest.mark.parametrize("name", list(FUSED))
def test_fused_float64_is_exact(name, generic_keys):
    case = CASES[name]
    model = case.build().double()
    batches = [(inputs, targets) for inputs, targets in _batches(case)]
    ours = _check(model, batches, "random", torch.float64, case.causal)
    assert all(v.dtype == torch.float64 for v in ours[METHODS[0]].values())
    assert not generic_keys & set(_neuron_keys(ours[METHODS[0]]))


def test_fused_is_deterministic():
    case = CASES["llama-gqa"]
    model = case.build()
    data = [{**inputs, "labels": targets} for inputs, targets in _batches(case)]
    first = rg.score(model, data, method=METHODS, gradient="label")
    second = rg.score(model, data, method=METHODS, gradient="label")
    for method in METHODS:
        for key in first[method]:
            assert torch.equal(first[method][key], second[method][key])


def _unrecognised_llama():
    """Llama whose MLP class adds to the reference forward, and GPT-2 with an activation of its own: the
    generic input tap scores them."""
    model = CASES["llama-gqa"].build()
    mlp_cls = type(model.model.layers[0].mlp)

    class ScaledMLP(mlp_cls):
        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) * 0.5)

    for layer in model.model.layers:
        layer.mlp.__class__ = ScaledMLP
    return model


class _OwnGelu(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x) + 0.1 * x


def _unrecognised_gpt2():
    model = CASES["gpt2"].build()
    for block in model.transformer.h:
        block.mlp.act = _OwnGelu()
    return model


@pytest.mark.parametrize("build,name", [(_unrecognised_llama, "llama-gqa"), (_unrecognised_gpt2, "gpt2")])
def test_unrecognised_classes_fall_back_to_the_generic_tap(build, name, generic_keys):
    case = CASES[name]
    model = build()
    ours = _check(model, _batches(case), "label", None, case.causal)
    assert set(ours[METHODS[0]]) == generic_keys  # every unit, the MLP neurons too


def test_recognition():
    from rgprune_fast.engine import fused_inputs

    llama = CASES["llama-gqa"].build()
    assert fused_inputs.is_gated_mlp(llama.model.layers[0].mlp)
    assert not fused_inputs.is_gated_mlp(_unrecognised_llama().model.layers[0].mlp)
    patched = CASES["llama-gqa"].build().model.layers[0].mlp
    patched.forward = lambda x: x  # an instance forward of its own
    assert not fused_inputs.is_gated_mlp(patched)
    assert fused_inputs.is_elementwise_activation(CASES["gpt2"].build().transformer.h[0].mlp.act)
    assert not fused_inputs.is_elementwise_activation(_OwnGelu())
    assert not fused_inputs.is_elementwise_activation(torch.nn.ReLU(inplace=True))

    class MyGELU(torch.nn.GELU):
        pass

    assert not fused_inputs.is_elementwise_activation(MyGELU())


# ------------------------------------------------------------------------------------------------ memory


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created by ops inside the mode (views and in-place results share their
    input's storage and are not counted), each counted until it is freed (a weakref finalizer)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in inputs and storage.nbytes():
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


def _floor(model, inputs, projections):
    """Parameters frozen, no taps: backward from the same output gradient reaches exactly as far as
    scoring's (the inputs of the earliest scored projections are made to require grad, as leaves)."""
    leaves = []

    def pre_hook(module, args):
        x = args[0]
        if not x.requires_grad and x.is_floating_point():
            x.requires_grad_(True)
            leaves.append(x)

    handles = [m.register_forward_pre_hook(pre_hook) for m in projections]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        logits = model(**inputs).logits
        g = OutputGradient("random", True, 0, logits.device)(logits, None, None)
        torch.autograd.grad(logits, leaves, g)
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _memory_models():
    common = {"vocab_size": 512, "max_position_embeddings": 256}
    return {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=128, intermediate_size=512,
                                                            num_hidden_layers=4, num_attention_heads=4, **common)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=128, n_layer=4, n_head=4, vocab_size=512,
                                                         n_positions=256)),
        "bert": lambda: tf.BertForMaskedLM(tf.BertConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                                         num_attention_heads=4, **common)),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_peak_memory_is_the_floor(kind):
    torch.manual_seed(0)
    model = _memory_models()[kind]().eval()
    inputs = {"input_ids": torch.randint(0, 512, (4, 128), generator=torch.Generator().manual_seed(0))}
    scores = rg.score(model, inputs)  # warm-up (lazy initialisation outside the measured calls)
    projections = [model.get_submodule(k.split(":")[0]) for k in scores]
    _floor(model, inputs, projections)
    with PeakLiveBytes() as floor:
        _floor(model, inputs, projections)
    with PeakLiveBytes() as scored:
        rg.score(model, inputs)
    ratio = scored.peak / floor.peak
    assert ratio <= 1.02, f"{kind}: score {scored.peak / 2**20:.2f} MiB, floor {floor.peak / 2**20:.2f} MiB"


def test_tracker_counts_storages_until_freed():
    with PeakLiveBytes() as t:
        a = torch.ones(1000)
        b = a * 2
        view = b.view(10, 100)
        assert t.now == 8000
        del b
        assert t.now == 8000  # the view keeps the storage
        del view
        assert t.now == 4000
        a.mul_(2)
        assert t.now == 4000
    assert t.peak == 8000


def test_model_untouched_after_fused_scoring():
    from untouched import assert_same, snapshot

    case = CASES["llama-gqa"]
    model = case.build()
    before = snapshot(model)
    forwards = {id(m): copy.copy(m.__dict__.get("forward")) for m in model.modules()}
    rg.score(model, [{**i, "labels": t} for i, t in _batches(case)], method=METHODS)
    assert_same(before, snapshot(model))
    assert all("forward" not in m.__dict__ and forwards[id(m)] is None for m in model.modules())
