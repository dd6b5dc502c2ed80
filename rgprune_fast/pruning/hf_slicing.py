"""Physical pruning of Hugging Face transformers: attention heads and MLP neurons are sliced out of the
weights, so the smaller model computes exactly what the masked one computes.

The masks are the default transformer units (engine/transformer_units.py): ``"<module>:input"`` of an
attention output projection (heads) or of an MLP down projection (neurons). The block around the key is
recognised by its structure, not by the model class:

* attention with ``q_proj``/``k_proj``/``v_proj`` next to ``o_proj`` (Llama, Mistral, Qwen2, HF ViT v5),
* attention with a fused ``c_attn`` Conv1D next to ``c_proj`` (GPT-2),
* ``attention.self.{query,key,value}`` with ``attention.output.dense`` (BERT, RoBERTa),
* MLPs ``gate_proj``/``up_proj`` -> ``down_proj``, ``fc1`` -> ``fc2``, ``c_fc`` -> ``c_proj`` (GPT-2), and
  ``intermediate.dense`` -> ``output.dense`` (BERT-style layers).

Grouped-query attention: the query heads kept must be spread evenly over the surviving key/value groups
(``repeat_kv`` repeats every kv head the same ``num_key_value_groups`` times); groups with no kept query
head lose their key/value rows. A block cannot lose all its heads or neurons: HF attention reshapes with
``-1`` and GPT-2's Conv1D with ``view(-1, features)``, neither of which runs on 0 channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.interrupts import interrupt_safe
from ..errors import UnsupportedModuleError
from .counting import count_params
from .targets import check_unit_size, resolve, static_width

# The attention module's own head attributes (forward uses some; the default units read the others).
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads")


@dataclass
class Block:
    """A recognised attention block or MLP: ``rows`` are the layers whose output rows are the units
    (per head: query rows first, then key/value rows are handled by ``kv``), ``cols`` is the down /
    output projection whose input columns are removed with them."""

    kind: str  # "attention" | "mlp"
    name: str  # the attention / MLP module (for reports and errors)
    module: nn.Module  # the module whose head attributes change ("attention" only)
    out: nn.Module  # output projection: its input columns are the units
    rows: list[nn.Module] = field(default_factory=list)  # query (attention) or gate/up (MLP) layers
    kv: list[nn.Module] = field(default_factory=list)  # key and value layers (attention, unfused)
    fused: nn.Module | None = None  # GPT-2's c_attn: [q | k | v] columns of one Conv1D
    head_dim: int = 1
    units: int = 0  # query heads (attention) or neurons (MLP)
    kv_heads: int = 0


def _is_conv1d(module) -> bool:
    """GPT-2's ``Conv1D`` (weight ``[in, out]``), recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor)


def _width_in(module: nn.Module) -> int:
    return module.weight.shape[0] if _is_conv1d(module) else module.in_features


def _width_out(module: nn.Module) -> int:
    return module.weight.shape[1] if _is_conv1d(module) else module.out_features


def _layer(parent: nn.Module | None, attr: str) -> nn.Module | None:
    module = getattr(parent, attr, None) if parent is not None else None
    return module if isinstance(module, nn.Linear) or _is_conv1d(module) else None


