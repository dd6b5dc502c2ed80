"""The importance criteria (DESIGN.md section 1) and their on-device accumulators.

Four criteria come from the per-example matrix ``s[n, c]``; ``molchanov_group`` comes from the weight
gradients of the Conv/Linear that produces each channel. Accumulators stay on the model's device and
are read back once, in :meth:`ChannelAccumulator.result`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ACTIVATION_METHODS = ("taylorfo", "taylorfo_abs", "taylorfo_sq", "molchanov_bn")
WEIGHT_METHODS = ("molchanov_group",)
METHODS = ACTIVATION_METHODS + WEIGHT_METHODS  # the Taylor family: all from one backward pass
MC_METHOD = "mc_gradient"  # Monte-Carlo keep probabilities (mc_gradient.py): its own procedure
ALL_METHODS = METHODS + (MC_METHOD,)


def parse_methods(method: str | Sequence[str]) -> tuple[list[str], bool]:
    """Validate ``method``; returns ``(methods, single)`` where ``single`` means a plain string was given."""
    single = isinstance(method, str)
    methods = [method] if single else list(method) if isinstance(method, (list, tuple)) else None
    if methods is None:
        raise TypeError(f"method must be a string or a list of strings, got {type(method).__name__}")
    if not methods:
        raise ValueError(f"method is an empty list; valid methods: {', '.join(ALL_METHODS)}")
    for m in methods:
        if m not in ALL_METHODS:
            raise ValueError(f"unknown method {m!r}; valid methods: {', '.join(ALL_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"method lists {methods} contain a duplicate")
    return methods, single


class ChannelAccumulator:
    """Running sums for one scored module (``C`` channels) over the batches of one ``score`` call.

    ``fold`` is a backend's fused ``fold(s, accumulator, batch)`` (one launch per batch) or ``None`` for
    :func:`fold_torch`; both update the same on-device tensors.
    """

    def __init__(self, channels: int, methods: Sequence[str], device: torch.device, dtype: torch.dtype, fold=None):
        zeros = lambda: torch.zeros(channels, device=device, dtype=dtype)  # noqa: E731
        self.methods = list(methods)
        self.sum_s = zeros()  # always kept: any NaN/Inf in s makes it non-finite
        self.sum_abs = zeros() if "taylorfo_abs" in methods else None
        self.sum_sq = zeros() if "taylorfo_sq" in methods else None
        self.sum_batch_sq = zeros() if "molchanov_bn" in methods else None
        self.sum_group = zeros() if "molchanov_group" in methods else None
        # Per channel: index of the first batch with a non-finite value, -1 if none (no sync needed).
        self.first_bad = torch.full((channels,), -1, device=device, dtype=torch.int64)
        self.fold = fold or fold_torch
        self.examples = 0
        self.batches = 0

    def update(self, s: torch.Tensor, batch: int, group: torch.Tensor | None = None) -> None:
        """Fold one batch in: ``s`` is ``[N, C]``; ``group`` is this batch's ``[C]`` weight-group term."""
        self.fold(s, self, batch)
        if group is not None:
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(group), batch, self.first_bad)
            self.sum_group += group
        self.examples += s.shape[0]
        self.batches += 1

    def first_bad_batch(self) -> torch.Tensor:
        """Device scalar: the first batch with a non-finite value in any channel, or -1."""
        never = torch.iinfo(torch.int64).max
        first = torch.where(self.first_bad >= 0, self.first_bad, never).min()
        return torch.where(first == never, -1, first)

    def result(self, method: str) -> torch.Tensor:
        """The criterion's value per channel, on the accumulators' device."""
        m, b = max(self.examples, 1), max(self.batches, 1)
        if method == "taylorfo":
            return (self.sum_s / m).abs()
        if method == "taylorfo_abs":
            return self.sum_abs / m
        if method == "taylorfo_sq":
            return self.sum_sq / m
        if method == "molchanov_bn":
            return self.sum_batch_sq / b
        if method == "molchanov_group":
            return self.sum_group / b
        raise ValueError(f"unknown method {method!r}")


def fold_torch(s: torch.Tensor, acc: ChannelAccumulator, batch: int) -> None:
    """The reference criteria update in plain torch ops (a few tiny launches per module and batch)."""
    batch_sum = s.sum(0)  # any NaN/Inf in s makes its column sum non-finite
    acc.first_bad = torch.where((acc.first_bad < 0) & ~torch.isfinite(batch_sum), batch, acc.first_bad)
    acc.sum_s += batch_sum
    if acc.sum_abs is not None:
        acc.sum_abs += s.abs().sum(0)
    if acc.sum_sq is not None:
        acc.sum_sq += s.square().sum(0)
    if acc.sum_batch_sq is not None:
        acc.sum_batch_sq += batch_sum.square()


def weight_group_term(weights: Sequence[tuple[torch.Tensor, torch.Tensor, int]], dtype: torch.dtype) -> torch.Tensor:
    """``sum over w in W_c of (w * dL/dw)^2`` per output channel ``c``.

    ``weights`` lists ``(parameter, its gradient, output-channel dim)``: a Conv/Linear weight (dim 0),
    a ConvTranspose weight (dim 1), a bias or a normalisation layer's affine vector (dim 0).
    """
    total = None
    for param, grad, out_dim in weights:
        contrib = (param.detach().to(dtype) * grad.to(dtype)).square()
        contrib = contrib.movedim(out_dim, 0).reshape(contrib.shape[out_dim], -1).sum(1)
        total = contrib if total is None else total + contrib
    return total
