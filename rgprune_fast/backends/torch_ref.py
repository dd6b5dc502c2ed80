"""Pure-PyTorch backend: the reference every fused backend is tested against and falls back to.

Works on any device, layout (NCHW, channels_last, ``[N, C]``, ``[N, T, C]``, arbitrary strides) and
dtype; products and sums are formed in the statistics dtype (float32, or float64 for float64 input).
"""

from __future__ import annotations

import torch

from .contract import ReductionBackend, RunningSums, stat_dtype


def _reduce_positions(prod: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Sum over every dim except 0 (example) and ``channel_dim``: ``[N, C]``."""
    dims = [d for d in range(1, prod.dim()) if d != channel_dim]
    return prod.sum(dim=dims) if dims else prod


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``[C]`` vector viewed to broadcast against ``[N, C, *spatial]``."""
    return v.view([1, -1] + [1] * (ndim - 2))


class TorchBackend(ReductionBackend):
    name = "torch"

    def channel_stats(self, x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
        acc = stat_dtype(x.dtype)
        return _reduce_positions(x.to(acc) * dx.to(acc), channel_dim)

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        acc = stat_dtype(z.dtype)
        scale_b = _per_channel(scale, z.dim())
        dy_acc = dy.to(acc)
        # Centred first, so that a large running mean does not cancel against the shift term.
        centred = z.to(acc) - _per_channel(mean, z.dim())
        s = scale * _reduce_positions(centred * dy_acc, 1) + shift * _reduce_positions(dy_acc, 1)
        dz = (dy_acc * scale_b).to(dy.dtype) if need_dz else None
        return dz, s

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        mask = r > 0
        if upper is not None:
            mask = mask & (r < upper)
        dx = torch.where(mask, dr, torch.zeros((), dtype=dr.dtype, device=dr.device))
        return (dx if need_dx else None), self.channel_stats(r, dx, channel_dim)

    def fold_criteria(self, s: torch.Tensor, batch: int, sums: RunningSums) -> None:
        batch_sum = s.sum(0)  # any NaN/Inf in s makes its column sum non-finite
        sums.first_bad.copy_(torch.where((sums.first_bad < 0) & ~torch.isfinite(batch_sum), batch, sums.first_bad))
        sums.s += batch_sum
        if sums.abs is not None:
            sums.abs += s.abs().sum(0)
        if sums.sq is not None:
            sums.sq += s.square().sum(0)
        if sums.batch_sq is not None:
            sums.batch_sq += batch_sum.square()


def load(device: torch.device) -> TorchBackend:
    """The torch backend serves every device."""
    return TorchBackend()
