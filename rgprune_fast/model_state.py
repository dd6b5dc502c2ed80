"""Leave the model exactly as found: training flags, ``requires_grad`` flags and ``.grad``."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` and ``.grad``
    on exit, also when the body raises."""
    training = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag, grad in zip(params, requires_grad, grads):
            p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad


@contextmanager
def requires_grad(params: Iterable[nn.Parameter], flag: bool) -> Iterator[None]:
    """Temporarily set ``requires_grad`` on floating-point ``params``."""
    params = [p for p in params if p.is_floating_point() or p.is_complex()]
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(flag)
        yield
    finally:
        for p, b in zip(params, before):
            p.requires_grad_(b)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def override_forward(module: nn.Module, forward: Callable) -> Callable[[], None]:
    """Install ``forward`` as an instance attribute; returns the function that undoes it exactly."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = types.MethodType(forward, module)

    def restore():
        if had:
            module.__dict__["forward"] = previous
        else:
            module.__dict__.pop("forward", None)

    return restore
