"""The tap autograd Functions. Each takes an ``anchor`` (a 0-dim leaf that requires grad, one per
tap) so that its output is part of the graph even when nothing upstream requires grad; backward is run
with ``torch.autograd.grad(..., inputs=anchors)``, so it stops at the first taps and never touches
``.grad``. Each hands its statistic ``s[N, C]`` to ``tap.add``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends.contract import stat_dtype


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view([1, -1] + [1] * (ndim - 2))


class BatchNormTap(torch.autograd.Function):
    """Eval-mode BatchNorm whose backward also yields ``s``; keeps only the BN input ``z``."""

    @staticmethod
    def forward(ctx, z, anchor, weight, bias, module, tap):
        x = F.batch_norm(z, module.running_mean, module.running_var, weight, bias, False, 0.0, module.eps)
        acc = stat_dtype(z.dtype)
        invstd = torch.rsqrt(module.running_var.to(acc) + module.eps)
        ctx.mean = module.running_mean.to(acc)
        ctx.invstd = invstd
        ctx.scale = invstd * weight.detach().to(acc) if weight is not None else invstd
        ctx.shift = bias.detach().to(acc) if bias is not None else torch.zeros_like(invstd)
        ctx.tap, ctx.param_dtype = tap, (weight if weight is not None else bias if bias is not None else z).dtype
        ctx.save_for_backward(z)
        return x

    @staticmethod
    def backward(ctx, dx):
        (z,) = ctx.saved_tensors
        tap = ctx.tap
        dz, s = tap.backend.batchnorm_stats(z, dx, ctx.mean, ctx.scale, ctx.shift, ctx.needs_input_grad[0])
        tap.add(s)
        dweight = dbias = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # Only for molchanov_group on a BatchNorm without a producing Conv/Linear.
            acc, dims = ctx.mean.dtype, [0] + list(range(2, z.dim()))
            dx_acc = dx.to(acc)
            zhat = (z.to(acc) - _per_channel(ctx.mean, z.dim())) * _per_channel(ctx.invstd, z.dim())
            if ctx.needs_input_grad[2]:
                dweight = (zhat * dx_acc).sum(dims).to(ctx.param_dtype)
            if ctx.needs_input_grad[3]:
                dbias = dx_acc.sum(dims).to(ctx.param_dtype)
        return dz, None, dweight, dbias, None, None


class ReluTap(torch.autograd.Function):
    """A fused activation (ReLU, ReLU6, LeakyReLU; in place or not) whose backward also yields ``s`` from
    the saved output ``r`` (``x * dx`` is ``r * dr``, for ReLU6 where ``0 < r < 6``: engine/activations.py)."""

    @staticmethod
    def forward(ctx, x, anchor, form, inplace, tap):
        r = form.forward(x, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.form, ctx.tap = form, tap
        ctx.save_for_backward(r)
        return r

    @staticmethod
    def backward(ctx, dr):
        (r,) = ctx.saved_tensors
        tap, form = ctx.tap, ctx.form
        if form.slope:
            s = tap.backend.channel_stats(r, dr, tap.channel_dim(r))
            dx = form.input_grad(r, dr) if ctx.needs_input_grad[0] else None
        else:
            dx, s = tap.backend.relu_stats(r, dr, form.upper, tap.channel_dim(r), ctx.needs_input_grad[0])
        tap.add(s)
        return dx, None, None, None, None


class GenericTap(torch.autograd.Function):
    """Identity that references (never copies) ``x`` and reduces ``x * dx`` in backward.

    The output is a view of ``x``; the structure probe has checked that nothing writes to it in place.
    """

    @staticmethod
    def forward(ctx, x, anchor, tap):
        ctx.tap = tap
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dx):
        (x,) = ctx.saved_tensors
        tap = ctx.tap
        tap.add(tap.backend.channel_stats(x, dx, tap.channel_dim(x)))
        return dx, None, None


class ExpertTap(torch.autograd.Function):
    """Identity on one expert's neurons ``h [tokens, I]`` that reduces ``h * dh`` in backward into the
    block of that expert in ``s [N, E * I]``, each token's row going to its example."""

    @staticmethod
    def forward(ctx, h, anchor, tap, expert, example_of_row):
        ctx.tap, ctx.expert = tap, expert
        ctx.save_for_backward(h, example_of_row)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, dh):
        h, example_of_row = ctx.saved_tensors
        tap = ctx.tap
        per_row = tap.backend.channel_stats(h, dh, 1)  # [tokens, I]
        block = per_row.new_zeros(tap.examples, per_row.shape[1]).index_add_(0, example_of_row, per_row)
        tap.add_block(ctx.expert * per_row.shape[1], block)
        return dh, None, None, None, None


