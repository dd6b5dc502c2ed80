"""Default units of transformer models: attention heads and MLP neurons, for Hugging Face models and
for the timm / torchvision ones alike, recognised by module names (:data:`UNIT_RULES`, the one table)
and by the attention modules' own head attributes.

* MLP neurons: the input of the MLP's down projection, one unit per channel.
* Attention heads: the input of the attention output projection, grouped by head size, so each
  layer yields its number of query heads. Grouped-query and multi-query attention: one unit per
  key/value head, i.e. the query heads sharing it (``num_key_value_groups`` of them), because that is
  what can be removed without breaking the uniform sharing (and it shrinks the KV cache too).
  The head count is read from the attention module (``num_heads``, ``num_attention_heads``,
  ``n_heads``, ``n_head``, or ``head_dim`` / ``attention_head_size`` / ``key_value_proj_dim``) next to
  the projection, so per-layer counts (Swin) are right; the model's ``config`` is the fallback.
* Mixture-of-Experts experts (engine/experts.py): one unit per neuron of every expert.

A model is treated as a transformer when it (or a module inside a wrapper) has a Hugging Face
``config``, or when a head rule matches. Then the default is these units plus the BatchNorm layers
the convolutional default would score (hybrids: MobileViT, MaxViT, ...). Pass ``modules=`` to override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..units import Unit, split_key
from . import experts


@dataclass(frozen=True)
class UnitRule:
    pattern: str  # searched in the module's full name
    unit: str  # "head" (input grouped by head size) | "neuron" (input, one per channel)
    families: str  # where the pattern comes from (documentation)


_ATTENTION = (
    r"(^|\.)(self_attn|attn|attention|self_attention|SelfAttention|EncDecAttention|encoder_attn|crossattention)"
)
UNIT_RULES = (
    UnitRule(
        _ATTENTION + r"\.(o_proj|out_proj|c_proj|dense|proj|o|out_lin)$",
        "head",
        "Llama/Mistral/Qwen/Mixtral (self_attn.o_proj), OPT/CLIP/BART (out_proj), GPT-2 (attn.c_proj), "
        "T5 (SelfAttention.o), DistilBERT (attention.out_lin), timm ViT/Swin (attn.proj), torchvision "
        "ViT (self_attention.out_proj) and Swin (attn.proj), called as modules by handlers.py",
    ),  # fmt: skip
    UnitRule(r"(^|\.)(attention|crossattention)\.output\.dense$", "head", "BERT, RoBERTa, HF ViT, HF Swin"),
    UnitRule(r"(^|\.)attn_layer\.\d+\.merge$", "head", "torchvision MaxViT (attn_layer.1.merge)"),
    UnitRule(
        r"(^|\.)(mlp|ffn|feed_forward|DenseReluDense)\.(down_proj|fc2|c_proj|w2|wo|lin2|dense_4h_to_h|"
        r"output_dense)$",
        "neuron",
        "Llama (mlp.down_proj), GPT-2 (mlp.c_proj), ViT/CLIP/timm (mlp.fc2), T5 (DenseReluDense.wo), "
        "DistilBERT (ffn.lin2)",
    ),  # fmt: skip
    UnitRule(r"(^|\.)(mlp|mlp_layer)\.3$", "neuron", "torchvision ViT / Swin / MaxViT (Linear, act, Dropout, Linear)"),
    UnitRule(r"(^|\.)(layer\.\d+|blocks\.\d+)\.output\.dense$", "neuron", "BERT-style, HF Swin"),
    UnitRule(r"(^|\.)layers\.\d+\.fc2$", "neuron", "OPT (fc1/fc2 directly on the decoder layer)"),
)

UNIT_KINDS = ("channels", "heads", "neurons", "experts", "inputs")

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")


def _in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return weight.shape[0]
    return None


def hf_config(model: nn.Module):
    """The Hugging Face ``config`` of the model, or of the first module inside it that has one (a wrapper)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "model_type", None) is not None:
            return config
    return None


