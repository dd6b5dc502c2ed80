"""Triton: the per-batch criteria update in one launch per scored module (kernel and launcher).

Reads ``s[N, C]`` once (examples in a fixed order) and updates, per channel, ``sum s``, ``sum |s|``,
``sum s^2``, ``(sum_batch s)^2`` and the first-non-finite-batch flag, in place, on the device.
Each program owns its channels, so there are no races and no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..contract import RunningSums
from . import common

BLOCK_C = 128


@triton.jit
def fold_criteria_kernel(
    s_ptr, sum_s_ptr, sum_abs_ptr, sum_sq_ptr, sum_batch_sq_ptr, first_bad_ptr,
    N, C, ssn, ssc, batch, finite_max,
    HAS_ABS: tl.constexpr, HAS_SQ: tl.constexpr, HAS_BATCH_SQ: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < C
    col_sum = tl.zeros([BLOCK_C], dtype=sum_s_ptr.dtype.element_ty)
    col_abs = tl.zeros([BLOCK_C], dtype=sum_s_ptr.dtype.element_ty)
    col_sq = tl.zeros([BLOCK_C], dtype=sum_s_ptr.dtype.element_ty)
    for n in range(0, N):
        s = tl.load(s_ptr + n * ssn + c * ssc, mask=ok, other=0.0)
        col_sum += s
        col_abs += tl.abs(s)
        col_sq += s * s
    finite = tl.abs(col_sum) <= finite_max  # false for NaN and +-Inf
    first_bad = tl.load(first_bad_ptr + c, mask=ok, other=0)
    tl.store(first_bad_ptr + c, tl.where((first_bad < 0) & ~finite, batch, first_bad), mask=ok)
    tl.store(sum_s_ptr + c, tl.load(sum_s_ptr + c, mask=ok) + col_sum, mask=ok)
    if HAS_ABS:
        tl.store(sum_abs_ptr + c, tl.load(sum_abs_ptr + c, mask=ok) + col_abs, mask=ok)
    if HAS_SQ:
        tl.store(sum_sq_ptr + c, tl.load(sum_sq_ptr + c, mask=ok) + col_sq, mask=ok)
    if HAS_BATCH_SQ:
        tl.store(sum_batch_sq_ptr + c, tl.load(sum_batch_sq_ptr + c, mask=ok) + col_sum * col_sum, mask=ok)


def fold_criteria(s: torch.Tensor, batch: int, sums: RunningSums) -> None:
    """The contract's criteria update (``TorchBackend.fold_criteria``), fused into one launch."""
    n, c = s.shape
    unused = sums.s  # stands in for absent sums; never written (its HAS_* flag is off)
    common.launcher(fold_criteria_kernel)[(triton.cdiv(c, BLOCK_C),)](
        s, sums.s,
        sums.abs if sums.abs is not None else unused,
        sums.sq if sums.sq is not None else unused,
        sums.batch_sq if sums.batch_sq is not None else unused,
        sums.first_bad, n, c, s.stride(0), s.stride(1), batch, torch.finfo(s.dtype).max,
        HAS_ABS=sums.abs is not None, HAS_SQ=sums.sq is not None, HAS_BATCH_SQ=sums.batch_sq is not None,
        BLOCK_C=BLOCK_C,
    )  # fmt: skip
