"""The public model zoo the scorer is checked on (tests/test_zoo.py): timm, every torchvision
classification model, and Hugging Face architectures, each with random weights at (about) the smallest
input it accepts, two examples per batch.

A :class:`Case` builds the model and its batch and says what the default selection must find:
``heads`` (the head count of every attention layer, in order), ``neurons`` (MLP down projections) and
``experts`` (Mixture-of-Experts layers); written out here from each architecture's published
configuration, independently of the selection code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from models import import_transformers, randomize

from rgprune_fast._torchvision import import_torchvision

CLASSES = 10
VOCAB = 61


@dataclass
class Case:
    family: str
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator], object]  # the batch's model inputs (tensor or dict of kwargs)
    targets: Callable[[torch.Generator], torch.Tensor] | None = None  # None: no label gradient (no logits)
    heads: list[int] = field(default_factory=list)
    neurons: int = 0
    experts: int = 0
    causal: bool = False
    float64: bool = False  # also checked as a float64 model (1e-10)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"


def _images(size: int, n: int = 2):
    return lambda g: torch.randn(n, 3, size, size, generator=g)


def _classes(n: int = 2, classes: int = CLASSES):
    return lambda g: torch.randint(0, classes, (n,), generator=g)


def _tokens(seq: int = 6, n: int = 2, pad: bool = True):
    def make(g):
        mask = torch.ones(n, seq, dtype=torch.long)
        if pad:
            mask[1, -2:] = 0  # right padding on the second example
        return {"input_ids": torch.randint(3, VOCAB, (n, seq), generator=g), "attention_mask": mask}

    return make


def _lm_labels(seq: int = 6, n: int = 2):
    return lambda g: torch.randint(3, VOCAB, (n, seq), generator=g)


# ---------------------------------------------------------------------------------------------- timm


def _timm(name: str, size: int, heads=(), neurons=0, float64=False, **kwargs) -> Case:
    def build():
        import_torchvision()  # timm imports torchvision, which needs the CPU op shim first
        import timm

        torch.manual_seed(0)
        return randomize(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)).eval()

    return Case("timm", name, build, _images(size), _classes(), list(heads), neurons, float64=float64)


TIMM = [
    _timm("resnet18", 32, float64=True),
    _timm("resnet50d", 32),
    _timm("regnetx_002", 32),
    _timm("regnety_002", 32),
    _timm("densenet121", 32),
    _timm("rexnet_100", 32),
    _timm("cspresnet50", 64),
    _timm("ghostnet_100", 32),
    _timm("efficientnet_b0", 32),
    _timm("mobilenetv3_small_050", 32),
    _timm("lcnet_050", 32),
    _timm("mnasnet_050", 32),
    _timm("tf_efficientnet_lite0", 32),
    _timm("repvgg_a0", 32),
    _timm("dla34", 32),
    _timm("hrnet_w18_small", 64),
    _timm("dpn48b", 32),
    _timm("resnext26ts", 32),
    _timm("xception41", 64),
    _timm("inception_v3", 75),
    _timm("convnext_atto", 32),
    _timm("edgenext_xx_small", 64),
    _timm("poolformer_s12", 32),
    _timm("fastvit_t8", 64),
    _timm("efficientvit_b0", 64),
    _timm("coatnet_nano_rw_224", 64, img_size=64),
    _timm("mixer_s32_224", 64, img_size=64),
    _timm("mobilevit_xxs", 64, heads=[4] * 9, neurons=9),
    _timm("vit_tiny_patch16_224", 32, heads=[3] * 12, neurons=12, img_size=32),
    _timm("deit_tiny_patch16_224", 32, heads=[3] * 12, neurons=12, img_size=32),
    _timm(
        "swin_tiny_patch4_window7_224",
        64,
        heads=[3] * 2 + [6] * 2 + [12] * 6 + [24] * 2,
        neurons=12,
        img_size=64,
        window_size=2,
    ),
    _timm("maxvit_nano_rw_256", 64, heads=[2] * 2 + [4] * 4 + [8] * 6 + [16] * 2, neurons=14, img_size=64),
]


# ---------------------------------------------------------------------------------------- torchvision

_TV_SIZE = {"alexnet": 64, "squeezenet1_0": 64, "squeezenet1_1": 64, "inception_v3": 75, "maxvit_t": 224}
_TV_KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "vit_b_16": {"image_size": 32},
    "vit_b_32": {"image_size": 32},
    "vit_l_16": {"image_size": 32},
    "vit_l_32": {"image_size": 32},
    "vit_h_14": {"image_size": 28},
}
_TV_HEADS = {
    "vit_b_16": [12] * 12,
    "vit_b_32": [12] * 12,
    "vit_l_16": [16] * 24,
    "vit_l_32": [16] * 24,
    "vit_h_14": [16] * 32,
    "swin_t": [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2,
    "swin_v2_t": [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2,
    "swin_s": [3] * 2 + [6] * 2 + [12] * 18 + [24] * 2,
    "swin_v2_s": [3] * 2 + [6] * 2 + [12] * 18 + [24] * 2,
    "swin_b": [4] * 2 + [8] * 2 + [16] * 18 + [32] * 2,
    "swin_v2_b": [4] * 2 + [8] * 2 + [16] * 18 + [32] * 2,
    "maxvit_t": [2] * 4 + [4] * 4 + [8] * 10 + [16] * 4,
}
_TV_SIZE.update({n: 32 for n in _TV_HEADS if n.startswith("swin")})


def _tv(name: str) -> Case:
    def build():
        tv = import_torchvision()
        torch.manual_seed(0)
        return randomize(tv.models.get_model(name, num_classes=CLASSES, **_TV_KWARGS.get(name, {}))).eval()

    size = _TV_SIZE.get(name, 28 if name == "vit_h_14" else 32)
    heads = _TV_HEADS.get(name, [])
    return Case(
        "torchvision",
        name,
        build,
        _images(size),
        _classes(),
        heads,
        len(heads),
        float64=name in ("resnet18", "mobilenet_v3_small", "squeezenet1_1"),
    )


def torchvision_names() -> list[str]:
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


# ------------------------------------------------------------------------------------------ Hugging Face


def _hf(name, make, inputs, targets=None, heads=(), neurons=0, experts=0, causal=False, float64=False) -> Case:
    def build():
        tf = import_transformers()
        torch.manual_seed(0)
        return make(tf).eval()

    return Case("hf", name, build, inputs, targets, list(heads), neurons, experts, causal, float64)


def _decoder(config_cls, model_cls, **extra):
    def make(tf):
        config = getattr(tf, config_cls)(vocab_size=VOCAB, **extra)
        return getattr(tf, model_cls)(config)

    return make


_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48}
_LM = dict(_SMALL, max_position_embeddings=64)


class _Wrapper(torch.nn.Module):
    """A user's module around a Hugging Face encoder (no ``config`` of its own), with a head of its own."""

    def __init__(self, tf):
        super().__init__()
        self.encoder = tf.BertModel(tf.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **_SMALL))
        self.head = torch.nn.Linear(32, 3)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, 0])


