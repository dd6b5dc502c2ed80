"""Triton: fused ReLU / ReLU6 backward that also yields the statistic (kernel, launcher, op).

From the ReLU output ``r`` (kept by autograd anyway) and ``dr``: ``dx = dr * [0 < r < upper]`` and
``s = sum_p r * dx``, which equals ``sum_p x * dx`` because ``r == x`` wherever the mask is 1. A tiled
kernel, and a row-group kernel for contiguous rows that are not 16-byte aligned (``common.RowGroups``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import program_tile, row_group_at, row_group_tile, store_partial, store_rows, tile_offsets


@triton.jit
def relu_stats_kernel(
    r_ptr, dr_ptr, dx_ptr, partial_ptr,
    C, P, p_per_split, upper,
    srn, src, srp, sdn, sdc, sdp, son, soc, sop,
    ACC: tl.constexpr, HAS_UPPER: tl.constexpr, NEED_DX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ALIGN: tl.constexpr, CHANNELS_CONTIGUOUS: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C, ALIGN, CHANNELS_CONTIGUOUS)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        r = tl.load(r_ptr + tile_offsets(n, c64, p, srn, src, srp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        dr = tl.load(dr_ptr + tile_offsets(n, c64, p, sdn, sdc, sdp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        dx = relu_backward(r, dr, upper, HAS_UPPER)
        if NEED_DX:
            tl.store(dx_ptr + tile_offsets(n, c64, p, son, soc, sop, ALIGN, CHANNELS_CONTIGUOUS), dx, mask=ok)
        acc += r.to(ACC) * dx.to(ACC)
    store_partial(partial_ptr, tl.sum(acc, axis=1), n, c64, c_ok, split, C)


@triton.jit
def relu_backward(r, dr, upper, HAS_UPPER: tl.constexpr):
    keep = r > 0
    if HAS_UPPER:
        keep = keep & (r < upper)
    return tl.where(keep, dr, tl.zeros_like(dr))


@triton.jit
def relu_stats_rows_kernel(
    r_ptr, dr_ptr, dx_ptr, s_ptr, upper, groups, groups_per_program,
    P: tl.constexpr, R: tl.constexpr, FLAT: tl.constexpr, ACC: tl.constexpr,
    HAS_UPPER: tl.constexpr, NEED_DX: tl.constexpr,
):  # fmt: skip
    local, hot, rows = row_group_tile(P, R, FLAT)
    first = tl.program_id(0) * groups_per_program
    for i in range(0, groups_per_program):
        base, ok, live = row_group_at(first + i, groups, local, P, R)
        r = tl.load(r_ptr + base + local, mask=ok, other=0.0)
        dr = tl.load(dr_ptr + base + local, mask=ok, other=0.0)
        dx = relu_backward(r, dr, upper, HAS_UPPER)
        if NEED_DX:
            tl.store(dx_ptr + base + local, dx, mask=ok)
        s = tl.sum(tl.where(hot, (r.to(ACC) * dx.to(ACC))[:, None], 0.0), axis=0)
        store_rows(s_ptr, first + i, rows, s, live, R)


def relu_stats_op(
    r: torch.Tensor, dr: torch.Tensor, upper: float, has_upper: bool, channel_dim: int, need_dx: bool, split: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, s)``; ``dx`` is an empty ``[0]`` tensor when ``need_dx`` is false."""
    rv, dv = common.as_ncp(r, channel_dim), common.as_ncp(dr, channel_dim)
    dx = common.new_empty_like(dr) if need_dx else dr.new_empty(0)
    ov = common.as_ncp(dx, channel_dim) if need_dx else dv
    plan = common.row_groups((rv, dv, ov))
    if plan is not None:
        s = common.new_empty(rv.shape[:2], common.stat_dtype(r.dtype), r.device)
        common.launcher(relu_stats_rows_kernel)[plan.grid](
            rv, dv, ov, s, float(upper), plan.groups, plan.groups_per_program,
            P=plan.p, R=plan.r, FLAT=plan.flat, ACC=common.acc_type(r.dtype), HAS_UPPER=has_upper,
            NEED_DX=need_dx, num_warps=plan.num_warps,
        )  # fmt: skip
        return dx, s
    geo = common.Geometry((rv, dv, ov), r.dtype, split)
    common.launcher(relu_stats_kernel)[geo.grid](
        rv, dv, ov, geo.partial, geo.c, geo.p, geo.p_per_split, float(upper),
        *rv.stride(), *dv.stride(), *ov.stride(),
        ACC=geo.acc, HAS_UPPER=has_upper, NEED_DX=need_dx, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
        ALIGN=geo.align, CHANNELS_CONTIGUOUS=geo.channels_contiguous, num_warps=geo.num_warps,
    )  # fmt: skip
    return dx, geo.result()


relu_stats_op = common.register("triton_relu_stats", relu_stats_op)
