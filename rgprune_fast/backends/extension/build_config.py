"""Sources and flags of the compiled extension, shared by ``setup.py`` (ahead-of-time build)
and ``loader.py`` (just-in-time build). Standard library only: setup.py loads this file by path,
before the package is importable."""

from __future__ import annotations

import os
import shutil
import sys

# Link order matters: cpu_kernels_avx2.cpp must come last (see the comment at its top).
CPU_SOURCES = ("bindings.cpp", "layout.cpp", "stats_cpu.cpp", "cpu_kernels_default.cpp")
CUDA_SOURCES = ("stats_cuda_glue.cpp", "stats_cuda.cu")
LAST_SOURCES = ("cpu_kernels_avx2.cpp",)

# A100 (8.0), RTX 30 (8.6), RTX 40 / L4 / L40 (8.9), H100 / H200 (9.0, plus PTX for newer GPUs).
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def sources(with_cuda: bool) -> list[str]:
    """Source file names under csrc/, in link order."""
    return list(CPU_SOURCES) + (list(CUDA_SOURCES) if with_cuda else []) + list(LAST_SOURCES)


def _openmp() -> bool:
    # at::parallel_for is inlined from the ATen headers: without OpenMP it runs on one thread. The
    # extension links the libgomp.so.1 that torch has already loaded (same soname).
    return sys.platform.startswith("linux")


def cxx_flags(with_cuda: bool) -> list[str]:
    if sys.platform == "win32":
        return ["/O2"] + (["/DRGP_WITH_CUDA"] if with_cuda else [])
    flags = ["-O3"] + (["-fopenmp"] if _openmp() else [])
    return flags + (["-DRGP_WITH_CUDA"] if with_cuda else [])


def nvcc_flags() -> list[str]:
    # No --use_fast_math: the kernels must round like the torch reference.
    return ["-O3", "-DRGP_WITH_CUDA"]


def link_flags() -> list[str]:
    return ["-fopenmp"] if _openmp() else []


def cuda_build_reason(torch_module, cpp_extension) -> str | None:
    """``None`` if the CUDA kernels can be compiled here, else why not."""
    if getattr(torch_module.version, "cuda", None) is None:
        return f"torch {torch_module.__version__} has no CUDA"
    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return "nvcc was not found (set CUDA_HOME)"
    return None
