"""The (backend, device) matrix every kernel test runs on: each backend on each device it claims.

A pair that cannot run here is skipped with its reason (shown by ``pytest -ra``), never silently
dropped; a pair listed in ``RGPRUNE_TEST_REQUIRE`` (comma-separated ``backend@device``, e.g. CI's
``torch@cpu,cpp@cpu,triton@cpu``) is never skipped: if it cannot load, its tests fail with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from rgprune_fast.backends import ReductionBackend, load_backend, why_unavailable

PAIRS = (("torch", "cpu"), ("cpp", "cpu"), ("triton", "cpu"), ("torch", "cuda"), ("cuda", "cuda"), ("triton", "cuda"))
REQUIRED = {p.strip() for p in os.environ.get("RGPRUNE_TEST_REQUIRE", "").split(",") if p.strip()}


def unavailable(name: str, device: str) -> str | None:
    """Why backend ``name`` cannot run on ``device`` here, or ``None``."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if name == "triton" and device == "cpu" and torch.cuda.is_available():
        return "Triton runs on CPU only under its interpreter, which the tests switch on only without a GPU"
    return why_unavailable(name, torch.device(device))


def params() -> list:
    out = []
    for name, device in PAIRS:
        reason = None if f"{name}@{device}" in REQUIRED else unavailable(name, device)
        marks = [pytest.mark.skip(reason=f"{name} on {device}: {reason}")] if reason else []
        out.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return out


@dataclass
class Case:
    """One backend on one device; :meth:`put` copies a CPU tensor there with the same sizes and strides."""

    name: str
    device: torch.device
    impl: ReductionBackend

    def put(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=self.device)
        return out.copy_(t)


def load_case(pair: tuple[str, str]) -> Case:
    name, device = pair
    return Case(name, torch.device(device), load_backend(name, torch.device(device)))
