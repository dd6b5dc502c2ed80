"""Physical pruning of Hugging Face transformers (pruning/hf_slicing.py, hf_checkpoint.py): in float64 the
pruned model computes what the masked model (apply_masks) computes, with eager and sdpa attention; the
parameter count drops by what the removed rows and columns hold; a saved pruned model reloads in a fresh
process with the same outputs; bad masks change nothing."""

import math
import os
import subprocess
import sys
from pathlib import Path

import models
import pytest
import torch

import rgprune_fast as rg
from rgprune_fast.errors import UnsupportedModuleError
from rgprune_fast.pruning import masked
from rgprune_fast.pruning.hf_checkpoint import load_pruned, save_pruned
from rgprune_fast.pruning.hf_slicing import prune_transformer

tf = models.import_transformers()
pytestmark = pytest.mark.skipif(tf is None, reason="transformers is not installed")
REPO = Path(__file__).resolve().parents[1]
TOL = 1e-10  # float64: only the summation order differs between masked and pruned
HIDDEN, HEAD_DIM = 32, 8
_SMALL = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=61)
_LM = dict(_SMALL, max_position_embeddings=64)

# Parameters one removed unit holds (hidden 32, head_dim 8), written out per family:
# query head = its q rows (+ q bias) and its output-projection input columns; kv head = k and v rows (+ biases);
# neuron = gate/up (or intermediate / c_fc / fc1) row (+ bias) and a down-projection column.
_NO_BIAS = (2 * HEAD_DIM * HIDDEN, 2 * HEAD_DIM * HIDDEN, 3 * HIDDEN)  # Llama, Mistral (gate + up + down)
_QWEN2 = (2 * HEAD_DIM * HIDDEN + HEAD_DIM, 2 * (HEAD_DIM * HIDDEN + HEAD_DIM), 3 * HIDDEN)  # q/k/v biases
_BIASED = (2 * HEAD_DIM * HIDDEN + HEAD_DIM, 2 * (HEAD_DIM * HIDDEN + HEAD_DIM), 2 * HIDDEN + 1)  # GPT-2, BERT, ViT

_DECODER = ("model.layers.{}.self_attn.o_proj:input", "model.layers.{}.mlp.down_proj:input")
_BERT = ("{}.encoder.layer.{{}}.attention.output.dense:input", "{}.encoder.layer.{{}}.output.dense:input")


def _decoder(config, model, kv_heads):
    return lambda: getattr(tf, model)(getattr(tf, config)(num_key_value_heads=kv_heads, **_LM))


def _gpt2():
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=64))


def _encoder(config, model, **extra):
    return lambda: getattr(tf, model)(getattr(tf, config)(num_labels=3, **extra, **_SMALL))


def _vit():
    small = {k: v for k, v in _SMALL.items() if k != "vocab_size"}
    return tf.ViTForImageClassification(tf.ViTConfig(image_size=16, patch_size=4, num_labels=3, **small))


# family: (builder, batch kind of tests/models.hf_batches, (key of heads, key of neurons), per-unit params)
FAMILIES = {
    "llama": (_decoder("LlamaConfig", "LlamaForCausalLM", 4), "llama", _DECODER, _NO_BIAS),
    "llama-gqa": (_decoder("LlamaConfig", "LlamaForCausalLM", 2), "llama", _DECODER, _NO_BIAS),
    "mistral": (_decoder("MistralConfig", "MistralForCausalLM", 2), "llama", _DECODER, _NO_BIAS),
    "qwen2": (_decoder("Qwen2Config", "Qwen2ForCausalLM", 2), "llama", _DECODER, _QWEN2),
    "gpt2": (_gpt2, "llama", ("transformer.h.{}.attn.c_proj:input", "transformer.h.{}.mlp.c_proj:input"), _BIASED),
    "bert": (
        _encoder("BertConfig", "BertForSequenceClassification", max_position_embeddings=64),
        "bert",
        tuple(k.format("bert") for k in _BERT),
        _BIASED,
    ),
    "roberta": (  # RoBERTa's positions start after the padding index 1
        _encoder("RobertaConfig", "RobertaForSequenceClassification", max_position_embeddings=66),
        "bert",
        tuple(k.format("roberta") for k in _BERT),
        _BIASED,
    ),
    "vit": (_vit, "vit", ("vit.layers.{}.attention.o_proj:input", "vit.layers.{}.mlp.fc2:input"), _BIASED),
}

