"""The prunable units of a BERT encoder, named as ``rg.score`` names them, with the weights that belong
to each: an attention head is ``head_dim`` input columns of ``attention.output.dense`` (and the rows of
``query``/``key``/``value`` that produce them); an MLP neuron is one input column of ``output.dense``
(and the row of ``intermediate.dense`` that produces it)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

HEADS, NEURONS = "heads", "neurons"


@dataclass(frozen=True)
class UnitGroup:
    """The units at one module's input: ``key`` as in ``rg.score``'s results."""

    key: str  # "bert.encoder.layer.3.attention.output.dense:input"
    kind: str  # HEADS | NEURONS
    layer: int
    out_proj: nn.Linear  # the unit's channels are input columns of this Linear
    in_projs: tuple[nn.Linear, ...]  # Linears whose output rows produce those channels
    channels_per_unit: int  # head_dim for heads, 1 for neurons

    @property
    def units(self) -> int:
        return self.out_proj.in_features // self.channels_per_unit


def bert_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (name, ModuleList) of the BERT layers inside ``model`` (a BertModel, or a module holding one)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and hasattr(module[0], "intermediate"):
            return name, module
    raise ValueError("no BERT encoder layers (…encoder.layer.N.attention) in the model")


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Every layer's heads, then its neurons, layer by layer (``rg.score``'s order)."""
    prefix, layers = bert_layers(model)
    groups = []
    for i, layer in enumerate(layers):
        attention = layer.attention
        heads = attention.self.num_attention_heads
        head_dim = attention.self.attention_head_size
        base = f"{prefix}.{i}"
        qkv = (attention.self.query, attention.self.key, attention.self.value)
        groups.append(
            UnitGroup(f"{base}.attention.output.dense:input", HEADS, i, attention.output.dense, qkv, head_dim)
        )
        groups.append(
            UnitGroup(f"{base}.output.dense:input", NEURONS, i, layer.output.dense, (layer.intermediate.dense,), 1)
        )
        if groups[-2].units != heads:
            raise ValueError(f"layer {i}: {groups[-2].units} heads at the output projection, {heads} in the attention")
    return groups


def kind_of(key: str) -> str:
    """``"heads"`` or ``"neurons"`` for a score key of a BERT encoder."""
    return HEADS if ".attention." in key else NEURONS


def of_kind(scores: dict, kind: str) -> dict:
    """The entries of ``scores`` that hold units of ``kind``."""
    return {k: v for k, v in scores.items() if kind_of(k) == kind}


def params_per_unit(group: UnitGroup) -> int:
    """Parameters removed with one unit: its columns of the output projection, its rows (and biases) of
    the producing Linears."""
    columns = group.out_proj.out_features * group.channels_per_unit
    rows = sum((linear.in_features + (linear.bias is not None)) * group.channels_per_unit for linear in group.in_projs)
    return columns + rows


def pruned_params(model: nn.Module, keep: dict) -> int:
    """Parameters that slicing the units ``keep`` marks False out of ``model`` removes."""
    by_key = {g.key: g for g in unit_groups(model)}
    return sum(int((~mask).sum()) * params_per_unit(by_key[key]) for key, mask in keep.items())
