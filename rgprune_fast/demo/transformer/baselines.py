"""The baselines, scored on the same units and the same scoring batches as ``rg.score``:

* ``random``: uniform random scores (a fixed seed per unit group).
* ``weight``: the L2 norm of the unit's input columns of the output projection (``attention.output.dense``
  for a head's ``head_dim`` columns, ``output.dense`` for a neuron's one column).
* ``activation``: mean ``|x|`` of the unit's channels at that projection's input, over the non-padding
  tokens (and over the unit's channels).
* ``wanda``: Wanda's ``|W_ij| · ‖x_j‖₂`` summed over the unit's columns ``j`` and every row ``i``
  (``‖x_j‖₂`` over every non-padding token of the scoring set).
* ``llm_pruner``: LLM-Pruner's first-order "vector-wise" group importance ``|Σ_{w ∈ group} w · ∂L/∂w|``
  per batch, summed over the batches. The group is every parameter removed with the unit: a head's rows
  of ``query``/``key``/``value`` (weights and biases) and its columns of ``attention.output.dense``; a
  neuron's row of ``intermediate.dense`` (weight and bias) and its column of ``output.dense``. The
  label-free loss is ``L = Σ_n ⟨e_n, r_n⟩``, with ``r_n`` the very random unit vectors ``rg.score``
  backpropagates with the same seed (N(0, 1), normalised per example): the two scorers see the same
  label-free signal and differ only in where the Taylor products are taken (weight groups vs. the unit's
  activations) and how they are pooled (``|sum over a batch|`` vs. per-example square or absolute value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...engine.gradients import normalize_rows, random_gradient
from ...engine.model_state import preserved
from .units import UnitGroup, unit_groups

Batches = Sequence[dict[str, torch.Tensor]]
Scores = dict[str, torch.Tensor]


def random_scores(model: nn.Module, *, seed: int = 0) -> Scores:
    """Uniform random scores, one generator for all groups in ``unit_groups`` order."""
    g = torch.Generator().manual_seed(seed)
    return {
        group.key: torch.rand(group.units, generator=g, dtype=torch.float64).float() for group in unit_groups(model)
    }


@torch.no_grad()
def weight_scores(model: nn.Module) -> Scores:
    """The L2 norm of each unit's input columns of its output projection."""
    out = {}
    for group in unit_groups(model):
        w = group.out_proj.weight.detach().double()  # [out, in]
        out[group.key] = w.view(w.shape[0], group.units, group.channels_per_unit).pow(2).sum((0, 2)).sqrt().float()
    return out


@torch.no_grad()
def input_statistics(model: nn.Module, batches: Batches) -> dict[str, dict[str, torch.Tensor]]:
    """Per group, per input channel of its output projection: ``abs`` = Σ|x|, ``sq`` = Σx² over the
    non-padding tokens of every batch, and ``tokens`` (float64)."""
    groups = unit_groups(model)
    stats = {
        g.key: {"abs": torch.zeros(g.out_proj.in_features, dtype=torch.float64), "sq": None, "tokens": None}
        for g in groups
    }
    for key in stats:
        stats[key]["sq"] = torch.zeros_like(stats[key]["abs"])
    current: dict[str, torch.Tensor] = {}

    def hook_for(key: str) -> Callable:
        def hook(module, args):
            x = args[0].detach().double()  # [N, T, C]
            keep = current["mask"].to(x.device).bool()
            tokens = x[keep]  # [tokens, C]
            stats[key]["abs"] += tokens.abs().sum(0).cpu()
            stats[key]["sq"] += tokens.pow(2).sum(0).cpu()

        return hook

    handles = [g.out_proj.register_forward_pre_hook(hook_for(g.key)) for g in groups]
    count = 0
    try:
        with preserved(model):
            model.eval()
            for batch in batches:
                current["mask"] = batch["attention_mask"]
                count += int(batch["attention_mask"].sum())
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    for key in stats:
        stats[key]["tokens"] = torch.tensor(float(count), dtype=torch.float64)
    return stats


def activation_scores(model: nn.Module, stats: dict[str, dict[str, torch.Tensor]]) -> Scores:
    """Mean |x| over the non-padding tokens and over the unit's channels."""
    out = {}
    for group in unit_groups(model):
        s = stats[group.key]
        mean_abs = s["abs"] / s["tokens"]
        out[group.key] = mean_abs.view(group.units, group.channels_per_unit).mean(1).float()
    return out


@torch.no_grad()
def wanda_scores(model: nn.Module, stats: dict[str, dict[str, torch.Tensor]]) -> Scores:
    """Σ over the unit's columns j of (Σ_i |W_ij|) · ‖x_j‖₂."""
    out = {}
    for group in unit_groups(model):
        column_abs = group.out_proj.weight.detach().double().abs().sum(0)  # [in]
        x_norm = stats[group.key]["sq"].sqrt()
        out[group.key] = (column_abs * x_norm).view(group.units, group.channels_per_unit).sum(1).float()
    return out


def _group_parameters(group: UnitGroup) -> list[tuple[torch.Tensor, str]]:
    """The group's parameters and how their units are laid out: ``"columns"`` (the output
    projection's weight) or ``"rows"`` (weights and biases of the producing Linears)."""
    found = [(group.out_proj.weight, "columns")]
    for linear in group.in_projs:
        found.append((linear.weight, "rows"))
        if linear.bias is not None:
            found.append((linear.bias, "rows"))
    return found


def _group_products(group: UnitGroup) -> torch.Tensor:
    """``Σ_{w ∈ unit's group} w · grad(w)`` for every unit of ``group`` (float64)."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for param, layout in _group_parameters(group):
        product = (param.detach().double() * param.grad.double()).cpu()
        if layout == "columns":
            total += product.view(product.shape[0], group.units, group.channels_per_unit).sum((0, 2))
        else:
            total += product.reshape(group.units, -1).sum(1)
    return total


def llm_pruner_scores(model: nn.Module, batches: Batches, *, seed: int = 0) -> Scores:
    """LLM-Pruner's first-order group importance with the label-free loss ``Σ_n ⟨e_n, r_n⟩`` (module
    docstring). The model is left as found (training flags, ``requires_grad``, ``.grad``)."""
    groups = unit_groups(model)
    params = [p for g in groups for p, _ in _group_parameters(g)]
    out = {g.key: torch.zeros(g.units, dtype=torch.float64) for g in groups}
    generator = None
    with preserved(model), torch.enable_grad():  # preserved: training flags, requires_grad and .grad restored
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            embeddings = model(**batch)
            if generator is None:
                generator = torch.Generator(device=embeddings.device).manual_seed(seed)
            r = normalize_rows(random_gradient(embeddings, generator)).to(embeddings.dtype)
            (embeddings * r).sum().backward()
            for g in groups:
                out[g.key] += _group_products(g).abs()
            for p in params:
                p.grad = None
    return {k: v.float() for k, v in out.items()}


def all_baselines(model: nn.Module, batches: Batches, *, seed: int = 0) -> dict[str, Scores]:
    """``{scorer name: scores}`` for every baseline."""
    stats = input_statistics(model, batches)
    return {
        "random": random_scores(model, seed=seed),
        "weight": weight_scores(model),
        "activation": activation_scores(model, stats),
        "wanda": wanda_scores(model, stats),
        "llm_pruner": llm_pruner_scores(model, batches, seed=seed),
    }
