"""``backend="cuda"``: the CUDA kernels of ``rgprune_fast._C`` (csrc/stats_cuda.cu), for CUDA tensors."""

from __future__ import annotations

import torch

from .. import _ext
from ..errors import BackendUnavailableError
from .cpp import ExtensionBackend


def load(device: torch.device) -> ExtensionBackend:
    device = torch.device(device)

    def unavailable(reason: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"backend 'cuda' cannot score on {device}: {reason}")

    if device.type != "cuda":
        raise unavailable(
            "it runs the CUDA kernels of rgprune_fast._C on CUDA tensors; use backend='cpp' (or 'auto') for CPU tensors"
        )
    if not torch.cuda.is_available():
        raise unavailable(f"torch {torch.__version__} sees no CUDA device")
    try:
        ext = _ext.load()
    except BackendUnavailableError as e:
        raise unavailable(str(e)) from None
    if not ext.has_cuda:
        raise unavailable(
            f"rgprune_fast._C ({ext.how} build) has no CUDA kernels: it was built where torch had no CUDA or nvcc "
            "was missing; rebuild it there (`pip install --no-build-isolation .`)"
        )
    return ExtensionBackend("cuda")