def _int(module: nn.Module, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _foreign(container: nn.Module, layers, widths: set[int]) -> bool:
    """Does ``container`` hold a parameter outside ``layers`` with a dim sized like the units: a per-head
    or per-neuron parameter the slicing would leave stale (attention sinks, a norm over all heads)?"""
    inside = {id(p) for layer in layers for p in layer.parameters()}
    return any(id(p) not in inside and widths.intersection(p.shape) for p in container.parameters())


def _attention(name: str, attn: nn.Module, out: nn.Module, q, k, v, head_dim: int | None) -> Block | None:
    if head_dim is None or any(x is None for x in (q, k, v)):
        return None
    heads, kv_heads = _width_out(q) // head_dim, _width_out(k) // head_dim
    if _width_out(v) != _width_out(k) or _width_in(out) != _width_out(q) or heads * head_dim != _width_out(q):
        return None
    if kv_heads == 0 or heads % kv_heads or kv_heads * head_dim != _width_out(k):
        return None
    groups = getattr(attn, "num_key_value_groups", None)
    if groups is not None and groups != heads // kv_heads:
        return None  # the module's attributes do not describe its weights: not a layout we know
    if _foreign(attn, (q, k, v, out), {heads, kv_heads, heads * head_dim, kv_heads * head_dim} - {head_dim}):
        return None  # per-head norms over head_dim (Qwen3's q_norm) are fine: they do not see other heads
    return Block("attention", name, attn, out, [q], [k, v], None, head_dim, heads, kv_heads)


def find_block(model: nn.Module, name: str) -> Block | None:
    """The attention block or MLP whose output / down projection is module ``name``, or ``None``."""
    out = model.get_submodule(name)
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    grand_name = parent_name.rpartition(".")[0]
    grand = model.get_submodule(grand_name) if parent_name else None
    if leaf == "o_proj" and isinstance(out, nn.Linear):  # Llama / Mistral / Qwen2 / ViT (v5)
        q, k, v = (_layer(parent, a) for a in ("q_proj", "k_proj", "v_proj"))
        return _attention(parent_name, parent, out, q, k, v, _int(parent, "head_dim"))
    if leaf == "dense" and grand is not None and getattr(grand, "output", None) is parent:
        own = getattr(grand, "self", None)  # BERT / RoBERTa: attention.self + attention.output
        if own is not None:
            q, k, v = (_layer(own, a) for a in ("query", "key", "value"))
            block = _attention(grand_name, own, out, q, k, v, _int(own, "attention_head_size"))
            return block if block is None or block.units == block.kv_heads else None
        intermediate = getattr(grand, "intermediate", None)
        up = _layer(intermediate, "dense")  # BERT-style layer.N.output.dense
        if up is not None and _width_out(up) == _width_in(out) and not _foreign(intermediate, [up], {_width_in(out)}):
            return Block("mlp", grand_name, grand, out, [up], units=_width_in(out))
        return None
    c_attn = _layer(parent, "c_attn")
    if leaf == "c_proj" and _is_conv1d(out) and c_attn is not None:  # GPT-2 self-attention
        head_dim, split = _int(parent, "head_dim"), _int(parent, "split_size")
        if head_dim is None or split is None or hasattr(parent, "q_attn") or _width_out(c_attn) != 3 * split:
            return None
        if split % head_dim or _width_in(out) != split:
            return None
        heads = split // head_dim
        if _foreign(parent, (c_attn, out), {heads, split} - {head_dim}):
            return None
        return Block("attention", parent_name, parent, out, [], [], c_attn, head_dim, heads, heads)
    # MLPs: the projection(s) producing the neurons, the first one required (gate_proj is optional)
    ups = {"down_proj": ("up_proj", "gate_proj"), "fc2": ("fc1",), "c_proj": ("c_fc",)}.get(leaf, ())
    rows = [_layer(parent, a) for a in ups]
    if rows and rows[0] is not None:
        rows = [r for r in rows if r is not None]
        if all(_width_out(r) == _width_in(out) for r in rows) and not _foreign(parent, [*rows, out], {_width_in(out)}):
            return Block("mlp", parent_name, parent, out, rows, units=_width_in(out))
    return None


def _parse_key(key) -> str:
    if not isinstance(key, str):
        raise ValueError(f"mask keys must be strings, got {key!r}")
    name, sep, side = key.rpartition(":")
    if sep and side == "experts":
        raise UnsupportedModuleError(
            f"masks[{key!r}]: Mixture-of-Experts neurons cannot be removed physically yet (the experts' 3-D "
            "weights would need per-expert widths); bake_masks() zeroes them"
        )
    if not sep or side != "input":
        raise ValueError(
            f"masks[{key!r}]: physical pruning of transformers takes the default units, keys "
            "'<attention output / MLP down projection>:input'; output-channel masks are not transformer units"
        )
    return name


def _unit_mask(key: str, block: Block, mask) -> torch.Tensor:
    """The mask expanded to one entry per head (attention) or neuron (MLP), checked against ``block``.
    Index work stays on the CPU (also under a ``torch.device("meta")`` context, as in ``from_pretrained``)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(f"masks[{key!r}] must be a 1-D bool tensor (True = keep)")
    width, k = _width_in(block.out), mask.numel()
    if k == 0 or width % k:
        raise ValueError(f"masks[{key!r}] has {k} entries, which do not divide the {width} input channels")
    per_entry = width // k
    if block.kind == "attention" and per_entry % block.head_dim:
        raise ValueError(
            f"masks[{key!r}]: each of its {k} entries covers {per_entry} channels, not whole heads of "
            f"{block.head_dim} channels"
        )
    unit = block.head_dim if block.kind == "attention" else 1
    return mask.detach().cpu().repeat_interleave(per_entry // unit)


def _kv_groups(key: str, block: Block, heads: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The key/value heads kept and the new ``num_key_value_groups``; raises if ``heads`` breaks the rule."""
    n_rep = block.units // block.kv_heads
    per_group = heads.view(block.kv_heads, n_rep).sum(1)
    counts = sorted({int(c) for c in per_group if c > 0})
    if not counts:
        raise ValueError(
            f"masks[{key!r}] removes every head of {block.name!r}; removing a whole attention block is not "
            "supported (keep at least one head)"
        )
    if len(counts) > 1:
        raise ValueError(
            f"masks[{key!r}] keeps {per_group.tolist()} query heads of the {block.kv_heads} key/value groups of "
            f"{block.name!r}: every group that keeps a head must keep the same number (repeat_kv repeats each "
            "key/value head equally); remove whole groups or the same count from each"
        )
    return per_group > 0, counts[0]


def _channels(units: torch.Tensor, size: int) -> torch.Tensor:
    """Channel indices of the kept units of ``size`` channels each."""
    kept = units.nonzero().view(-1)
    return (kept[:, None] * size + torch.arange(size, device=kept.device)).view(-1)


def _set(module: nn.Module, attr: str, data: torch.Tensor) -> None:
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(data.contiguous(), requires_grad=old.requires_grad))


