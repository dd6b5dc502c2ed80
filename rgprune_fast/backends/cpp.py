"""The compiled backends: ``"cpp"`` (CPU kernels) and ``"cuda"`` (CUDA kernels) of ``rgprune_fast._C``.

Both call the same ops (``torch.ops.rgprune_fast.*``, csrc/); the dispatcher picks the CPU or CUDA
implementation from the tensors' device. The kernels take every layout the taps produce (channels
first or last, arbitrary strides; inputs that fit neither layout are copied first, inside the op) and
float32/float64/float16/bfloat16. Calls the kernels do not cover (inputs of two different dtypes or
devices, other dtypes) are served by the pure-PyTorch reference, whose results they match.
"""

from __future__ import annotations

import torch

from .. import _ext
from ..errors import BackendUnavailableError
from .base import stat_dtype
from .torch_ref import TorchBackend

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REFERENCE = TorchBackend()


def _kernels_take(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.dtype in _KERNEL_DTYPES
        and a.device == b.device
        and a.shape == b.shape
        and a.dim() >= 2
    )


class ExtensionBackend:
    """The reduction contract (backends/base.py) on the ops of ``rgprune_fast._C``."""

    def __init__(self, name: str):
        self.name = name
        ops = torch.ops.rgprune_fast
        self._channel_stats = ops.channel_stats.default
        self._batchnorm_stats = ops.batchnorm_stats.default
        self._relu_stats = ops.relu_stats.default

    def channel_stats(self, x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if not _kernels_take(x, dx):
            return _REFERENCE.channel_stats(x, dx, channel_dim)
        return self._channel_stats(x, dx, channel_dim)

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        if not _kernels_take(z, dy):
            return _REFERENCE.batchnorm_stats(z, dy, mean, scale, shift, need_dz)
        acc = stat_dtype(z.dtype)
        mean, scale, shift = (v.to(device=z.device, dtype=acc).contiguous() for v in (mean, scale, shift))
        dz, s = self._batchnorm_stats(z, dy, mean, scale, shift, need_dz)
        return (dz if need_dz else None), s

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        if not _kernels_take(r, dr):
            return _REFERENCE.relu_stats(r, dr, upper, channel_dim, need_dx)
        dx, s = self._relu_stats(r, dr, None if upper is None else float(upper), channel_dim, need_dx)
        return (dx if need_dx else None), s


def load(device: torch.device) -> ExtensionBackend:
    """The C++ kernels, for CPU tensors."""
    device = torch.device(device)
    if device.type != "cpu":
        raise BackendUnavailableError(
            f"backend 'cpp' cannot score on {device}: it runs the CPU kernels of rgprune_fast._C; use "
            "backend='cuda' (or 'auto') for CUDA tensors"
        )
    try:
        _ext.load()
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"backend 'cpp' cannot score on {device}: {e}") from None
    return ExtensionBackend("cpp")