class FusedInput:
    """What a fused producer of a projection's input ``h`` (below) hands on: ``tap`` is set when the
    projection it feeds takes ``h`` as it is (tapset.py checks the tensor's identity), else ``s`` is not
    reduced and the producer is just its own computation."""

    __slots__ = ("tap",)

    def __init__(self):
        self.tap = None


class ProductTap(torch.autograd.Function):
    """``h = a * u`` (the gated MLP's product) whose backward also yields ``s = Σ h · dh`` from the
    factors the product keeps anyway: ``h · dh = u · du`` with ``du = dh · a`` (engine/fused_inputs.py).
    ``anchors``: those of the taps this product may feed."""

    @staticmethod
    def forward(ctx, a, u, record, *anchors):
        h = torch.mul(a, u)
        ctx.record = record
        ctx.both = a.requires_grad and u.requires_grad
        if ctx.both:
            ctx.save_for_backward(a, u)
        else:  # what the product's own backward keeps, and h for s
            ctx.save_for_backward(a if u.requires_grad else None, u if a.requires_grad else None, h)
        return h

    @staticmethod
    def backward(ctx, dh):
        tap = ctx.record.tap
        if ctx.both:
            a, u = ctx.saved_tensors
            du = dh * a
            da = dh * u if ctx.needs_input_grad[0] else None
            if tap is not None:
                tap.add(tap.backend.channel_stats(u, du, u.dim() - 1))
        else:
            a, u, h = ctx.saved_tensors
            da = dh * u if ctx.needs_input_grad[0] else None
            du = dh * a if ctx.needs_input_grad[1] else None
            if tap is not None:
                tap.add(tap.backend.channel_stats(h, dh, h.dim() - 1))
        return (da, du if ctx.needs_input_grad[1] else None, None) + (None,) * (len(ctx.needs_input_grad) - 3)


class ActivationTap(torch.autograd.Function):
    """An elementwise activation ``h = act(z)`` that keeps only ``z`` (the activation's own backward keeps
    a tensor of that size anyway). Backward recomputes ``h`` for ``s = Σ h · dh`` and frees it before
    ``dz``, which comes from ``grad`` (the activation's own backward kernel) or, without one, from autograd
    on the activation recomputed (engine/fused_inputs.py)."""

    @staticmethod
    def forward(ctx, z, act, grad, record, *anchors):
        h = act(z)
        ctx.act, ctx.grad, ctx.record = act, grad, record
        ctx.save_for_backward(z)
        return h

    @staticmethod
    def backward(ctx, dh):
        (z,) = ctx.saved_tensors
        tap, need = ctx.record.tap, ctx.needs_input_grad[0]
        if tap is not None:
            with torch.no_grad():
                h = ctx.act(z)
                s = tap.backend.channel_stats(h, dh, h.dim() - 1)
            del h
            tap.add(s)
        dz = None
        if need and ctx.grad is not None:
            dz = ctx.grad(z, dh)
        elif need:
            with torch.enable_grad():
                leaf = z.detach().requires_grad_(True)
                dz = torch.autograd.grad(ctx.act(leaf), leaf, dh)[0]
        return (dz, None, None, None) + (None,) * (len(ctx.needs_input_grad) - 4)