# (family, head masks of layers 0 and 1): 1 of 4 heads (MHA); for GQA (2 kv groups of 2 query heads) whole
# groups (one entry per group) and an equal count in each group
CASES = [
    ("llama", [[True, False, True, True], [True, True, True, False]]),
    ("llama-gqa", [[True, False], [False, True]]),
    ("llama-gqa", [[True, False, False, True], [False, True, True, False]]),
    ("mistral", [[False, True], [False, True, True, False]]),
    ("qwen2", [[True, False], [True, False, True, False]]),
    ("gpt2", [[True, False, True, True], [False, True, True, True]]),
    ("bert", [[True, True, False, True], [True, False, True, True]]),
    ("roberta", [[False, True, True, True], [True, True, True, False]]),
    ("vit", [[True, False, True, True], [True, True, False, True]]),
]


def build(family: str):
    torch.manual_seed(0)
    model = FAMILIES[family][0]().double().eval()
    batches = models.hf_batches(FAMILIES[family][1])
    return model, [{k: v.double() if v.is_floating_point() else v for k, v in inputs.items()} for inputs, _ in batches]


def neuron_masks(model, key: str, seed: int) -> list[torch.Tensor]:
    """30% of each layer's neurons pruned, different ones per layer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(2):
        width = model.get_submodule(key.format(layer).split(":")[0]).weight.shape
        n = width[0] if "c_proj" in key else width[1]  # GPT-2 Conv1D: weight [in, out]
        keep = torch.ones(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[: math.ceil(0.3 * n)]] = False
        out.append(keep)
    return out


def logits(model, batches, impl: str) -> list[torch.Tensor]:
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return [model(**inputs).logits for inputs in batches]


def assert_close(ours: list[torch.Tensor], ref: list[torch.Tensor], what: str) -> None:
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape, what
        err = float((a - b).abs().max() / b.abs().max())
        assert err <= TOL, f"{what}: max abs diff {err:.3g} of the output scale"


def removed_counts(model, family: str, heads: list[torch.Tensor]) -> tuple[int, int]:
    """(query heads, key/value heads) the head masks remove; kv groups die when all their query heads do."""
    config = model.config
    total = getattr(config, "num_attention_heads", None) or config.n_head
    n_rep = total // (getattr(config, "num_key_value_heads", None) or total)
    q = kv = 0
    for mask in heads:
        per_head = mask.repeat_interleave(total // mask.numel())
        q += int((~per_head).sum())
        kv += int((~per_head.view(-1, n_rep).any(1)).sum())
    return q, kv


def reload_in_fresh_process(folders: list[Path], batches: list) -> list[dict]:
    """load_pruned(folder) for each folder in ONE new interpreter (starting one costs seconds): the
    logits (eager and sdpa) of the folder's batches, the parameter count and the training flag."""
    for folder, inputs in zip(folders, batches, strict=True):
        torch.save(inputs, folder / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from rgprune_fast._torchvision import import_torchvision\n"
        "import_torchvision()\n"
        "from rgprune_fast.pruning.hf_checkpoint import load_pruned\n"
        "for folder in sys.argv[1:]:\n"
        "    model = load_pruned(folder)\n"
        "    batches = torch.load(folder + '/inputs.pt')\n"
        "    out = {'params': sum(p.numel() for p in model.parameters()), 'training': model.training}\n"
        "    for impl in ('eager', 'sdpa'):\n"
        "        model.set_attn_implementation(impl)\n"
        "        with torch.no_grad():\n"
        "            out[impl] = [model(**b).logits for b in batches]\n"
        "    torch.save(out, folder + '/reloaded.pt')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, *map(str, folders)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(folder / "reloaded.pt") for folder in folders]


def prune_case(family: str, head_masks: list[list[bool]]):
    """The model of ``family`` (float64), its batches, masks (given heads, 30% of the neurons per layer)."""
    model, batches = build(family)
    _, _, (head_key, neuron_key), _ = FAMILIES[family]
    heads = [torch.tensor(m) for m in head_masks]
    neurons = neuron_masks(model, neuron_key, seed=len(family))
    keep = {head_key.format(i): heads[i] for i in range(2)} | {neuron_key.format(i): neurons[i] for i in range(2)}
    return model, batches, keep, heads, neurons


@pytest.mark.parametrize(("family", "head_masks"), CASES, ids=[f"{f}-{len(h[0])}" for f, h in CASES])
def test_pruned_equals_masked(family, head_masks):
    model, batches, keep, heads, neurons = prune_case(family, head_masks)
    _, _, (head_key, neuron_key), (per_q, per_kv, per_neuron) = FAMILIES[family]
    with masked(model, keep):
        ref = {impl: logits(model, batches, impl) for impl in ("eager", "sdpa")}
    q, kv = removed_counts(model, family, heads)
    before = sum(p.numel() for p in model.parameters())

    report = prune_transformer(model, keep)

    dropped = q * per_q + kv * per_kv + sum(int((~n).sum()) for n in neurons) * per_neuron
    after = sum(p.numel() for p in model.parameters())
    assert (report["params_before"], report["params_after"]) == (before, before - dropped) == (before, after)
    for impl in ("eager", "sdpa"):
        assert_close(logits(model, batches, impl), ref[impl], f"{family} {impl}")
    attention = report["layers"][head_key.format(0)]
    assert attention["heads"] == 4 - removed_counts(model, family, heads[:1])[0] and attention["head_dim"] == HEAD_DIM
    assert report["layers"][neuron_key.format(1)]["neurons"] == int(neurons[1].sum())


def test_saved_pruned_models_reload_in_a_fresh_process(tmp_path):
    """Every case of CASES: save_pruned, then load_pruned in a new interpreter gives the same logits."""
    folders, batches, expected = [], [], []
    for i, (family, head_masks) in enumerate(CASES):
        model, inputs, keep, _, _ = prune_case(family, head_masks)
        prune_transformer(model, keep)
        folders.append(tmp_path / f"{i}-{family}")
        save_pruned(model, folders[-1])
        batches.append(inputs)
        outputs = {impl: logits(model, inputs, impl) for impl in ("eager", "sdpa")}
        expected.append(outputs | {"params": sum(p.numel() for p in model.parameters())})
    for (family, _), ours, ref in zip(CASES, reload_in_fresh_process(folders, batches), expected, strict=True):
        assert ours["params"] == ref["params"] and not ours["training"], family
        for impl in ("eager", "sdpa"):
            assert_close(ours[impl], ref[impl], f"{family} reloaded {impl}")


def snapshot(model):
    attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    attrs = {n: {k: v for k, v in a.items() if isinstance(v, (int, float, str))} for n, a in attrs.items()}
    return {k: v.clone() for k, v in model.state_dict().items()}, attrs


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"model.layers.9.mlp.down_proj:input": torch.ones(48, dtype=torch.bool)}, ValueError, "not in the model"),
        ({"model.layers.1.mlp.down_proj:input": torch.ones(5, dtype=torch.bool)}, ValueError, "do not (divide|split)"),
        ({"model.layers.1.self_attn.o_proj:input": torch.ones(8, dtype=torch.bool)}, ValueError, "not whole heads"),
        ({"model.layers.1.mlp.down_proj:input": torch.ones(48)}, ValueError, "1-D bool"),
        ({"model.layers.1.mlp.up_proj": torch.arange(48) > 0}, ValueError, "output-channel"),
        ({"model.layers.1.mlp.up_proj:input": torch.arange(32) > 0}, UnsupportedModuleError,
         "'model.layers.1.mlp.up_proj'"),
        ({"lm_head:input": torch.arange(32) > 0}, UnsupportedModuleError, "'lm_head'"),
        ({"model.layers.1.self_attn.o_proj:input": torch.tensor([True, True, True, False])}, ValueError,
         r"\[2, 1\] query heads .* 'model.layers.1.self_attn': every group"),
        ({"model.layers.1.self_attn.o_proj:input": torch.zeros(2, dtype=torch.bool)}, ValueError,
         "removes every head of 'model.layers.1.self_attn'"),
        ({"model.layers.1.mlp.down_proj:input": torch.zeros(48, dtype=torch.bool)}, ValueError,
         "removes every neuron of 'model.layers.1.mlp'"),
    ],
)  # fmt: skip
def test_bad_masks_change_nothing(bad, error, match):
    model, batches = build("llama-gqa")
    good = {  # valid entries first: checked, but nothing may change before the bad one is found
        "model.layers.0.self_attn.o_proj:input": torch.tensor([True, False]),
        "model.layers.0.mlp.down_proj:input": torch.arange(48) % 2 == 0,
    }
    state, attrs = snapshot(model)
    out = logits(model, batches, "sdpa")
    with pytest.raises(error, match=match):
        prune_transformer(model, good | bad)
    new_state, new_attrs = snapshot(model)
    assert new_attrs == attrs and list(new_state) == list(state)
    assert all(torch.equal(new_state[k], state[k]) for k in state)
    assert_close(logits(model, batches, "sdpa"), out, "after a refused prune")


