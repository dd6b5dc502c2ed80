"""The Triton backend: fused reductions on CUDA tensors (and, for tests, on CPU under the Triton
interpreter, ``TRITON_INTERPRET=1``, which must be set before this module is imported).

``load(device)`` raises :class:`~rgprune_fast.errors.BackendUnavailableError` saying why when Triton
cannot serve ``device``: Triton not installed, no CUDA device, or a CPU tensor without the interpreter.
"""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError


def _import_ops():
    from . import triton_batchnorm, triton_criteria, triton_relu, triton_stats

    return triton_stats, triton_batchnorm, triton_relu, triton_criteria


class TritonBackend:
    name = "triton"

    def __init__(self, split: int = 0):
        self.split = split  # 0: chosen per launch from the device and shape
        self._stats, self._bn, self._relu, criteria = _import_ops()
        self.fold_criteria = criteria.fold_criteria

    def channel_stats(self, x, dx, channel_dim):
        return self._stats.channel_stats_op(x, dx, channel_dim, self.split)

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        dz, s = self._bn.batchnorm_stats_op(z, dy, mean, scale, shift, need_dz, self.split)
        return (dz if need_dz else None), s

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        dx, s = self._relu.relu_stats_op(
            r, dr, 0.0 if upper is None else upper, upper is not None, channel_dim, need_dx, self.split
        )
        return (dx if need_dx else None), s


def load(device: torch.device) -> TritonBackend:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(
            f"backend 'triton' cannot score on {device}: triton is not installed (pip install triton)"
        ) from e
    from .triton_common import interpreting

    if device.type == "cpu" and not interpreting():
        raise BackendUnavailableError(
            "backend 'triton' cannot score on cpu: the Triton kernels run on CUDA devices (on CPU only under "
            "the Triton interpreter, TRITON_INTERPRET=1, which is for tests)"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"backend 'triton' cannot score on {device}: only CUDA devices are supported")
    return TritonBackend()
