"""Build script. Metadata lives in pyproject.toml.

Builds the extension ``rgprune_fast.backends.extension._C`` from the sources in
``rgprune_fast/backends/extension/csrc/``: the C++ (CPU) kernels always, the CUDA kernels when torch
has CUDA and ``nvcc`` is found (``TORCH_CUDA_ARCH_LIST`` is honoured; default: A100, RTX 30, RTX 40,
H100). It needs torch at build time, so only an install without build isolation builds it
(``pip install --no-build-isolation .``); a plain ``pip install .`` builds the package without it.
An install never fails because of the extension: without it the package builds it just in time on
first use (the sources ship inside the package), or falls back to the pure-PyTorch backend.
``RGPRUNE_NO_EXT=1`` skips the extension.
"""

import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
EXTENSION = os.path.join("rgprune_fast", "backends", "extension")


def warn(msg: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (rgprune_fast): {msg}\n{bar}\n", file=sys.stderr, flush=True)


def build_config():
    path = os.path.join(HERE, EXTENSION, "build_config.py")
    spec = importlib.util.spec_from_file_location("_rgprune_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def optional(build_ext_class):
    """``build_ext`` that warns instead of failing the install when the extension does not build."""

    class OptionalBuildExt(build_ext_class):
        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any build failure must not fail the install
                warn(
                    f"the C++/CUDA extension was not built: {e}. rgprune_fast falls back to a "
                    "just-in-time build on first use, or to the pure-PyTorch backend."
                )

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001
                warn(
                    f"building {ext.name} failed: {e}. rgprune_fast falls back to a just-in-time build on "
                    "first use, or to the pure-PyTorch backend."
                )

    return OptionalBuildExt


def extensions():
    if os.environ.get("RGPRUNE_NO_EXT") == "1":
        print("rgprune_fast: RGPRUNE_NO_EXT=1, not building the C++/CUDA extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001 - the usual case under pip's build isolation
        print(
            f"rgprune_fast: torch is not importable at build time ({e}); the C++ extension is built just in time "
            "on first use instead (or: pip install --no-build-isolation .)",
            file=sys.stderr,
        )
        return [], {}
    cfg = build_config()
    why_not_cuda = cfg.cuda_build_reason(torch, cpp_extension)
    with_cuda = why_not_cuda is None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg.DEFAULT_CUDA_ARCH_LIST)
        print(
            f"rgprune_fast: building the C++ and CUDA kernels (arch {os.environ['TORCH_CUDA_ARCH_LIST']})",
            file=sys.stderr,
        )
    else:
        print(f"rgprune_fast: building the C++ kernels only ({why_not_cuda})", file=sys.stderr)
    kind = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = kind(
        name="rgprune_fast.backends.extension._C",
        sources=[os.path.join(EXTENSION, "csrc", s) for s in cfg.sources(with_cuda)],
        extra_compile_args={"cxx": cfg.cxx_flags(with_cuda), "nvcc": cfg.nvcc_flags()},
        extra_link_args=cfg.link_flags(),
    )
    return [ext], {"build_ext": optional(cpp_extension.BuildExtension)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
