"""Reduction backends and their selection (``backend="auto"|"triton"|"cuda"|"cpp"|"torch"``).

Every backend implements :class:`~rgprune_fast.backends.contract.ReductionBackend`. Its loader
raises :class:`~rgprune_fast.errors.BackendUnavailableError` with the reason when it cannot serve
tensors on ``device``. ``"auto"`` tries, in order, the entries of ``AUTO_ORDER`` for the device type
and falls back to the pure-PyTorch reference, which always works.

:func:`select_backend` (what ``score`` uses) puts every fused backend behind the self-check of
``selfcheck.py``: each kernel is compared with the torch backend on its first use per case, and a case
whose kernel raises or disagrees is served by the torch backend (one ``KernelSelfCheckWarning``).
:func:`load_backend` gives the kernels themselves, unchecked (kernel tests, benchmarks).
"""

from __future__ import annotations

import importlib

import torch

from ..errors import BackendUnavailableError, KernelSelfCheckWarning
from . import selfcheck
from .contract import ReductionBackend, RunningSums, stat_dtype
from .torch_ref import TorchBackend

BACKENDS = ("auto", "triton", "cuda", "cpp", "torch")

# backend name -> (module relative to this package, its loader); imported on demand (Triton is optional)
_LOADERS = {
    "torch": (".torch_ref", "load"),
    "triton": (".triton", "load"),
    "cpp": (".extension", "load_cpp"),
    "cuda": (".extension", "load_cuda"),
}
AUTO_ORDER = {"cuda": ("triton", "cuda"), "cpu": ("cpp",)}


def load_backend(name: str, device: torch.device) -> ReductionBackend:
    """The backend ``name`` for ``device`` (its kernels, without the self-check); raises
    :class:`BackendUnavailableError` saying why not."""
    module, loader = _LOADERS[name]
    return getattr(importlib.import_module(module, __name__), loader)(torch.device(device))


def select_backend(name: str, device: torch.device) -> ReductionBackend:
    """The backend called ``name`` (or the best available one for ``"auto"``) for tensors on ``device``;
    a fused one behind the self-check (``selfcheck.SelfCheckedBackend``: same ``name``, ``inner`` is the
    backend itself)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if name != "auto":
        return selfcheck.wrap(load_backend(name, device))
    for candidate in AUTO_ORDER.get(device.type, ()):
        try:
            return selfcheck.wrap(load_backend(candidate, device))
        except BackendUnavailableError:
            continue
    return TorchBackend()


def why_unavailable(name: str, device: torch.device) -> str | None:
    """``None`` if backend ``name`` can serve ``device``, else the reason (for diagnostics)."""
    try:
        load_backend(name, device)
    except BackendUnavailableError as e:
        return str(e)
    return None


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "KernelSelfCheckWarning",
    "ReductionBackend",
    "RunningSums",
    "TorchBackend",
    "load_backend",
    "select_backend",
    "stat_dtype",
    "why_unavailable",
]
