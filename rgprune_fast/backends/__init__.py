"""Reduction backends and their selection (``backend="auto"|"triton"|"cuda"|"cpp"|"torch"``).

Only the pure-PyTorch backend exists in this version. The others (fused Triton kernels, the
``rgprune_fast._C`` C++/CUDA extension) are planned; asking for one explicitly raises
:class:`~rgprune_fast.errors.BackendUnavailableError` that says so, and ``"auto"`` uses ``"torch"``.
"""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError
from .base import ReductionBackend, stat_dtype
from .torch_ref import TorchBackend

BACKENDS = ("auto", "triton", "cuda", "cpp", "torch")

_NOT_IMPLEMENTED = {
    "triton": "the Triton kernels are not implemented in this version of rgprune_fast",
    "cuda": "the CUDA extension (rgprune_fast._C) is not implemented in this version of rgprune_fast",
    "cpp": "the C++ extension (rgprune_fast._C) is not implemented in this version of rgprune_fast",
}


def select_backend(name: str, device: torch.device) -> ReductionBackend:
    """The backend called ``name`` for tensors on ``device``; raises with the reason if it can't serve."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if name in ("auto", "torch"):
        return TorchBackend()
    raise BackendUnavailableError(f"backend {name!r} cannot score on {device}: {_NOT_IMPLEMENTED[name]}")


__all__ = ["BACKENDS", "ReductionBackend", "TorchBackend", "select_backend", "stat_dtype"]
