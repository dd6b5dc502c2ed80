"""Brute-force oracle for one batch of any model, by the definition ``s[n, c] = sum over every position
of example n of x * dx``, without assuming where example n's rows are.

Which rows of a scored tensor belong to example n comes from a backward pass of example n's output
gradient alone (the other examples' set to zero): the rows where ``dx`` is not zero, whatever reshape,
window partition or expert routing put them there (a row reached by two examples fails the oracle).
``s[n]`` then sums ``x * dx`` of the full batch's backward (the scorer's numerics) over example n's
rows. Expert neurons come from the expert weights' gradient in example n's backward. Scored tensors are
captured by forward hooks that hand a *clone* downstream (in-place ops cannot touch the original). A unit whose
module is never called, because its parent applies it through its weights (``F.linear(x, proj.weight)``:
``via``), is recovered from the parent's output ``o = a W^T + b``: ``a = (o - b) W^-T`` and
``da = do W``, solved in float64. Reductions and criteria are float64; ``dtype=None`` keeps the model's
own dtype for forward and backward (the reference for a scorer run on that model), ``torch.float64``
runs a float64 copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

CHANNEL_FIRST = (_BatchNorm, _ConvNd, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass(frozen=True)
class Spec:
    key: str
    name: str  # the module
    side: str  # "output" | "input"
    units: int  # scores expected: channels // units channels per unit
    via: str | None = None  # input of ``name`` recovered from the output of this parent module


def call(model, inputs):
    """The scored output (logits, else an encoder's first output) and whether it is the logits."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out, True
    if getattr(out, "logits", None) is not None:
        return out.logits, True
    if isinstance(out, dict):
        return next(iter(out.values())), False
    return out[0], True


def _cast(inputs, dtype):
    if isinstance(inputs, dict):
        return {k: _cast(v, dtype) for k, v in inputs.items()}
    return inputs.to(dtype) if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() else inputs


def output_gradient(y, is_logits, inputs, targets, gradient, shift):
    """``g`` as the scorer forms it: label (softmax - onehot, -100 ignored, causal shift) or a callable;
    rows normalised; hidden-state outputs: zero at padding positions."""
    if gradient == "label":
        if shift:
            shifted = torch.full_like(targets, -100)
            shifted[:, :-1] = targets[:, 1:]
            targets = shifted
        keep = targets != -100
        g = torch.softmax(y.detach().double(), -1)
        g = (g - nn.functional.one_hot(torch.where(keep, targets, 0), y.shape[-1]).double()) * keep.unsqueeze(-1)
    else:
        g = gradient(y.detach(), None).double()
    g = g / (g.norm(dim=-1, keepdim=True) + 1e-12)
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if not is_logits and mask is not None and y.dim() >= 3 and tuple(mask.shape) == tuple(y.shape[:2]):
        g = g * mask.double().view(*mask.shape, *[1] * (y.dim() - 2))
    return g


def _tracked(t: torch.Tensor) -> torch.Tensor:
    """``t``, made part of the graph if nothing before it requires grad (parameters are frozen)."""
    return t if t.requires_grad else t.requires_grad_(True)


def _producer_weights(model, specs, inputs):
    """molchanov_group's W_c: the Conv/Linear whose output feeds each output-side unit's module (its
    own weights if it is one); an input unit: the weights that read each input channel."""
    made, fed, handles = [], {}, []
    for name, m in model.named_modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            handles.append(m.register_forward_hook(lambda mod, a, out, n=name: made.append((out, n))))
    for spec in specs:
        if spec.side == "output":
            m = model.get_submodule(spec.name)
            hook = lambda mod, a, n=spec.name: fed.__setitem__(n, next((k for o, k in made if o is a[0]), None))  # noqa: E731
            handles.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        call(model, inputs)
    for h in handles:
        h.remove()
    weights = {}
    for spec in specs:
        m = model.get_submodule(spec.name)
        if spec.side == "experts":
            weights[spec.key] = [(m.down_proj, (0, 2))]
            continue
        if spec.side == "input":
            weights[spec.key] = [(m.weight, 0 if type(m).__name__ == "Conv1D" else 1)]
            continue
        owner = m
        if not isinstance(m, (_ConvNd, nn.Linear)) and fed.get(spec.name):
            owner = model.get_submodule(fed[spec.name])
        weights[spec.key] = [(p, 0) for p in (owner.weight, owner.bias) if p is not None]
    return weights


def oracle_by_example(model, inputs, targets, specs, methods, gradient, dtype=None, shift=False, with_scale=False):
    """``{method: {key: float64 tensor}}`` for one batch (``inputs``: a tensor or a dict of kwargs); with
    ``with_scale``, also the same criteria of ``sum |x * dx|`` (the scale of the rounding error)."""
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        return _oracle(model.eval(), inputs, targets, specs, methods, gradient, shift, with_scale)
    finally:
        for h in _HOOKS:
            h.remove()
        _HOOKS.clear()
        for p, flag in flags:
            p.requires_grad_(flag)


_HOOKS: list = []


def _oracle(model, inputs, targets, specs, methods, gradient, shift, with_scale):
    inputs = _cast(inputs, next(model.parameters()).dtype)
    # Only the weights whose gradients are needed require grad, as when scoring: PyTorch's own backward
    # may take another path (and round differently) when parameters require grad.
    for p in model.parameters():
        p.requires_grad_(False)
    weights = _producer_weights(model, specs, inputs) if "molchanov_group" in methods else {}
    for spec in specs:
        if spec.side == "experts":
            model.get_submodule(spec.name).down_proj.requires_grad_(True)
    for pairs in weights.values():
        for p, _ in pairs:
            p.requires_grad_(True)
    captured = {s.key: [] for s in specs}
    handles = _HOOKS  # removed by oracle_by_example, also when the forward raises
    for spec in specs:
        module = model.get_submodule(spec.via or spec.name)
        if spec.side == "experts":
            continue  # from the gradient of the experts' down projection (below)
        if spec.via:

            def hook(module, args, out, spec=spec):
                first = _tracked(out[0] if isinstance(out, tuple) else out)
                captured[spec.key].append(first)  # the original; downstream gets a copy to modify
                return (first.clone(), *out[1:]) if isinstance(out, tuple) else first.clone()

            handles.append(module.register_forward_hook(hook))
        elif spec.side == "output":

            def hook(module, args, out, spec=spec):
                captured[spec.key].append(_tracked(out))  # the original; downstream gets a copy to modify
                return out.clone()

            handles.append(module.register_forward_hook(hook))
        else:

            def pre_hook(module, args, spec=spec):
                copy_ = _tracked(args[0].clone())
                captured[spec.key].append(copy_)
                return (copy_, *args[1:])

            handles.append(module.register_forward_pre_hook(pre_hook))
    y, is_logits = call(model, inputs)
    for h in handles:
        h.remove()
    g = output_gradient(y, is_logits, inputs, targets, gradient, shift).to(y.dtype)
    tensors = [t for s in specs for t in captured[s.key]]
    down = [model.get_submodule(s.name).down_proj for s in specs if s.side == "experts"]
    rows = {s.key: [] for s in specs}
    full = torch.autograd.grad(y, tensors, g, retain_graph=True, allow_unused=True) if tensors else ()
    full = [torch.zeros_like(x) if dx is None else dx for x, dx in zip(tensors, full)]
    owned = [torch.zeros(x.shape[0], y.shape[0], dtype=torch.bool) for x in tensors]  # [row, example]
    down_grads = []
    plain = not down and all(x.shape[0] == y.shape[0] for x in tensors)
    if plain:  # every row n is example n's (dim 0 is the batch): no per-example backward needed
        owned = [torch.eye(y.shape[0], dtype=torch.bool) for _ in tensors]
    for n in range(0 if plain else y.shape[0]):
        g_n = torch.zeros_like(g)
        g_n[n] = g[n]
        grads = torch.autograd.grad(y, tensors + down, g_n, retain_graph=True, allow_unused=True)
        for i, dx in enumerate(grads[: len(tensors)]):
            if dx is not None:  # the rows example n's gradient reaches are example n's
                owned[i][:, n] = dx.reshape(dx.shape[0], -1).ne(0).any(1)
        down_grads.append(grads[len(tensors) :])
    for rows_owned in owned:
        assert rows_owned.sum(1).le(1).all(), "a row of a scored tensor depends on several examples"
    index = 0
    for spec in specs:
        module = model.get_submodule(spec.name)
        if spec.side == "experts":
            # neuron i of expert e feeds only column [e, :, i] of down_proj [E, H, I]: the sum over tokens
            # of h * dh is the sum over H of W * dL/dW, per example from example n's backward alone
            k = [s.key for s in specs if s.side == "experts"].index(spec.key)
            for n in range(y.shape[0]):
                dw = down_grads[n][k]
                w = module.down_proj
                dw = torch.zeros_like(w) if dw is None else dw
                prod = w.detach().double() * dw.double()
                rows[spec.key].append(torch.stack([prod.sum(1).reshape(-1), prod.abs().sum(1).reshape(-1)]))
            continue
        per_example = 0
        for x in captured[spec.key]:
            dx, mine = full[index], owned[index].double()  # the batched backward, as the scorer runs it
            index += 1
            if spec.via:
                w, b = module.weight.double(), module.bias.double() if module.bias is not None else 0
                o = x.double().reshape(x.shape[0], -1, x.shape[-1])
                a = torch.linalg.solve(w, (o - b).reshape(-1, x.shape[-1]).T).T.reshape(o.shape)  # o = a W^T + b
                x, dx, channel = a, dx.double().reshape(o.shape) @ w, -1
            else:
                channel = 1 if spec.side == "output" and isinstance(module, CHANNEL_FIRST) else -1
            prod = (x.double() * dx.double()).movedim(channel, -1)
            prod = prod.reshape(prod.shape[0], -1, prod.shape[-1])  # [rows, positions, C]
            per_row = torch.stack([prod.sum(1), prod.abs().sum(1)], 1)  # [rows, 2, C]
            per_example = per_example + torch.einsum("rn,rkc->nkc", mine, per_row)
        for n in range(y.shape[0]):
            rows[spec.key].append(per_example[n].view(2, spec.units, -1).sum(-1))
    both = {k: torch.stack(v).detach() for k, v in rows.items()}  # [N, 2, units]: s and the sum of |x * dx|
    s_all = {k: v[:, 0] for k, v in both.items()}
    magnitude = {k: v[:, 1] for k, v in both.items()}
    group = {}
    if weights:
        params = [p for s in specs for p, _ in weights[s.key]]
        grads = iter(torch.autograd.grad(y, params, g, allow_unused=True))
        for spec in specs:
            term = 0
            for p, dim in weights[spec.key]:
                dp = next(grads)
                dp = torch.zeros_like(p) if dp is None else dp
                contrib = (p.detach().double() * dp.double()).square()
                dims = dim if isinstance(dim, tuple) else (dim,)
                units = 1
                for d in dims:
                    units *= p.shape[d]
                term = term + contrib.movedim(dims, tuple(range(len(dims)))).reshape(units, -1).sum(1)
            group[spec.key] = term.view(spec.units, -1).sum(-1).detach()
    criteria = {
        "taylorfo": lambda s, key: s.mean(0).abs(),
        "taylorfo_abs": lambda s, key: s.abs().mean(0),
        "taylorfo_sq": lambda s, key: s.square().mean(0),
        "molchanov_bn": lambda s, key: s.sum(0).square(),
        "molchanov_group": lambda s, key: group.get(key),
    }
    scores = {method: {key: criteria[method](s, key) for key, s in s_all.items()} for method in methods}
    if not with_scale:
        return scores
    # What float rounding of the sums scales with: the criteria of sum |x * dx| (s may cancel to ~0).
    scale = {m: {k: criteria[m](v, k) for k, v in magnitude.items()} for m in methods if m != "molchanov_group"}
    return scores, scale
