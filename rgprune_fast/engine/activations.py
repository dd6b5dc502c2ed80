"""Activation modules that write in place, and how a scoring call keeps the tensor before them.

An in-place activation overwrites the output of the layer before it, which a ``generic`` tap needs in
backward. Three cases, decided by what the module's class computes (its ``forward`` must be exactly
the torch class's own, never a subclass's override):

* **fused**: ReLU, ReLU6 and LeakyReLU (slope > 0). Their backward is a function of their output
  ``r``, and ``x * dx`` is a function of ``r`` and ``dr`` (ReLU, LeakyReLU: ``r * dr``; ReLU6:
  ``r * dr`` where ``0 < r < 6``, else 0), so the ``relu`` tap takes the statistic from ``r`` inside the
  activation's own backward and the activation stays in place.
* **out of place**: SiLU, Hardswish, Hardsigmoid, Mish. Autograd keeps a copy of their input even in
  place, so running them out of place for the duration of the call costs no memory that their own
  backward does not already take; :func:`out_of_place` flips their ``inplace`` flag and restores it.
  Only while nothing else reads their input (the structure probe checks): in place, that reader would
  see the activated values.
* anything else that writes in place (ELU, CELU, SELU, a general Hardtanh, a custom class): the
  layer before it cannot be scored exactly; the default selection leaves it out with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Fused:
    """How a fused activation computes: ``relu`` (``upper`` None), ``relu6`` (``upper`` 6) or
    ``leaky`` (``slope``)."""

    upper: float | None = None
    slope: float = 0.0

    def forward(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if self.slope:
            return F.leaky_relu(x, self.slope, inplace=inplace)
        if self.upper is None:
            return F.relu(x, inplace=inplace)
        return F.hardtanh(x, 0.0, self.upper, inplace=inplace)

    def input_grad(self, r: torch.Tensor, dr: torch.Tensor) -> torch.Tensor:
        """``dx`` of a LeakyReLU from its output (ReLU/ReLU6 go through the backend's ``relu_stats``)."""
        return torch.where(r > 0, dr, dr * self.slope)


def _exact(module: nn.Module, cls: type) -> bool:
    return type(module).forward is cls.forward


def fused(module: nn.Module) -> Fused | None:
    """The fused form of ``module``, or ``None`` when it is not a ReLU / ReLU6 / LeakyReLU (slope > 0)
    computing exactly what torch's class computes."""
    if isinstance(module, nn.ReLU) and _exact(module, nn.ReLU):
        return Fused()
    if isinstance(module, nn.ReLU6) and _exact(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0, 6):
        return Fused(upper=6.0)
    if isinstance(module, nn.LeakyReLU) and _exact(module, nn.LeakyReLU) and module.negative_slope > 0:
        return Fused(slope=float(module.negative_slope))
    return None


# Their in-place backward keeps a copy of the input, so out of place costs nothing extra.
OUT_OF_PLACE_SAFE = (nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish)


def runs_out_of_place_safely(module: nn.Module) -> bool:
    return any(isinstance(module, cls) and _exact(module, cls) for cls in OUT_OF_PLACE_SAFE)


class Flipped:
    """The in-place activation modules running out of place within one :func:`out_of_place`."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    def keep_in_place(self, modules) -> bool:
        """Put ``modules`` back in place now (something else reads their input: out of place, it would
        see the values before the activation, the user's network the values after); whether any was."""
        back = {id(m) for m in modules}
        for m in self.modules:
            if id(m) in back:
                m.inplace = True
        self.modules = [m for m in self.modules if id(m) not in back]
        return bool(back)


@contextmanager
def out_of_place(model: nn.Module) -> Iterator[Flipped]:
    """Run the model's in-place SiLU / Hardswish / Hardsigmoid / Mish modules out of place, restored on
    exit. The structure probe then checks that nothing else reads their input (:meth:`Flipped.keep_in_place`)."""
    flipped = [m for m in model.modules() if getattr(m, "inplace", False) is True and runs_out_of_place_safely(m)]
    state = Flipped(list(flipped))
    try:
        for m in flipped:
            m.inplace = False
        yield state
    finally:
        for m in flipped:
            m.inplace = True