def _keep_rows(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` (Linear weight rows; Conv1D weight columns) and their bias."""
    idx = idx.to(layer.weight.device)
    conv = _is_conv1d(layer)
    _set(layer, "weight", layer.weight.index_select(1 if conv else 0, idx))
    if layer.bias is not None:
        _set(layer, "bias", layer.bias.index_select(0, idx))
    if conv:
        layer.nf = idx.numel()
    else:
        layer.out_features = idx.numel()


def _keep_cols(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` (Linear weight columns; Conv1D weight rows); the bias stays."""
    idx = idx.to(layer.weight.device)
    conv = _is_conv1d(layer)
    _set(layer, "weight", layer.weight.index_select(0 if conv else 1, idx))
    if conv:
        layer.nx = idx.numel()
    else:
        layer.in_features = idx.numel()


def _plan(key: str, block: Block, units: torch.Tensor):
    """A closure applying the slicing (everything checked already) and the block's report entry."""
    if block.kind == "mlp":
        idx = units.nonzero().view(-1)
        if idx.numel() == 0:  # GPT-2's Conv1D cannot run on 0 features (view(-1, 0)); so no MLP may be emptied
            raise ValueError(f"masks[{key!r}] removes every neuron of {block.name!r}; keep at least one")
        report = {"block": block.name, "neurons": idx.numel(), "neurons_before": block.units}

        def apply_mlp():
            for layer in block.rows:
                _keep_rows(layer, idx)
            _keep_cols(block.out, idx)
            if _int(block.module, "intermediate_size") is not None:  # the MLP's own width attribute
                block.module.intermediate_size = idx.numel()

        return apply_mlp, report
    groups, n_rep = _kv_groups(key, block, units)
    q_idx, kv_idx = _channels(units, block.head_dim), _channels(groups, block.head_dim)
    heads, kv_heads = int(units.sum()), int(groups.sum())
    report = {"block": block.name, "heads": heads, "heads_before": block.units, "kv_heads": kv_heads}
    report |= {"kv_heads_before": block.kv_heads, "head_dim": block.head_dim}

    def apply_attention():
        attn = block.module
        if block.fused is not None:  # GPT-2: c_attn columns are [q | k | v], each split_size wide
            split = block.units * block.head_dim
            _keep_rows(block.fused, torch.cat([q_idx, kv_idx + split, kv_idx + 2 * split]))
            attn.split_size = q_idx.numel()
        for layer in block.rows:
            _keep_rows(layer, q_idx)
        for layer in block.kv:
            _keep_rows(layer, kv_idx)
        _keep_cols(block.out, q_idx)
        for attr in _HEAD_COUNT_ATTRS:
            if _int(attn, attr) is not None:
                setattr(attn, attr, heads)
        if _int(attn, "num_key_value_heads") is not None:
            attn.num_key_value_heads = kv_heads
        if _int(attn, "all_head_size") is not None:  # BERT
            attn.all_head_size = q_idx.numel()
        if _int(attn, "num_key_value_groups") is not None:  # read by eager and sdpa attention
            attn.num_key_value_groups = n_rep

    return apply_attention, report


def _unchanged() -> None:
    pass


def _check_kept(model: nn.Module, key, mask: torch.Tensor) -> None:
    """An all-True mask removes nothing, whatever kind of unit it covers: only check that it fits."""
    if not isinstance(key, str):
        raise ValueError(f"mask keys must be strings, got {key!r}")
    target = resolve(model, key)
    width = static_width(target)
    if width is not None:
        check_unit_size(model, key, mask.numel(), width, f"masks[{key!r}]")


def plan_pruning(model: nn.Module, keep: dict) -> list[tuple[str, Block, object, dict]]:
    """Check every mask against the model and return ``(key, block, apply, report)`` per key; nothing
    is changed. Raises ``ValueError`` (bad key, mask, GQA layout) or ``UnsupportedModuleError``."""
    if not isinstance(keep, dict):
        raise ValueError(f"keep must be a dict of masks, got {type(keep).__name__}")
    planned, seen = [], {}
    for key, mask in keep.items():
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == 1 and bool(mask.all()):
            # nothing removed: any unit kind may stay (experts, a hybrid's BatchNorms, blocks of other layouts)
            _check_kept(model, key, mask)
            continue
        name = _parse_key(key)
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"masks[{key!r}] names module {name!r}, which is not in the model") from None
        block = find_block(model, name)
        if block is None:
            raise UnsupportedModuleError(
                f"cannot prune {name!r} physically: it is not the output projection of an attention block or the "
                "down projection of an MLP of a layout rgprune_fast knows (Llama/Mistral/Qwen2, GPT-2, BERT/RoBERTa, "
                "HF ViT); use apply_masks() instead",
                reason="unknown transformer layout",
            )
        if id(block.out) in seen:
            raise ValueError(f"masks[{key!r}] and masks[{seen[id(block.out)]!r}] prune the same module")
        seen[id(block.out)] = key
        units = _unit_mask(key, block, mask)
        apply, report = _plan(key, block, units)
        if bool(units.all()):  # keeping everything leaves the parameters (and optimizer references) alone
            apply = _unchanged
        planned.append((key, block, apply, report))
    return planned


