"""Loading the ``rgprune_fast._C`` extension (csrc/), once per process.

In order: the extension built by ``setup.py``; else, where the C++ sources sit next to the package (a
source checkout, an editable install) and a compiler exists, a just-in-time build with
``torch.utils.cpp_extension.load`` (cached by torch, so only the first use pays); else unavailable,
with the reason. ``RGPRUNE_NO_EXT=1`` disables the extension (the backends fall back to torch).

Importing this module does not load anything; :func:`load` does, and registers the fake (meta)
implementations of the ops so that they work under FakeTensor / ``torch.compile``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from . import _build_config
from .errors import BackendUnavailableError

CSRC = Path(__file__).resolve().parent.parent / "csrc"


@dataclass(frozen=True)
class Extension:
    module: ModuleType
    how: str  # "prebuilt" or "jit"
    has_cuda: bool
    cpu_isa: str


_lock = threading.Lock()
_loaded: Extension | None = None
_failure: str | None = None


def load() -> Extension:
    """The loaded extension; raises :class:`BackendUnavailableError` saying why it cannot be had."""
    global _loaded, _failure
    with _lock:
        if _loaded is None and _failure is None:
            try:
                _loaded = _load()
                _register_fakes()
            except BackendUnavailableError as e:
                _failure = str(e)
        if _failure is not None:
            raise BackendUnavailableError(_failure)
        return _loaded


def _load() -> Extension:
    if os.environ.get("RGPRUNE_NO_EXT") == "1":
        raise BackendUnavailableError("rgprune_fast._C is disabled by RGPRUNE_NO_EXT=1")
    try:
        from . import _C

        return Extension(_C, "prebuilt", _C.has_cuda_kernels(), _C.cpu_kernel_isa())
    except ImportError as e:
        prebuilt_error = f"rgprune_fast._C is not built or does not import ({e})"
    module = _jit_build(prebuilt_error)
    return Extension(module, "jit", module.has_cuda_kernels(), module.cpu_kernel_isa())


def _jit_build(prebuilt_error: str) -> ModuleType:
    if not (CSRC / "bindings.cpp").is_file():
        raise BackendUnavailableError(
            f"{prebuilt_error}, and its sources (csrc/) are not next to the package for a just-in-time build; "
            "reinstall from a source checkout with `pip install --no-build-isolation .`"
        )
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BackendUnavailableError(f"{prebuilt_error}, and no C++ compiler ({cxx!r}) for a just-in-time build")
    from torch.utils import cpp_extension

    with_cuda = torch.cuda.is_available() and _build_config.cuda_build_reason(torch, cpp_extension) is None
    name = "rgprune_fast_C_cuda" if with_cuda else "rgprune_fast_C"
    print(
        f"rgprune_fast: {prebuilt_error}; building it just in time from {CSRC} "
        f"({'C++ and CUDA' if with_cuda else 'C++'} kernels, first use only)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(CSRC / s) for s in _build_config.sources(with_cuda)],
            extra_cflags=_build_config.cxx_flags(with_cuda),
            extra_cuda_cflags=_build_config.nvcc_flags(),
            extra_ldflags=_build_config.link_flags(),
            with_cuda=with_cuda,
            is_python_module=True,
        )
    except Exception as e:  # noqa: BLE001 - a failed build means "unavailable", with the reason
        first = str(e).strip().splitlines()[:3]
        raise BackendUnavailableError(f"{prebuilt_error}, and the just-in-time build failed: {' '.join(first)}") from e


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_fakes() -> None:
    """Shapes, dtypes and layouts of the ops' outputs, as the C++ implementations produce them."""

    @torch.library.register_fake("rgprune_fast::channel_stats")
    def _channel_stats(x, dx, channel_dim):
        cd = channel_dim % x.dim()
        return x.new_empty((x.shape[0], x.shape[cd]), dtype=_stat_dtype(x.dtype))

    @torch.library.register_fake("rgprune_fast::batchnorm_stats")
    def _batchnorm_stats(z, dy, mean, scale, shift, need_dz):
        s = z.new_empty((z.shape[0], z.shape[1]), dtype=_stat_dtype(z.dtype))
        return (torch.empty_like(dy) if need_dz else dy.new_empty((0,))), s

    @torch.library.register_fake("rgprune_fast::relu_stats")
    def _relu_stats(r, dr, upper, channel_dim, need_dx):
        cd = channel_dim % r.dim()
        s = r.new_empty((r.shape[0], r.shape[cd]), dtype=_stat_dtype(r.dtype))
        return (torch.empty_like(dr) if need_dx else dr.new_empty((0,))), s
