"""The Triton backend: fused reductions on CUDA tensors (and, for tests, on CPU under the Triton
interpreter, ``TRITON_INTERPRET=1``, which must be set before the kernels are imported).

One op per file (kernel, launcher, ``torch.library`` registration): ``channel_stats.py``,
``batchnorm_stats.py``, ``relu_stats.py``, ``fold_criteria.py``; ``common.py`` holds the layout
normalisation and launch geometry they share. Their reference is ``backends/torch_ref.py``.
Importing this package does not import Triton; :func:`load` does.
"""

from __future__ import annotations

import os

import torch

from ...errors import BackendUnavailableError
from ..contract import ReductionBackend, RunningSums


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend(ReductionBackend):
    name = "triton"

    def __init__(self, split: int = 0):
        from . import batchnorm_stats, channel_stats, fold_criteria, relu_stats

        self.split = split  # 0: chosen per launch from the device and shape
        self._stats, self._bn, self._relu, self._fold = channel_stats, batchnorm_stats, relu_stats, fold_criteria

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

    def fold_criteria(self, s: torch.Tensor, batch: int, sums: RunningSums) -> None:
        self._fold.fold_criteria(s, batch, sums)

    _VARIANT_OPS = ("channel_stats", "batchnorm_stats", "relu_stats")

    def kernel_variant(self, op: str, *tensors: torch.Tensor, channel_dim: int = 1):
        """The kernel design ``op``'s launcher picks for ``tensors`` (the inputs, then the output it
        writes, if any: ``dz`` / ``dx``) and its compile-time parameters (``common.kernel_variant``), or
        None for ``fold_criteria`` (one design). For the self-check's cases; computed on meta views, so
        it neither copies nor allocates on the device."""
        if op not in self._VARIANT_OPS:
            return None
        from . import common

        meta = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in tensors]
        views = tuple(common.as_ncp(t, channel_dim) for t in meta)
        return common.kernel_variant(views, tensors[0].dtype)


def load(device: torch.device) -> TritonBackend:
    """The Triton kernels for ``device``; raises :class:`BackendUnavailableError` saying why not: Triton
    not installed, no CUDA device, or a CPU tensor without the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(
            f"backend 'triton' cannot score on {device}: triton is not installed (pip install triton)"
        ) from e
    if device.type == "cpu" and not interpreting():
        raise BackendUnavailableError(
            "backend 'triton' cannot score on cpu: the Triton kernels run on CUDA devices (on CPU only under "
            "the Triton interpreter, TRITON_INTERPRET=1, which is for tests)"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"backend 'triton' cannot score on {device}: only CUDA devices are supported")
    return TritonBackend()
