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
METHODS = ACTIVATION_METHODS + WEIGHT_METHODS


def parse_methods(method: str | Sequence[str]) -> tuple[list[str], bool]:
    """Validate ``method``; returns ``(methods, single)`` where ``single`` means a plain string was given."""
    single = isinstance(method, str)
    methods = [method] if single else list(method) if isinstance(method, (list, tuple)) else None
    if methods is None:
        raise TypeError(f"method must be a string or a list of strings, got {type(method).__name__}")
    if not methods:
        raise ValueError(f"method is an empty list; valid methods: {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid methods: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"method lists {methods} contain a duplicate")
    return methods, single


class ChannelAccumulator:
    """Running sums for one scored module (``C`` channels) over the batches of one ``score`` call."""

    def __init__(self, channels: int, methods: Sequence[str], device: torch.device, dtype: torch.dtype):
        zeros = lambda: torch.zeros(channels, device=device, dtype=dtype)  # noqa: E731
        self.methods = list(methods)
        self.sum_s = zeros()  # always kept: any NaN/Inf in s makes it non-finite
        self.sum_abs = zeros() if "taylorfo_abs" in methods else None
        self.sum_sq = zeros() if "taylorfo_sq" in methods else None
        self.sum_batch_sq = zeros() if "molchanov_bn" in methods else None
        self.sum_group = zeros() if "molchanov_group" in methods else None
        # Index of the first batch with a non-finite value, -1 if none; kept on device (no sync).
        self.first_bad_batch = torch.full((), -1, device=device, dtype=torch.long)
        self.examples = 0
        self.batches = 0

    def _flag(self, value: torch.Tensor, batch: int) -> None:
        bad = ~torch.isfinite(value).all()
        self.first_bad_batch = torch.where(bad & (self.first_bad_batch < 0), batch, self.first_bad_batch)

    def update(self, s: torch.Tensor, batch: int, group: torch.Tensor | None = None) -> None:
        """Fold one batch in: ``s`` is ``[N, C]``; ``group`` is this batch's ``[C]`` weight-group term."""
        batch_sum = s.sum(0)  # any NaN/Inf in s makes this non-finite
        self._flag(batch_sum if group is None else torch.stack([batch_sum, group]), batch)
        self.sum_s += batch_sum
        if self.sum_abs is not None:
            self.sum_abs += s.abs().sum(0)
        if self.sum_sq is not None:
            self.sum_sq += s.square().sum(0)
        if self.sum_batch_sq is not None:
            self.sum_batch_sq += batch_sum.square()
        if self.sum_group is not None:
            self.sum_group += group
        self.examples += s.shape[0]
        self.batches += 1

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
