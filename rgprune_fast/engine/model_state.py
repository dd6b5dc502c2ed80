"""Leave the model exactly as found: training flags, ``requires_grad`` flags, ``.grad``, and what the
model's own forward caches on its modules while it is scored."""

from __future__ import annotations

import contextlib
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_MISSING = object()
_SCALARS = (int, float, bool, str, type(None))


def _cache_attributes(module: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """A module's public plain attributes a forward may fill or change (tensors, dicts, lists, scalars:
    caches, cached lengths), and its buffers, as they are now."""
    saved = {}
    for key, value in module.__dict__.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            saved[key] = ("dict", value, dict(value))
        elif isinstance(value, list):
            saved[key] = ("list", value, list(value))
        else:
            saved[key] = ("value", value, None)
    return saved, dict(module._buffers)


def _restore_cache_attributes(module: nn.Module, saved: tuple[dict[str, Any], dict[str, Any]]) -> None:
    attributes, buffers = saved
    for key in [k for k in module.__dict__ if not k.startswith("_") and k not in attributes]:
        del module.__dict__[key]  # created during the call (a cache holding the call's tensors)
    for key, (kind, value, content) in attributes.items():
        if module.__dict__.get(key, _MISSING) is not value:
            module.__dict__[key] = value
        if kind == "dict":
            now = value.items()
            if len(value) != len(content) or any(content.get(k, _MISSING) is not v for k, v in now):
                value.clear()  # e.g. timm LeViT's attention_bias_cache, filled in eval mode
                value.update(content)
        elif kind == "list" and (len(value) != len(content) or any(a is not b for a, b in zip(value, content))):
            value[:] = content
    if any(module._buffers.get(k, _MISSING) is not v for k, v in buffers.items()) or len(module._buffers) != len(
        buffers
    ):
        module._buffers.clear()  # e.g. a rotary embedding's non-persistent inv_freq, recomputed in forward
        module._buffers.update(buffers)


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's ``training`` flag, every parameter's ``requires_grad`` and ``.grad``, its
    buffers and its public attributes (values, and the contents of dicts and lists; attributes created
    during the call are removed: caches a forward fills in eval mode would otherwise keep tensors of the
    scoring call's graph) on exit, also when the body raises."""
    training = [(m, m.training) for m in model.modules()]
    caches = [(m, _cache_attributes(m)) for m in model.modules()]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for m, saved in caches:
            _restore_cache_attributes(m, saved)
        for p, flag, grad in zip(params, requires_grad, grads):
            p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad
        if any(a is not b for a, b in zip(params, model.parameters())):
            _reshard(model)


def _reshard(model: nn.Module) -> None:
    """FSDP2 (``fully_shard``) keeps the root's gathered weights registered from its forward until its
    backward: after a call that raised in between (a gradient callable, a target check), put the
    sharded parameters back with FSDP's own recovery (``reset_iter_state`` on the root; it discards no
    gradient of ours: the parameters are frozen while scored)."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        if hasattr(module, "reset_iter_state"):  # recent torch
            with contextlib.suppress(RuntimeError):  # not a root: its root's call reshards it
                module.reset_iter_state()
        else:
            module.reshard()  # older torch: best effort (a root mid-iteration stays gathered)


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


class ForwardOverrides:
    """Instance forwards installed for one scoring call: each undone on :meth:`keep_only` (those not
    kept) or :meth:`restore_all`, exactly once, with its ``on_restore``."""

    def __init__(self):
        self._restores: dict[nn.Module, Callable[[], None]] = {}

    def add(self, module: nn.Module, forward: Callable, on_restore: Callable[[], None] | None = None) -> None:
        restore = override_forward(module, forward)

        def undo():
            restore()
            if on_restore is not None:
                on_restore()

        self._restores[module] = undo

    def keep_only(self, modules: Iterable[nn.Module]) -> None:
        """Give every module not in ``modules`` its own forward back now."""
        keep = {id(m) for m in modules}
        for module in [m for m in self._restores if id(m) not in keep]:
            self._restores.pop(module)()

    def restore_all(self) -> None:
        for undo in reversed(list(self._restores.values())):
            undo()
        self._restores.clear()


_IN_USE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> the thread scoring it
_IN_USE_LOCK = threading.Lock()


@contextmanager
def exclusive(model: nn.Module) -> Iterator[None]:
    """Claim every module of ``model`` for one scoring call; another call on any of them at the same
    time (another thread, or a call from inside this one) is refused before it touches anything: two
    calls would install and undo their hooks and forwards over each other's."""
    modules = list(model.modules())
    with _IN_USE_LOCK:
        busy = next(((m, _IN_USE[m]) for m in modules if m in _IN_USE), None)
        if busy is not None:
            module, thread = busy
            where = (
                "this thread (a call from inside another)"
                if thread is threading.current_thread()
                else (f"thread {thread.name!r}")
            )
            raise RuntimeError(
                f"{type(module).__name__} {'(the model)' if module is model else 'of the model'} is already being "
                f"scored in {where}; score a model in one call at a time (or score a copy: copy.deepcopy(model))"
            )
        for m in modules:
            _IN_USE[m] = threading.current_thread()
    try:
        yield
    finally:
        with _IN_USE_LOCK:
            for m in modules:
                _IN_USE.pop(m, None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module that holds the weights: DistributedDataParallel / DataParallel wrappers and
    ``torch.compile``'s OptimizedModule are scored through the module they wrap (same weights, same
    scores; the taps need eager module calls)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def check_materialized(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise ValueError(
                f"{name!r} is on the meta device: the model has no real weights to score. Materialise it first "
                "(e.g. model.to_empty(device=...) and load_state_dict)"
            )


def check_autograd_tensors(model: nn.Module) -> None:
    """Parameters and buffers created under ``torch.inference_mode()`` cannot be used by autograd."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_inference():
            raise ValueError(
                f"{name!r} was created under torch.inference_mode(): autograd cannot use it, and scoring needs "
                "autograd. Build or load the model outside inference_mode (or clone its tensors outside it)"
            )


def activate_checkpointing(model: nn.Module) -> None:
    """Hugging Face layers checkpoint only when ``gradient_checkpointing and training``; scoring runs in
    eval mode, so set the ``training`` flag of those layers alone (not of their children: dropout stays
    off). :func:`preserved` restores it."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True
