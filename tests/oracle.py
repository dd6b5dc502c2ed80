"""Float64 brute-force oracle of whole scoring calls, independent of the taps (docs/design.md, "The mathematics").

Forward hooks capture every call's output of each scored module and hand a *clone* downstream, so
in-place ops cannot touch the captured tensor; ``torch.autograd.grad`` gives ``dx`` for the captured
outputs (and the weight gradients for ``molchanov_group``); criteria come straight from the definitions.

``dtype=torch.float64`` (default) runs a float64 copy of the model: the exact value of the criteria.
``dtype=None`` keeps the model's own dtype for forward and backward, and only the reductions and
criteria are float64: the reference for a scorer run on the same model in float32, free of the model's
own rounding (deep float32 nets drift from their float64 twins by far more than 1e-5).
"""

from __future__ import annotations

import copy

import reference
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

CHANNEL_FIRST = (_BatchNorm, _ConvNd, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _channel_dim(module, x):
    return 1 if isinstance(module, CHANNEL_FIRST) else x.dim() - 1


def _output_gradient(y, targets, raw_batch, gradient, normalize, generator):
    y = y.double()
    if gradient == "label":
        g = torch.softmax(y.detach(), -1)
        keep = targets != -100
        onehot = torch.nn.functional.one_hot(torch.where(keep, targets, 0), y.shape[-1]).double()
        g = (g - onehot) * keep.unsqueeze(-1)
    elif gradient == "random":
        g = torch.randn(y.shape, generator=generator, dtype=torch.float32).double()
    else:
        g = gradient(y.detach(), raw_batch).double()
    if normalize:
        g = g / (g.norm(dim=-1, keepdim=True) + 1e-12)
    return g


def _group_params(model, names, batch_inputs):
    """Weights of the Conv/Linear producing each scored module's input (own affine params otherwise)."""
    made, fed_from, handles = [], {}, []  # made: (output tensor, conv/linear name); kept alive

    def producer(t):
        return next((n for out, n in made if out is t), None)

    for name, m in model.named_modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            handles.append(m.register_forward_hook(lambda mod, a, out, n=name: made.append((out, n))))
        if name in names:
            handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: fed_from.__setitem__(n, producer(a[0]))))
    with torch.no_grad():
        _call(model, batch_inputs)
    for h in handles:
        h.remove()
    groups = {}
    for name in names:
        m = model.get_submodule(name)
        owner = (
            m
            if isinstance(m, (_ConvNd, nn.Linear))
            else (model.get_submodule(fed_from[name]) if fed_from.get(name) else m)
        )
        groups[name] = [(p, 0) for p in (owner.weight, owner.bias) if p is not None]
    return groups


def _spec(entry):
    """(key, module name, side, group) of a names entry: a module name or an ``rg.Unit``."""
    if isinstance(entry, str):
        return entry, entry, "output", 1
    return entry.key, entry.name, entry.side, entry.channels_per_unit


def _input_weights(module):
    """Weights reading input channel c: Linear/Conv weight dim 1, transformers' Conv1D weight dim 0."""
    return [(module.weight, 0 if type(module).__name__ == "Conv1D" else 1)]


def _call(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def _cast(inputs, dtype):
    if isinstance(inputs, dict):
        return {k: _cast(v, dtype) for k, v in inputs.items()}
    return inputs.to(dtype) if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() else inputs


def oracle_scores(
    model, batches, names, methods, gradient="random", normalize=True, seed=0, dtype=torch.float64, shift=False
):
    """``{method: {key: float64 tensor}}`` for ``batches`` of ``(inputs, targets)`` (inputs: a tensor or a
    dict of model kwargs). ``names``: module names (output units) or ``rg.Unit`` specs. ``shift``: causal
    LM labels (position t predicts target t + 1)."""
    model = copy.deepcopy(model).eval()
    if dtype is not None:
        model = model.to(dtype)
    model_dtype = next(model.parameters()).dtype
    batches = [(_cast(x, model_dtype), t) for x, t in batches]
    for p in model.parameters():
        p.requires_grad_(True)
    specs = [_spec(e) for e in names]
    generator = torch.Generator().manual_seed(seed)
    output_names = [name for _, name, side, _ in specs if side == "output"]
    producers = _group_params(model, output_names, batches[0][0]) if "molchanov_group" in methods else {}
    groups = {}
    if "molchanov_group" in methods:
        for key, name, side, _ in specs:
            groups[key] = producers[name] if side == "output" else _input_weights(model.get_submodule(name))
    s_rows, group_rows = {k: [] for k, *_ in specs}, {k: [] for k, *_ in specs}
    for inputs, targets in batches:
        captured = {k: [] for k, *_ in specs}
        handles = []
        for key, name, side, _ in specs:
            module = model.get_submodule(name)
            if side == "output":

                def hook(module, args, out, key=key, captured=captured):
                    captured[key].append((module, out))
                    return out.clone()

                handles.append(module.register_forward_hook(hook))
            else:

                def pre_hook(module, args, key=key, captured=captured):
                    copy_ = args[0].clone()  # its gradient: through this module only
                    captured[key].append((None, copy_))
                    return (copy_, *args[1:])

                handles.append(module.register_forward_pre_hook(pre_hook))
        y = _call(model, inputs)
        for h in handles:
            h.remove()
        if gradient == "label" and shift:
            shifted = torch.full_like(targets, -100)
            shifted[:, :-1] = targets[:, 1:]
            targets = shifted
        g = _output_gradient(y, targets, (inputs, targets), gradient, normalize, generator)
        outs = [out for k, *_ in specs for _, out in captured[k]]
        params = [p for k, *_ in specs for p, _ in groups.get(k, [])]
        grads = torch.autograd.grad(y, outs + params, g.to(y.dtype), allow_unused=True)
        dx_iter, dp_iter = iter(grads[: len(outs)]), iter(grads[len(outs) :])
        for key, _, _, size in specs:
            s = 0
            for module, x in captured[key]:
                dx = next(dx_iter)
                x, dx = x.double(), (torch.zeros_like(x) if dx is None else dx).double()
                cdim = _channel_dim(module, x) if module is not None else x.dim() - 1
                s = s + reference.channel_stats(x, dx, cdim)
            s_rows[key].append(s.view(s.shape[0], -1, size).sum(-1))
            if key in groups:
                term = 0
                for p, dim in groups[key]:
                    dp = next(dp_iter)
                    contrib = (p.detach().double() * dp.double()).square()
                    term = term + contrib.movedim(dim, 0).reshape(p.shape[dim], -1).sum(1)
                group_rows[key].append(term.view(-1, size).sum(-1))
    out = {}
    for method in methods:
        out[method] = {}
        for key, *_ in specs:
            s_all = torch.cat(s_rows[key])
            if method == "taylorfo":
                v = s_all.mean(0).abs()
            elif method == "taylorfo_abs":
                v = s_all.abs().mean(0)
            elif method == "taylorfo_sq":
                v = s_all.square().mean(0)
            elif method == "molchanov_bn":
                v = torch.stack([b.sum(0).square() for b in s_rows[key]]).mean(0)
            elif method == "molchanov_group":
                v = torch.stack(group_rows[key]).mean(0)
            else:
                raise ValueError(method)
            out[method][key] = v
    return out
