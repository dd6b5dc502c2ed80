"""The reduction contract every backend implements.

A backend turns what autograd hands a tap in backward into the per-example, per-channel statistic
``s[n, c] = sum over positions p of x[n, c, p] * dx[n, c, p]`` (DESIGN.md section 1), as a float32
tensor ``[N, C]`` (float64 when the inputs are float64). ``channel_dim`` is 1 (``[N, C, *spatial]``,
any memory format) or the last dim (``[N, *, C]``); dim 0 is always the example.

Three entry points, so that the taps never need to keep a copy of ``x``:

* ``channel_stats(x, dx, channel_dim)``: the generic reduction.
* ``batchnorm_stats(z, dy, mean, scale, shift, need_dz)``: BatchNorm in eval mode,
  ``x = (z - mean) * scale + shift`` per channel (channel dim 1). Returns ``(dz, s)`` with
  ``dz = dy * scale`` in ``dy``'s dtype (``None`` when not needed) and ``s`` from ``z`` and ``dy``.
* ``relu_stats(r, dr, upper, channel_dim, need_dx)``: ReLU (``upper=None``) or ReLU6 (``upper=6``)
  from its output ``r``: ``dx = dr * [0 < r < upper]`` and ``s = sum r * dx`` (equal to
  ``sum x * dx`` because ``r == x`` wherever the mask is 1).

Per-channel vectors (``mean``, ``scale``, ``shift``) come in the statistics dtype.

Optionally a backend fuses the criteria update: ``fold_criteria(s, acc, batch)`` adds one batch's
``s`` into the sums of a :class:`~rgprune_fast.criteria.ChannelAccumulator` exactly as
:func:`~rgprune_fast.criteria.fold_torch` does (one launch instead of several).
"""

from __future__ import annotations

from typing import Protocol

import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ReductionBackend(Protocol):
    name: str

    def channel_stats(self, x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor: ...

    def batchnorm_stats(
        self,
        z: torch.Tensor,
        dy: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        need_dz: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    def relu_stats(
        self,
        r: torch.Tensor,
        dr: torch.Tensor,
        upper: float | None,
        channel_dim: int,
        need_dx: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...