def test_attention_with_a_per_head_parameter_is_refused():
    """A parameter sized by the heads that slicing would leave stale (here: attention sinks) -> refused."""
    model, _ = build("llama-gqa")
    model.model.layers[1].self_attn.sinks = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    keep = {"model.layers.1.self_attn.o_proj:input": torch.tensor([True, False])}
    with pytest.raises(UnsupportedModuleError, match="'model.layers.1.self_attn.o_proj'"):
        prune_transformer(model, keep)


def test_load_pruned_reads_an_unpruned_folder_and_refuses_a_wrong_width(tmp_path):
    model, batches = build("bert")
    model.save_pretrained(tmp_path / "plain")
    plain = load_pruned(tmp_path / "plain")
    assert type(plain) is type(model) and not plain.training
    assert_close(logits(plain, batches, "sdpa"), logits(model, batches, "sdpa"), "unpruned folder")

    prune_transformer(model, {"bert.encoder.layer.1.output.dense:input": torch.arange(48) < 30})
    save_pruned(model, tmp_path / "pruned")
    assert model.config.rgprune_fast_widths["bert.encoder.layer.1.output.dense:input"] == {"neurons": 30}
    config = tf.AutoConfig.from_pretrained(tmp_path / "pruned")
    config.rgprune_fast_widths["bert.encoder.layer.1.output.dense:input"]["neurons"] = 20
    config.save_pretrained(tmp_path / "pruned")
    with pytest.raises(ValueError, match=r"mismatched keys: .*bert.encoder.layer.1.intermediate.dense.bias"):
        load_pruned(tmp_path / "pruned")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_scores_to_pruned_model(kind):
    """rg.score -> the lowest-scored 25% of every key -> prune: outputs as masked; scoring the pruned
    model finds the kept units (so the head attributes the default units read were updated too)."""
    model, _ = models.hf_model(kind)
    data = [{**inputs, "labels": labels} for inputs, labels in models.hf_batches(kind)]
    scores = rg.score(model, data)
    keep = {}
    for key, s in scores.items():
        keep[key] = torch.ones(s.numel(), dtype=torch.bool)
        keep[key][s.argsort()[: math.ceil(0.25 * s.numel())]] = False
    model.double()
    batches = [{k: v for k, v in d.items() if k != "labels"} for d in data]
    with masked(model, keep):
        ref = logits(model, batches, "sdpa")
    prune_transformer(model, keep)
    assert_close(logits(model, batches, "sdpa"), ref, f"{kind} scored")
    rescored = rg.score(model.float(), data)
    assert {k: v.numel() for k, v in rescored.items()} == {k: int(m.sum()) for k, m in keep.items()}


def test_entries_that_remove_nothing_may_be_of_any_kind():
    """``masks()`` returns every scored key; kinds a ratio does not name come back all True: output
    channels, experts, blocks of other layouts. They remove nothing and are accepted; a wrong length
    is still refused."""
    model, batches = build("llama-gqa")
    keep = {
        "model.layers.0.mlp.down_proj:input": torch.arange(48) % 2 == 0,
        "model.layers.0.mlp.up_proj": torch.ones(48, dtype=torch.bool),
        "lm_head:input": torch.ones(32, dtype=torch.bool),
    }
    report = prune_transformer(model, keep)
    assert report["params_after"] < report["params_before"]
    with pytest.raises(ValueError, match="do not split"):
        prune_transformer(model, {"lm_head:input": torch.ones(5, dtype=torch.bool)})
