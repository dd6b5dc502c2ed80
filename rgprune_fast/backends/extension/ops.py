"""The ops of the compiled extension as a backend, next to their fake (meta) implementations.

The C++ side (``csrc/bindings.cpp``) defines ``torch.ops.rgprune_fast.{channel_stats, batchnorm_stats,
relu_stats}``; the dispatcher picks the CPU or CUDA kernels from the tensors' device. The kernels take
every layout the taps produce (channels first or last, arbitrary strides; inputs that fit neither
layout are copied first, inside the op) and float32/float64/float16/bfloat16. Calls the kernels do not
cover (inputs of two different dtypes or devices, other dtypes) and the criteria update are served by
the pure-PyTorch reference, whose results the kernels match.
"""

from __future__ import annotations

import torch

from ..contract import stat_dtype
from ..torch_ref import TorchBackend

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _kernels_take(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.dtype in _KERNEL_DTYPES
        and a.device == b.device
        and a.shape == b.shape
        and a.dim() >= 2
    )


class ExtensionBackend(TorchBackend):
    """The reduction contract on the extension's ops (``"cpp"`` on CPU tensors, ``"cuda"`` on CUDA
    tensors); what the kernels do not cover is left to :class:`TorchBackend`."""

    def __init__(self, name: str):
        self.name = name
        ops = torch.ops.rgprune_fast
        self._channel_stats = ops.channel_stats.default
        self._batchnorm_stats = ops.batchnorm_stats.default
        self._relu_stats = ops.relu_stats.default

    def channel_stats(self, x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if not _kernels_take(x, dx):
            return super().channel_stats(x, dx, channel_dim)
        return self._channel_stats(x, dx, channel_dim)

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        if not _kernels_take(z, dy):
            return super().batchnorm_stats(z, dy, mean, scale, shift, need_dz)
        acc = stat_dtype(z.dtype)
        mean, scale, shift = (v.to(device=z.device, dtype=acc).contiguous() for v in (mean, scale, shift))
        dz, s = self._batchnorm_stats(z, dy, mean, scale, shift, need_dz)
        return (dz if need_dz else None), s

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        if not _kernels_take(r, dr):
            return super().relu_stats(r, dr, upper, channel_dim, need_dx)
        dx, s = self._relu_stats(r, dr, None if upper is None else float(upper), channel_dim, need_dx)
        return (dx if need_dx else None), s


def register_fakes() -> None:
    """Shapes, dtypes and layouts of the ops' outputs, as the C++ implementations produce them (for
    FakeTensor, ``torch.compile`` and ``torch.library.opcheck``)."""

    @torch.library.register_fake("rgprune_fast::channel_stats")
    def _channel_stats(x, dx, channel_dim):
        cd = channel_dim % x.dim()
        return x.new_empty((x.shape[0], x.shape[cd]), dtype=stat_dtype(x.dtype))

    @torch.library.register_fake("rgprune_fast::batchnorm_stats")
    def _batchnorm_stats(z, dy, mean, scale, shift, need_dz):
        s = z.new_empty((z.shape[0], z.shape[1]), dtype=stat_dtype(z.dtype))
        return (torch.empty_like(dy) if need_dz else dy.new_empty((0,))), s

    @torch.library.register_fake("rgprune_fast::relu_stats")
    def _relu_stats(r, dr, upper, channel_dim, need_dx):
        cd = channel_dim % r.dim()
        s = r.new_empty((r.shape[0], r.shape[cd]), dtype=stat_dtype(r.dtype))
        return (torch.empty_like(dr) if need_dx else dr.new_empty((0,))), s