@interrupt_safe
@torch.no_grad()
def prune_transformer(model: nn.Module, keep: dict) -> dict:
    """Remove the masked heads and neurons of a Hugging Face transformer, in place.

    Args:
        model: a Llama/Mistral/Qwen2-style, GPT-2, BERT/RoBERTa or HF ViT model (or one containing them).
        keep: ``{"<module>:input": bool tensor}`` (True = keep), as ``rgprune_fast.pruning.masks`` returns
            for the default transformer units; keys may cover only some layers.

    Returns:
        ``{"layers": {key: {"block": attention / MLP module name, "heads", "heads_before", "kv_heads",
        "kv_heads_before", "head_dim"} or {"block", "neurons", "neurons_before"}}, "params_before": int,
        "params_after": int}``.

    Every block keeps at least one head and one neuron (``ValueError`` otherwise): HF attention reshapes
    with ``-1`` and GPT-2's Conv1D flattens with ``view(-1, features)``, neither of which runs on 0 channels.

    All or nothing: every key is checked before any weight changes (then Ctrl-C waits for the end).
    """
    planned = plan_pruning(model, keep)
    before = count_params(model)
    for _, _, apply, _ in planned:
        apply()
    layers = {key: report for key, _, _, report in planned}
    return {"layers": layers, "params_before": before, "params_after": count_params(model)}


def transformer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """The current width of every recognised block, keyed by its unit key ``"<module>:input"``:
    ``{"heads", "kv_heads", "head_dim"}`` for attention, ``{"neurons"}`` for MLPs (JSON-ready)."""
    widths = {}
    for name, module in model.named_modules():
        if not name or not (isinstance(module, nn.Linear) or _is_conv1d(module)):
            continue
        block = find_block(model, name)
        if block is None:
            continue
        if block.kind == "attention":
            widths[f"{name}:input"] = {"heads": block.units, "kv_heads": block.kv_heads, "head_dim": block.head_dim}
        else:
            widths[f"{name}:input"] = {"neurons": block.units}
    return widths
