"""The test model zoo (``ZOO``): small nets plus torchvision models at 32x32, with non-trivial BN
statistics, each with the units the default selection must score (:func:`expected_units`, written out
here independently of the selection code)."""

from __future__ import annotations

import torch
from torch import nn

from rgprune_fast._torchvision import import_torchvision


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def conv_bn_relu(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )


def vgg_no_bn(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(inplace=True),
        nn.Linear(32, classes),
    )


def mlp(classes: int = 5) -> nn.Module:
    """[N, C] MLP: a ReLU-fed Linear, a GELU-fed Linear (generic tap) and the head."""
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, classes))


class TokenMLP(nn.Module):
    """[N, T, C] model: per-token MLP with a LayerNorm; output [N, T, classes]."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.up = nn.Linear(6, 16)
        self.act = nn.ReLU(inplace=True)
        self.mix = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act(self.up(x))
        h = self.norm(self.mix(h) + h)
        return self.head(h)


ZOO = ("conv_bn_relu", "vgg_no_bn", "mlp", "token_mlp", "resnet18", "mobilenet_v2", "densenet121")


def _bn_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def expected_units(name: str, model: nn.Module) -> list[str]:
    """The modules the default selection scores, in ``named_modules()`` order: every BatchNorm, and every
    Conv/Linear not feeding a BatchNorm except the output layer."""
    if name in ("resnet18", "mobilenet_v2", "conv_bn_relu"):
        return _bn_names(model)  # every conv feeds a BN; the classifier is the output
    if name == "densenet121":  # conv2 of a dense layer and the transition convs feed concatenations / pooling
        keep = set(_bn_names(model)) | {
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and (n.endswith("conv2") or "transition" in n)
        }
        return [n for n, _ in model.named_modules() if n in keep]
    return {"vgg_no_bn": ["0", "2", "5", "9"], "mlp": ["0", "2"], "token_mlp": ["up", "mix"]}[name]


def torchvision_model(name: str, classes: int = 10) -> nn.Module:
    tv = import_torchvision()
    return getattr(tv.models, name)(num_classes=classes)


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    builders = {"conv_bn_relu": conv_bn_relu, "vgg_no_bn": vgg_no_bn, "mlp": mlp, "token_mlp": TokenMLP}
    model = builders[name]() if name in builders else torchvision_model(name)
    return randomize(model, seed).eval()


def batches(name: str, sizes=(3, 2), seed: int = 0, channels_last: bool = False):
    """Batches ``(inputs, targets)`` of different sizes fitting model ``name``."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for n in sizes:
        if name == "mlp":
            x, t = torch.randn(n, 10, generator=g), torch.randint(0, 5, (n,), generator=g)
        elif name == "token_mlp":
            x, t = torch.randn(n, 4, 6, generator=g), torch.randint(0, 7, (n, 4), generator=g)
        else:
            size = 16 if name in ("conv_bn_relu", "vgg_no_bn") else 32
            classes = 5 if name in ("conv_bn_relu", "vgg_no_bn") else 10
            x = torch.randn(n, 3, size, size, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t = torch.randint(0, classes, (n,), generator=g)
        out.append((x, t))
    return out


def import_transformers():
    """transformers imports torchvision (which needs the CPU op shim first); ``None`` if absent."""
    import_torchvision()
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    return transformers


HF_MODELS = ("llama", "gpt2", "bert", "vit")


def hf_model(kind: str, seed: int = 0):
    """A tiny random-weight Hugging Face model (no download) and its expected default units."""
    tf = import_transformers()
    torch.manual_seed(seed)
    if kind == "llama":  # grouped-query attention: 4 query heads, 2 key/value heads: 2 units (one per kv head)
        config = tf.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=61, max_position_embeddings=64)  # fmt: skip
        model = tf.LlamaForCausalLM(config)
        units = [(f"model.layers.{i}.{m}:input", n) for i in range(2) for m, n in (("self_attn.o_proj", 2),
                                                                                  ("mlp.down_proj", 48))]  # fmt: skip
    elif kind == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=64, bos_token_id=0,
                               eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        model = tf.GPT2LMHeadModel(config)
        units = [(f"transformer.h.{i}.{m}:input", n) for i in range(2) for m, n in (("attn.c_proj", 4),
                                                                                   ("mlp.c_proj", 128))]  # fmt: skip
    elif kind == "bert":
        config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                               vocab_size=61, num_labels=3, max_position_embeddings=64)  # fmt: skip
        model = tf.BertForSequenceClassification(config)
        units = [(f"bert.encoder.layer.{i}.{m}:input", n) for i in range(2)
                 for m, n in (("attention.output.dense", 4), ("output.dense", 48))]  # fmt: skip
    elif kind == "vit":
        config = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                              image_size=16, patch_size=4, num_labels=3)  # fmt: skip
        model = tf.ViTForImageClassification(config)
        units = [(f"vit.layers.{i}.{m}:input", n) for i in range(2) for m, n in (("attention.o_proj", 4),
                                                                                ("mlp.fc2", 48))]  # fmt: skip
    else:
        raise ValueError(kind)
    return model.eval(), units


def hf_batches(kind: str, sizes=(3, 2), seq: int = 7, seed: int = 0):
    """``(inputs dict, labels)`` batches; the first LM batch has right padding (mask 0, label -100)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for b, n in enumerate(sizes):
        if kind == "vit":
            out.append(
                ({"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}, torch.randint(0, 3, (n,), generator=g))
            )
            continue
        ids = torch.randint(0, 61, (n, seq), generator=g)
        mask = torch.ones(n, seq, dtype=torch.long)
        if b == 0:
            mask[0, -2:] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if kind == "bert":
            out.append((inputs, torch.randint(0, 3, (n,), generator=g)))
        else:
            labels = torch.where(mask.bool(), ids, -100)
            out.append((inputs, labels))
    return out
