"""Build script. Metadata lives in pyproject.toml.

``ext_modules`` is where the ``rgprune_fast._C`` C++/CUDA extension (csrc/) will be declared; this
version ships no compiled code, so there is nothing to build yet.
"""

from setuptools import setup


def extension_modules() -> list:
    return []


setup(ext_modules=extension_modules())
