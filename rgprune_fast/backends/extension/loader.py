"""Finding (or building) the compiled extension, once per process.

In order: ``_C``, built by ``setup.py`` next to this file; else a just-in-time build of ``csrc/``
(shipped inside the package, so this works from a wheel too) with ``torch.utils.cpp_extension.load``,
cached by torch so that only the first use pays (about a minute, one line on stderr); else
unavailable, with the reason (the backends then fall back to the pure-PyTorch one).
``RGPRUNE_NO_EXT=1`` disables the extension.

Importing this module does not load anything; :func:`load` does, and registers the ops' fake
implementations.
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

from ...errors import BackendUnavailableError
from . import build_config
from .ops import register_fakes

CSRC = Path(__file__).resolve().parent / "csrc"
MODULE = f"{__package__}._C"


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
                register_fakes()
            except BackendUnavailableError as e:
                _failure = str(e)
        if _failure is not None:
            raise BackendUnavailableError(_failure)
        return _loaded


def _load() -> Extension:
    if os.environ.get("RGPRUNE_NO_EXT") == "1":
        raise BackendUnavailableError(f"{MODULE} is disabled by RGPRUNE_NO_EXT=1")
    try:
        from . import _C

        return Extension(_C, "prebuilt", _C.has_cuda_kernels(), _C.cpu_kernel_isa())
    except ImportError as e:
        prebuilt_error = f"{MODULE} is not built or does not import ({e})"
    module = _jit_build(prebuilt_error)
    return Extension(module, "jit", module.has_cuda_kernels(), module.cpu_kernel_isa())


def _say(message: str) -> None:
    print(f"rgprune_fast: {message}", file=sys.stderr, flush=True)


def _already_built(cpp_extension, name: str) -> bool:
    """Whether torch's extension cache holds a build of ``name`` (then the load is quick and silent)."""
    build_directory = getattr(cpp_extension, "_get_build_directory", None)  # private; absent: say "building"
    return build_directory is not None and Path(build_directory(name, False), f"{name}.so").is_file()


def _jit_build(prebuilt_error: str) -> ModuleType:
    if not (CSRC / "bindings.cpp").is_file():
        raise BackendUnavailableError(
            f"{prebuilt_error}, and its sources ({CSRC}) are missing for a just-in-time build"
        )
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BackendUnavailableError(f"{prebuilt_error}, and no C++ compiler ({cxx!r}) for a just-in-time build")
    from torch.utils import cpp_extension

    with_cuda = torch.cuda.is_available() and build_config.cuda_build_reason(torch, cpp_extension) is None
    name = "rgprune_fast_C_cuda" if with_cuda else "rgprune_fast_C"
    cached = _already_built(cpp_extension, name)
    if not cached:
        kernels = "C++ and CUDA" if with_cuda else "C++"
        _say(f"building the {kernels} kernels just in time (first use only, about a minute; cached by torch)")
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(CSRC / s) for s in build_config.sources(with_cuda)],
            extra_cflags=build_config.cxx_flags(with_cuda),
            extra_cuda_cflags=build_config.nvcc_flags(),
            extra_ldflags=build_config.link_flags(),
            with_cuda=with_cuda,
            is_python_module=True,
        )
    except Exception as e:  # noqa: BLE001 - a failed build means "unavailable", with the reason
        first = " ".join(str(e).strip().splitlines()[:3])
        _say(f"the just-in-time build failed ({first[:300]}); using the pure-PyTorch backend")
        raise BackendUnavailableError(f"{prebuilt_error}, and the just-in-time build failed: {first}") from e
