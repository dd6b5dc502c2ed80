"""Default units of transformer models (Hugging Face Llama/Mistral/Qwen, GPT-2, BERT, ViT and
look-alikes), recognised by their ``config`` and module names.

* MLP neurons: the input of the MLP's down projection (``mlp.down_proj``, ``mlp.fc2``, GPT-2's
  ``mlp.c_proj``, BERT's ``layer.N.output.dense``), one unit per channel.
* Attention heads: the input of the attention output projection (``self_attn.o_proj``,
  ``attention.o_proj``, ``attn.out_proj``, GPT-2's ``attn.c_proj``, BERT's
  ``attention.output.dense``), grouped by ``head_dim``, so each layer yields ``num_attention_heads``
  scores. With grouped-query attention the output projection still sees every query head, so the
  rule is unchanged.

Anything else keeps the convolutional default (planning.py). Pass ``modules=`` to override.
"""

from __future__ import annotations

import re

from torch import nn

from ..units import Unit

NEURON_PATTERNS = [
    r"(^|\.)mlp\.(down_proj|fc2|c_proj|dense_4h_to_h)$",
    r"(^|\.)(feed_forward|ffn)\.(down_proj|fc2|w2|output_dense)$",
    r"(^|\.)layer\.\d+\.output\.dense$",  # BERT-style: intermediate -> output.dense
]
HEAD_PATTERNS = [
    r"(^|\.)(self_attn|attn|attention|self_attention)\.(o_proj|out_proj|c_proj|dense)$",
    r"(^|\.)attention\.output\.dense$",  # BERT-style
]


def _in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return weight.shape[0]
    return None


def head_layout(config) -> tuple[int, int] | None:
    """``(num_attention_heads, head_dim)`` from a transformers config, if it has them."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not heads:
        return None
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden else None)
    return (heads, head_dim) if head_dim else None


def is_transformer(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "model_type", None) is not None


def transformer_units(model: nn.Module) -> list[Unit]:
    """The default units of a transformer model, in ``named_modules()`` order; ``[]`` if not one."""
    if not is_transformer(model):
        return []
    layout = head_layout(model.config)
    units = []
    for name, module in model.named_modules():
        width = _in_features(module)
        if width is None:
            continue
        if layout is not None and any(re.search(p, name) for p in HEAD_PATTERNS):
            heads, head_dim = layout
            if width == heads * head_dim:
                units.append(Unit(name, "input", head_dim))
                continue
        if any(re.search(p, name) for p in NEURON_PATTERNS):
            units.append(Unit(name, "input", 1))
    return units


def is_causal_lm(model: nn.Module) -> bool:
    """Hugging Face causal language models: their labels are shifted by one position."""
    name = type(model).__name__
    return is_transformer(model) and ("CausalLM" in name or name.endswith("LMHeadModel"))
