"""Triton: fused eval-mode BatchNorm backward that also yields the statistic (kernel, launcher,
op).

With ``x = (z - mean) * scale + shift`` per channel, one pass over the BN input ``z`` (kept by
autograd anyway) and the incoming ``dy`` writes ``dz = dy * scale`` and reduces
``s = scale * sum_p (z - mean) * dy + shift * sum_p dy`` (centred, so a large running mean does not
cancel against the shift term). ``x`` itself is never stored. A tiled kernel, and a row-group kernel
for contiguous rows that are not 16-byte aligned (``common.RowGroups``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import downcast, program_tile, row_group_at, row_group_tile, store_partial, store_rows, tile_offsets


@triton.jit
def batchnorm_stats_kernel(
    z_ptr, dy_ptr, dz_ptr, mean_ptr, scale_ptr, shift_ptr, partial_ptr,
    C, P, p_per_split,
    szn, szc, szp, sdn, sdc, sdp, son, soc, sop,
    ACC: tl.constexpr, NEED_DZ: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ALIGN: tl.constexpr, CHANNELS_CONTIGUOUS: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C, ALIGN, CHANNELS_CONTIGUOUS)
    mean = tl.load(mean_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    shift = tl.load(shift_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    centred_dot = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    dy_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        z = tl.load(z_ptr + tile_offsets(n, c64, p, szn, szc, szp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        dy = tl.load(dy_ptr + tile_offsets(n, c64, p, sdn, sdc, sdp, ALIGN, CHANNELS_CONTIGUOUS), mask=ok, other=0.0)
        z, dy = z.to(ACC), dy.to(ACC)
        centred_dot += (z - mean[:, None]) * dy  # dy is 0 outside the tile
        dy_sum += dy
        if NEED_DZ:
            out = dz_ptr + tile_offsets(n, c64, p, son, soc, sop, ALIGN, CHANNELS_CONTIGUOUS)
            tl.store(out, downcast(dy * scale[:, None], dz_ptr.dtype.element_ty), mask=ok)
    s = scale * tl.sum(centred_dot, axis=1) + shift * tl.sum(dy_sum, axis=1)
    store_partial(partial_ptr, s, n, c64, c_ok, split, C)


@triton.jit
def batchnorm_stats_rows_kernel(
    z_ptr, dy_ptr, dz_ptr, mean_ptr, scale_ptr, shift_ptr, s_ptr, C, groups, groups_per_program,
    P: tl.constexpr, R: tl.constexpr, FLAT: tl.constexpr, ACC: tl.constexpr, NEED_DZ: tl.constexpr,
):  # fmt: skip
    local, hot, rows = row_group_tile(P, R, FLAT)
    channel_of = tl.minimum(local // P, R - 1)  # past R * P: any row (those elements are masked off)
    first = tl.program_id(0) * groups_per_program
    for i in range(0, groups_per_program):
        base, ok, live = row_group_at(first + i, groups, local, P, R)
        c = ((first + i).to(tl.int64) * R) % C + rows  # R divides C: the group's channels
        mean = tl.load(mean_ptr + c, mask=live, other=0.0).to(ACC)
        scale = tl.load(scale_ptr + c, mask=live, other=0.0).to(ACC)
        shift = tl.load(shift_ptr + c, mask=live, other=0.0).to(ACC)
        z = tl.load(z_ptr + base + local, mask=ok, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + base + local, mask=ok, other=0.0).to(ACC)
        mean_at = tl.gather(mean, channel_of, 0)  # each element's channel's value
        centred_dot = tl.sum(tl.where(hot, ((z - mean_at) * dy)[:, None], 0.0), axis=0)
        dy_sum = tl.sum(tl.where(hot, dy[:, None], 0.0), axis=0)
        if NEED_DZ:
            scale_at = tl.gather(scale, channel_of, 0)
            tl.store(dz_ptr + base + local, downcast(dy * scale_at, dz_ptr.dtype.element_ty), mask=ok)
        store_rows(s_ptr, first + i, rows, scale * centred_dot + shift * dy_sum, live, R)


def batchnorm_stats_op(
    z: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    need_dz: bool, split: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(dz, s)``; ``dz`` is an empty ``[0]`` tensor when ``need_dz`` is false."""
    zv, dv = common.as_ncp(z, 1), common.as_ncp(dy, 1)
    dz = common.new_empty_like(dy) if need_dz else dy.new_empty(0)
    ov = common.as_ncp(dz, 1) if need_dz else dv
    plan = common.row_groups((zv, dv, ov))
    if plan is not None:
        s = common.new_empty(zv.shape[:2], common.stat_dtype(z.dtype), z.device)
        common.launcher(batchnorm_stats_rows_kernel)[plan.grid](
            zv, dv, ov, mean, scale, shift, s, zv.shape[1], plan.groups, plan.groups_per_program,
            P=plan.p, R=plan.r, FLAT=plan.flat, ACC=common.acc_type(z.dtype), NEED_DZ=need_dz,
            num_warps=plan.num_warps,
        )  # fmt: skip
        return dz, s
    geo = common.Geometry((zv, dv, ov), z.dtype, split)
    common.launcher(batchnorm_stats_kernel)[geo.grid](
        zv, dv, ov, mean, scale, shift, geo.partial, geo.c, geo.p, geo.p_per_split,
        *zv.stride(), *dv.stride(), *ov.stride(),
        ACC=geo.acc, NEED_DZ=need_dz, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
        ALIGN=geo.align, CHANNELS_CONTIGUOUS=geo.channels_contiguous, num_warps=geo.num_warps,
    )  # fmt: skip
    return dz, geo.result()


batchnorm_stats_op = common.register("triton_batchnorm_stats", batchnorm_stats_op)
