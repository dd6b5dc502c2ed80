"""Triton: the generic statistic ``s[N, C] = sum_p x * dx`` (kernel, launcher, op).

One program reduces one (example, channel block, position chunk) tile by tile in a fixed order and
writes one partial per channel; the chunks are summed in a fixed order afterwards (two-stage,
deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import program_tile, store_partial


@triton.jit
def channel_stats_kernel(
    x_ptr, dx_ptr, partial_ptr,
    C, P, p_per_split,
    sxn, sxc, sxp, sdn, sdc, sdp,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        x = tl.load(x_ptr + n * sxn + c64[:, None] * sxc + p[None, :] * sxp, mask=ok, other=0.0)
        dx = tl.load(dx_ptr + n * sdn + c64[:, None] * sdc + p[None, :] * sdp, mask=ok, other=0.0)
        acc += x.to(ACC) * dx.to(ACC)
    store_partial(partial_ptr, tl.sum(acc, axis=1), n, c64, c_ok, split, C)


def channel_stats_op(x: torch.Tensor, dx: torch.Tensor, channel_dim: int, split: int) -> torch.Tensor:
    """``s[N, C]`` (float32; float64 for float64 input). ``split <= 0`` picks the position split."""
    xv, dv = common.as_ncp(x, channel_dim), common.as_ncp(dx, channel_dim)
    geo = common.Geometry(xv, x.dtype, split)
    common.launcher(channel_stats_kernel)[geo.grid](
        xv, dv, geo.partial, geo.c, geo.p, geo.p_per_split, *xv.stride(), *dv.stride(),
        ACC=geo.acc, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
    )  # fmt: skip
    return geo.result()


channel_stats_op = common.register("triton_channel_stats", channel_stats_op)
