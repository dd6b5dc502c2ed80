"""The compiled extension ``rgprune_fast.backends.extension._C`` (sources in ``csrc/``) as backends
``"cpp"`` (its CPU kernels) and ``"cuda"`` (its CUDA kernels, in builds with CUDA).

``loader.py`` finds or builds the extension, ``build_config.py`` lists its sources and flags (shared
with ``setup.py``), ``ops.py`` wraps its ops as a backend next to their fake implementations.
"""

from __future__ import annotations

import torch

from ...errors import BackendUnavailableError
from . import loader
from .ops import ExtensionBackend


def load_cpp(device: torch.device) -> ExtensionBackend:
    """The C++ kernels, for CPU tensors."""
    device = torch.device(device)
    if device.type != "cpu":
        raise BackendUnavailableError(
            f"backend 'cpp' cannot score on {device}: it runs the CPU kernels of the rgprune_fast extension; use "
            "backend='cuda' (or 'auto') for CUDA tensors"
        )
    try:
        loader.load()
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"backend 'cpp' cannot score on {device}: {e}") from None
    return ExtensionBackend("cpp")


def load_cuda(device: torch.device) -> ExtensionBackend:
    """The CUDA kernels, for CUDA tensors."""
    device = torch.device(device)

    def unavailable(reason: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"backend 'cuda' cannot score on {device}: {reason}")

    if device.type != "cuda":
        raise unavailable(
            "it runs the CUDA kernels of the rgprune_fast extension on CUDA tensors; use backend='cpp' (or 'auto') "
            "for CPU tensors"
        )
    if not torch.cuda.is_available():
        raise unavailable(f"torch {torch.__version__} sees no CUDA device")
    try:
        ext = loader.load()
    except BackendUnavailableError as e:
        raise unavailable(str(e)) from None
    if not ext.has_cuda:
        raise unavailable(
            f"the extension ({ext.how} build) has no CUDA kernels: it was built where torch had no CUDA or nvcc "
            "was missing; rebuild it there (`pip install --no-build-isolation .`)"
        )
    return ExtensionBackend("cuda")