HF = [
    _hf(
        "llama-gqa",
        _decoder("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2, **_LM),
        _tokens(),
        _lm_labels(),
        [2, 2],
        2,
        causal=True,
        float64=True,
    ),
    _hf(
        "qwen2-mqa",
        _decoder("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=1, **_LM),
        _tokens(),
        _lm_labels(),
        [1, 1],
        2,
        causal=True,
    ),
    _hf(
        "mistral",
        _decoder("MistralConfig", "MistralForCausalLM", num_key_value_heads=2, **_LM),
        _tokens(),
        _lm_labels(),
        [2, 2],
        2,
        causal=True,
    ),
    _hf(
        "gpt2",
        _decoder("GPT2Config", "GPT2LMHeadModel", n_embd=32, n_layer=2, n_head=4, n_positions=64),
        _tokens(),
        _lm_labels(),
        [4, 4],
        2,
        causal=True,
    ),
    _hf(
        "opt",
        _decoder(
            "OPTConfig",
            "OPTForCausalLM",
            ffn_dim=48,
            word_embed_proj_dim=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        ),
        _tokens(),
        _lm_labels(),
        [4, 4],
        2,
        causal=True,
    ),
    _hf(
        "falcon-mqa",
        _decoder(
            "FalconConfig",
            "FalconForCausalLM",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            new_decoder_architecture=False,
            alibi=False,
        ),
        _tokens(),
        _lm_labels(),
        [4, 4],
        2,
        causal=True,
    ),
    _hf(
        "gpt-neox",
        _decoder("GPTNeoXConfig", "GPTNeoXForCausalLM", **_LM),
        _tokens(),
        _lm_labels(),
        [4, 4],
        2,
        causal=True,
    ),
    _hf(
        "mixtral-moe",
        _decoder(
            "MixtralConfig",
            "MixtralForCausalLM",
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **dict(_LM, intermediate_size=24),
        ),
        _tokens(),
        _lm_labels(),
        [2, 2],
        0,
        experts=2,
        causal=True,
    ),
    _hf(
        "bert-cls",
        _decoder("BertConfig", "BertForSequenceClassification", num_labels=3, max_position_embeddings=64, **_SMALL),
        _tokens(),
        _classes(classes=3),
        [4, 4],
        2,
    ),
    _hf(
        "roberta-cls",
        _decoder(
            "RobertaConfig", "RobertaForSequenceClassification", num_labels=3, max_position_embeddings=64, **_SMALL
        ),
        _tokens(),
        _classes(classes=3),
        [4, 4],
        2,
    ),
    _hf(
        "distilbert-cls",
        _decoder(
            "DistilBertConfig",
            "DistilBertForSequenceClassification",
            dim=32,
            hidden_dim=48,
            n_layers=2,
            n_heads=4,
            max_position_embeddings=64,
            num_labels=3,
        ),
        _tokens(),
        _classes(classes=3),
        [4, 4],
        2,
    ),
    _hf(
        "bert-encoder",
        _decoder("BertConfig", "BertModel", max_position_embeddings=64, **_SMALL),
        _tokens(),
        None,
        [4, 4],
        2,
    ),
    _hf(
        "t5-encoder",
        _decoder("T5Config", "T5EncoderModel", d_model=32, d_ff=48, d_kv=8, num_layers=2, num_heads=4),
        _tokens(),
        None,
        [4, 4],
        2,
    ),
    _hf("wrapped-bert", _Wrapper, _tokens(), _classes(classes=3), [4, 4], 2),
    _hf(
        "vit",
        lambda tf: tf.ViTForImageClassification(tf.ViTConfig(image_size=16, patch_size=4, num_labels=3, **_SMALL)),
        _images(16),
        _classes(classes=3),
        [4, 4],
        2,
    ),
    _hf(
        "swin",
        lambda tf: tf.SwinForImageClassification(
            tf.SwinConfig(
                image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3
            )
        ),
        _images(32),
        _classes(classes=3),
        [2, 4],
        2,
    ),
    _hf(
        "clip-vision",
        lambda tf: tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=16, patch_size=4, **_SMALL)),
        _images(16),
        None,
        [4, 4],
        2,
    ),
]
