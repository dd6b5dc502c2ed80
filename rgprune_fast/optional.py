"""Optional dependencies: import them on demand, or say exactly what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional package is missing; the message names it and the pip command that installs it."""


def install_hint(package: str, extra: str | None = None) -> str:
    command = f"pip install {package}"
    if extra:
        command += f'  (or: pip install "rgprune-fast[{extra}]")'
    return command


def require(module: str, *, package: str | None = None, extra: str | None = None, purpose: str = "this") -> ModuleType:
    """Import ``module``; if it is missing raise :class:`MissingDependencyError` naming the package and
    the pip command."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: show that error
        package = package or module
        raise MissingDependencyError(
            f"{purpose} needs the package {package!r}, which is not installed: {install_hint(package, extra)}"
        ) from e