def head_layout(config) -> tuple[int, int] | None:
    """``(num_attention_heads, head_dim)`` from a transformers config, if it has plain ints for them."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(heads, int) or not heads:
        return None
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if isinstance(hidden, int) else None)
    return (heads, head_dim) if isinstance(head_dim, int) and head_dim else None


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _head_size(model: nn.Module, name: str, width: int, fallback: tuple[int, int] | None) -> int | None:
    """The head size of the output projection ``name`` (input width ``width``), read from the attention
    module next to it: the projection itself, its parent and grandparent, and their direct children."""
    parts = name.split(".")
    for depth in range(len(parts), max(len(parts) - 3, -1), -1):
        ancestor = model.get_submodule(".".join(parts[:depth]))
        for holder in (ancestor, *ancestor.children()):
            heads = _int_attr(holder, HEAD_COUNT_ATTRS)
            if heads is not None and width % heads == 0:
                return width // heads
            size = _int_attr(holder, HEAD_SIZE_ATTRS)
            if size is not None and width % size == 0:
                return size
    if fallback is not None and fallback[0] * fallback[1] == width:
        return fallback[1]
    return None


def head_size(model: nn.Module, name: str, width: int) -> int | None:
    """The head size of the attention output projection ``name`` whose input is ``width`` channels."""
    config = hf_config(model)
    return _head_size(model, name, width, head_layout(config) if config is not None else None)


def _queries_per_kv_head(model: nn.Module, name: str, heads: int, config) -> int:
    """Grouped-query attention: the query heads sharing one key/value head (``num_key_value_groups`` of
    the attention module next to the projection, else the config's heads / key-value heads); 1 otherwise.
    A unit is then one key/value group: what removing a key/value head removes."""
    parent = model.get_submodule(name.rpartition(".")[0])
    groups = _int_attr(parent, ("num_key_value_groups",))
    if groups is None and config is not None and heads == getattr(config, "num_attention_heads", None):
        kv_heads = getattr(config, "num_key_value_heads", None)  # (only for the config's own attention)
        if isinstance(kv_heads, int) and kv_heads > 0 and heads % kv_heads == 0:
            groups = heads // kv_heads
    return groups if groups is not None and heads % groups == 0 else 1


def transformer_units(model: nn.Module) -> list[Unit]:
    """The default units of a transformer model, in ``named_modules()`` order; ``[]`` if not one."""
    config = hf_config(model)
    fallback = head_layout(config) if config is not None else None
    units, heads = [], False
    for name, module in model.named_modules():
        if experts.is_routed_experts(module):
            units.append(Unit(name, "experts"))
            continue
        width = _in_features(module)
        if width is None:
            continue
        rule = next((r for r in UNIT_RULES if re.search(r.pattern, name)), None)
        if rule is None:
            continue
        if rule.unit == "head":
            size = _head_size(model, name, width, fallback)
            if size is not None:
                size *= _queries_per_kv_head(model, name, width // size, config)
                units.append(Unit(name, "input", size))
                heads = True
        else:
            units.append(Unit(name, "input", 1))
    return units if heads or config is not None else []


def unit_kind(key: str) -> str:
    """The kind of the units under a scores key, by the module's name and side (:data:`UNIT_KINDS`):
    ``"heads"`` / ``"neurons"`` for the input of a projection :data:`UNIT_RULES` recognises, ``"experts"``,
    ``"inputs"`` for other input-side units, ``"channels"`` for output channels (convolutional nets)."""
    name, side = split_key(key)
    if side == "experts":
        return "experts"
    if side == "output":
        return "channels"
    rule = next((r for r in UNIT_RULES if re.search(r.pattern, name)), None)
    return "inputs" if rule is None else {"head": "heads", "neuron": "neurons"}[rule.unit]


def is_transformer(model: nn.Module) -> bool:
    return hf_config(model) is not None


def is_causal_lm(model: nn.Module) -> bool:
    """Hugging Face causal language models (also inside a wrapper): labels are shifted by one position."""
    for module in model.modules():
        name = type(module).__name__
        if getattr(module, "config", None) is not None and ("CausalLM" in name or name.endswith("LMHeadModel")):
            return True
    return False
