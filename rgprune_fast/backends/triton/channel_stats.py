"""Triton: the generic statistic ``s[N, C] = sum_p x * dx`` (kernels, launcher, op).

Tiled kernel: one program reduces one (example, channel block, position chunk) tile by tile in a fixed
order and writes one partial per channel; the chunks are summed in a fixed order afterwards (two-stage,
deterministic, no atomics). Row-group kernel (``common.RowGroups``): contiguous rows that are not
16-byte aligned, streamed ``R`` rows at a time with 16-byte loads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import program_tile, row_group_at, row_group_tile, store_partial, store_rows, tile_offsets


@triton.jit
def channel_stats_kernel(
    x_ptr, dx_ptr, partial_ptr,
    C, P, p_per_split,
    sxn, sxc, sxp, sdn, sdc, sdp,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ALIGN: tl.constexpr, CHANNELS_CONTIGUOUS: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C, ALIGN, CHANNELS_CONTIGUOUS)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        x = tl.load(x_ptr + tile_offsets(n, c64, p, sxn, sxc, sxp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        dx = tl.load(dx_ptr + tile_offsets(n, c64, p, sdn, sdc, sdp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        acc += x.to(ACC) * dx.to(ACC)
    store_partial(partial_ptr, tl.sum(acc, axis=1), n, c64, c_ok, split, C)


@triton.jit
def channel_stats_rows_kernel(
    x_ptr, dx_ptr, s_ptr, groups, groups_per_program,
    P: tl.constexpr, R: tl.constexpr, FLAT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    local, hot, rows = row_group_tile(P, R, FLAT)
    first = tl.program_id(0) * groups_per_program
    for i in range(0, groups_per_program):
        base, ok, live = row_group_at(first + i, groups, local, P, R)
        x = tl.load(x_ptr + base + local, mask=ok, other=0.0).to(ACC)
        dx = tl.load(dx_ptr + base + local, mask=ok, other=0.0).to(ACC)
        store_rows(s_ptr, first + i, rows, tl.sum(tl.where(hot, (x * dx)[:, None], 0.0), axis=0), live, R)


def channel_stats_op(x: torch.Tensor, dx: torch.Tensor, channel_dim: int, split: int) -> torch.Tensor:
    """``s[N, C]`` (float32; float64 for float64 input). ``split <= 0`` picks the position split."""
    xv, dv = common.as_ncp(x, channel_dim), common.as_ncp(dx, channel_dim)
    plan = common.row_groups((xv, dv))
    if plan is not None:
        s = common.new_empty(xv.shape[:2], common.stat_dtype(x.dtype), x.device)
        common.launcher(channel_stats_rows_kernel)[plan.grid](
            xv, dv, s, plan.groups, plan.groups_per_program,
            P=plan.p, R=plan.r, FLAT=plan.flat, ACC=common.acc_type(x.dtype), num_warps=plan.num_warps,
        )  # fmt: skip
        return s
    geo = common.Geometry((xv, dv), x.dtype, split)
    common.launcher(channel_stats_kernel)[geo.grid](
        xv, dv, geo.partial, geo.c, geo.p, geo.p_per_split, *xv.stride(), *dv.stride(),
        ACC=geo.acc, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
        ALIGN=geo.align, CHANNELS_CONTIGUOUS=geo.channels_contiguous, num_warps=geo.num_warps,
    )  # fmt: skip
    return geo.result()


channel_stats_op = common.register("triton_channel_stats", channel_stats_op)
