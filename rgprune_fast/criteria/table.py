"""The criteria: the one table that knows their names, what each needs per batch and how it finalises.

With ``s[n, c] = sum over positions of x * dx`` over M examples in B batches (docs/design.md, "The
mathematics"), every criterion is a running sum divided by M or B, its absolute value taken or not.
``molchanov_group`` sums the Molchanov weight term ``sum_{w in W_c} (w * dL/dw)^2`` instead of a
function of ``s``; every other criterion comes from ``s`` alone, and one pass yields them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The running sums a criterion can need (``s`` itself is always kept: it carries the NaN check).
SUMS = ("s", "abs", "sq", "batch_sq", "molchanov")


@dataclass(frozen=True)
class Criterion:
    name: str
    formula: str  # per channel c, for docs and errors
    origin: str
    sum: str  # the running sum it reads (one of SUMS)
    per_batch: bool = False  # divide by the number of batches B (else by the examples M)
    absolute: bool = False  # the absolute value of the mean

    @property
    def needs_molchanov_weights(self) -> bool:
        return self.sum == "molchanov"

    def finalize(self, total: torch.Tensor, examples: int, batches: int) -> torch.Tensor:
        mean = total / max(batches if self.per_batch else examples, 1)
        return mean.abs() if self.absolute else mean


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("taylorfo", "| (1/M) sum_n s[n,c] |", "Molchanov et al. 2016", "s", absolute=True),
        Criterion("taylorfo_abs", "(1/M) sum_n |s[n,c]|", "Sapkota & Bhattarai", "abs"),
        Criterion("taylorfo_sq", "(1/M) sum_n s[n,c]^2", "Sapkota & Bhattarai (the default)", "sq"),
        Criterion(
            "molchanov_bn",
            "(1/B) sum_batches (sum_{n in batch} s[n,c])^2",
            "Molchanov et al. 2019, BN criterion",
            "batch_sq",
            per_batch=True,
        ),  # fmt: skip
        Criterion(
            "molchanov_group",
            "(1/B) sum_batches sum_{w in W_c} (w * dL/dw)^2",
            "Molchanov et al. 2019, weight-group criterion",
            "molchanov",
            per_batch=True,
        ),  # fmt: skip
    )
}
METHODS = tuple(CRITERIA)
DEFAULT_METHOD = "taylorfo_sq"


def parse_methods(method: str | Sequence[str]) -> tuple[list[Criterion], bool]:
    """Validate ``method``; returns ``(criteria, single)`` where ``single`` means a plain string was given."""
    single = isinstance(method, str)
    names = [method] if single else list(method) if isinstance(method, (list, tuple)) else None
    if names is None:
        raise TypeError(f"method must be a string or a list of strings, got {type(method).__name__}")
    if not names:
        raise ValueError(f"method is an empty list; valid methods: {', '.join(METHODS)}")
    for name in names:
        if name not in CRITERIA:
            hint = " (Monte-Carlo keep probabilities have their own entry point: rgprune_fast.mc_gradient)"
            raise ValueError(
                f"unknown method {name!r}; valid methods: {', '.join(METHODS)}"
                + (hint if name == "mc_gradient" else "")
            )
    if len(set(names)) != len(names):
        raise ValueError(f"method lists {names} contain a duplicate")
    return [CRITERIA[name] for name in names], single
