"""The backend contract: every op the taps and the criteria accumulators call, on plain tensors.

A backend turns what autograd hands a tap in backward into the per-example, per-channel statistic
``s[n, c] = sum over positions p of x[n, c, p] * dx[n, c, p]``, and folds one batch of ``s`` into the
running sums of the criteria. ``channel_dim`` is 1 (``[N, C, *spatial]``, any memory format) or the
last dim (``[N, *, C]``); dim 0 is always the example.

* ``channel_stats(x, dx, channel_dim) -> s``: the generic reduction.
* ``batchnorm_stats(z, dy, mean, scale, shift, need_dz) -> (dz, s)``: BatchNorm in eval mode,
  ``x = (z - mean) * scale + shift`` per channel (channel dim 1). ``dz = dy * scale`` in ``dy``'s
  dtype (``None`` when not needed); ``s`` from ``z`` and ``dy``, so that ``x`` is never stored.
* ``relu_stats(r, dr, upper, channel_dim, need_dx) -> (dx, s)``: ReLU (``upper=None``) or ReLU6
  (``upper=6``) from its output ``r``: ``dx = dr * [0 < r < upper]`` and ``s = sum r * dx`` (equal to
  ``sum x * dx`` because ``r == x`` wherever the mask is 1).
* ``fold_criteria(s, batch, sums)``: one batch's ``s [N, C]`` into the running sums (``[C]`` each, in
  place, on the device): ``sums.s += sum_n s``; where present ``sums.abs += sum_n |s|``,
  ``sums.sq += sum_n s^2``, ``sums.batch_sq += (sum_n s)^2``; and ``sums.first_bad`` (int64) takes
  ``batch`` in every channel whose ``sum_n s`` is NaN/Inf and that had no bad batch yet (-1).

``s`` and every per-channel vector are in the *statistics dtype* (:func:`stat_dtype`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The one accumulation rule: float64 stays float64, every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class RunningSums:
    """The per-channel running sums a criteria update writes (``None``: not needed by any criterion)."""

    s: torch.Tensor
    first_bad: torch.Tensor
    abs: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    batch_sq: torch.Tensor | None = None


class ReductionBackend(ABC):
    """A reduction backend; ``load(device)`` functions in this package build them."""

    name: str

    @abstractmethod
    def channel_stats(self, x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor: ...

    @abstractmethod
    def batchnorm_stats(
        self,
        z: torch.Tensor,
        dy: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        need_dz: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    @abstractmethod
    def relu_stats(
        self,
        r: torch.Tensor,
        dr: torch.Tensor,
        upper: float | None,
        channel_dim: int,
        need_dx: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    @abstractmethod
    def fold_criteria(self, s: torch.Tensor, batch: int, sums: RunningSums) -> None: ...
