"""Input units whose statistic comes from tensors autograd keeps anyway (docs/design.md, "How the taps
work"): the input ``h`` of a transformer MLP's down projection is never kept by a frozen projection
(``F.linear``'s backward needs only the weight for ``dh``), so referencing it, as the generic input tap
does, keeps a tensor per layer that the plain backward would have freed. Two producers of ``h`` keep
what ``s = Σ h · dh`` needs:

* **product** (SwiGLU / GeGLU MLPs: Llama, Mistral, Qwen2 and the many classes with the same forward,
  ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``): the product keeps both factors for its own backward,
  and ``h · dh = u · (dh · a)``, whose second factor is the gradient of ``u`` it computes anyway. The
  MLP runs :func:`gated_forward`, the class's computation with the product handed to a ``multiply``
  (the tap's fused product), for a class whose ``forward`` compiles to exactly the reference below
  (:func:`is_gated_mlp`).
* **activation** (plain MLPs: GPT-2 ``c_proj(act(c_fc(x)))``, BERT ``output.dense(intermediate(x))``,
  ViT, CLIP, OPT, T5, ...): ``h`` is the output of an elementwise activation module (:data:`ELEMENTWISE`,
  class ``forward`` exactly the library's own), whose backward keeps its input ``z`` (or a tensor of its
  size); the tap runs the activation as one Function that keeps only ``z`` and, in backward, recomputes
  ``h = act(z)`` for ``s`` and ``dz`` with the activation's own ops (the same values; compute, not memory).

The structure probe must have seen ``h`` go into the projection and nowhere else (one differentiable
consumer); at run time the projection's tap checks that its input is the very tensor the fused producer
returned, else it falls back to the generic input tap (always exact).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .probe import ProbeResult, alias_key


def _reference_gated(self, x):
    down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return down_proj


def _reference_gated_return(self, x):
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


_REFERENCES = (_reference_gated, _reference_gated_return)
_CODE_FIELDS = ("co_code", "co_names", "co_consts", "co_argcount", "co_posonlyargcount", "co_kwonlyargcount",
                "co_freevars", "co_cellvars", "co_nlocals")  # fmt: skip
# what the function is (not how its module was compiled: __future__ flags differ between files)
_CODE_KIND = (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_COROUTINE
              | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE)  # fmt: skip


def _same_code(fn, reference) -> bool:
    code, ref = getattr(fn, "__code__", None), reference.__code__
    return (
        code is not None
        and all(getattr(code, f) == getattr(ref, f) for f in _CODE_FIELDS)
        and code.co_flags & _CODE_KIND == ref.co_flags & _CODE_KIND
    )


def is_gated_mlp(module: nn.Module) -> bool:
    """A module whose class ``forward`` is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
    (the same bytecode, names and constants, no globals: any local variable names), with no forward of
    its own on the instance."""
    forward = getattr(type(module), "forward", None)
    if not inspect.isfunction(forward) or "forward" in module.__dict__:
        return False
    if forward.__defaults__ or forward.__kwdefaults__:
        return False
    return any(_same_code(forward, r) for r in _REFERENCES) and all(
        isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")
    )


def gated_forward(multiply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """The gated MLP's forward with its product ``a * u`` computed by ``multiply`` (same module calls, in
    the same order)."""

    def forward(module, x):
        a = module.act_fn(module.gate_proj(x))
        return module.down_proj(multiply(a, module.up_proj(x)))

    return forward


_TORCH_ACTIVATIONS = "GELU SiLU ReLU Tanh Sigmoid Mish Hardswish LeakyReLU ELU CELU SELU Softplus"
_HF_ACTIVATIONS = (
    "GELUActivation NewGELUActivation GELUTanh FastGELUActivation QuickGELUActivation SiLUActivation "
    "AccurateGELUActivation ReLUSquaredActivation MishActivation ClippedGELUActivation"
)
# (module, class name) of elementwise activation modules without parameters or state whose backward
# keeps a tensor the size of their input (their input, or their output)
ELEMENTWISE = {("torch.nn.modules.activation", name) for name in _TORCH_ACTIVATIONS.split()} | {
    ("transformers.activations", name) for name in _HF_ACTIVATIONS.split()
}


def is_elementwise_activation(module: nn.Module) -> bool:
    """One of :data:`ELEMENTWISE`, the library's own class (never a subclass or look-alike), its
    ``forward`` the class's own (not replaced, e.g. by a kernel hub), not in place."""
    cls = type(module)
    if (cls.__module__, cls.__name__) not in ELEMENTWISE or sys.modules.get(cls.__module__) is None:
        return False
    if getattr(sys.modules[cls.__module__], cls.__name__, None) is not cls or "forward" not in cls.__dict__:
        return False
    if "forward" in module.__dict__ or getattr(module, "inplace", False):
        return False
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def _gelu_grad(approximate: str):
    return lambda z, dh: torch.ops.aten.gelu_backward(dh, z, approximate=approximate)


def _silu_grad(z, dh):
    return torch.ops.aten.silu_backward(dh, z)


def _relu_grad(z, dh):
    return torch.ops.aten.threshold_backward(dh, z, 0)  # relu(z) > 0 exactly where z > 0


def input_grad(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``(z, dh) -> dz`` with the kernel the activation's own backward runs (no recomputation), for the
    common activations whose forward is one torch op; ``None``: recompute with autograd."""
    name, act = type(module).__name__, getattr(module, "act", None)
    if name == "GELU":
        return _gelu_grad(module.approximate)
    if name == "GELUActivation" and act is F.gelu:
        return _gelu_grad("none")
    tanh = isinstance(act, functools.partial) and act.func is F.gelu and not act.args
    if name == "GELUTanh" and tanh and act.keywords == {"approximate": "tanh"}:
        return _gelu_grad("tanh")
    if name in ("SiLU", "SiLUActivation"):
        return _silu_grad
    if name == "ReLU":
        return _relu_grad
    return None


def fused_source(model: nn.Module, name: str, calls, probe: ProbeResult) -> tuple[str, list[nn.Module]]:
    """How the input units of projection ``name`` get their statistic: ``("product", [mlp])``,
    ``("activation", [activation modules])`` or ``("", [])`` (the generic input tap)."""
    if not calls or any(len(probe.consumers.get(c.inp_key, ())) != 1 for c in calls if c.inp_key is not None):
        return "", []  # h read by something besides the projection (or outside the graph)
    if any(c.inp is None or c.inp_key is None for c in calls):
        return "", []
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else None
    if child == "down_proj" and parent is not None and is_gated_mlp(parent):
        return "product", [parent]
    sources: dict[int, nn.Module] = {}
    for c in calls:
        producers = [
            p.module
            for ps in probe.calls.values()
            for p in ps
            if p.out is not None
            and p.out_version == c.inp_version
            and alias_key(p.out) == alias_key(c.inp)
            and is_elementwise_activation(p.module)
        ]
        if not producers:
            return "", []
        sources.update((id(m), m) for m in producers)
    return "activation", list(sources.values())
