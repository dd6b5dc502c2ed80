"""Triton: fused ReLU / ReLU6 backward that also yields the statistic (kernel, launcher, op).

From the ReLU output ``r`` (kept by autograd anyway) and ``dr``: ``dx = dr * [0 < r < upper]`` and
``s = sum_p r * dx``, which equals ``sum_p x * dx`` because ``r == x`` wherever the mask is 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import program_tile, store_partial


@triton.jit
def relu_stats_kernel(
    r_ptr, dr_ptr, dx_ptr, partial_ptr,
    C, P, p_per_split, upper,
    srn, src, srp, sdn, sdc, sdp, son, soc, sop,
    ACC: tl.constexpr, HAS_UPPER: tl.constexpr, NEED_DX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        r = tl.load(r_ptr + n * srn + c64[:, None] * src + p[None, :] * srp, mask=ok, other=0.0)
        dr = tl.load(dr_ptr + n * sdn + c64[:, None] * sdc + p[None, :] * sdp, mask=ok, other=0.0)
        keep = r > 0
        if HAS_UPPER:
            keep = keep & (r < upper)
        dx = tl.where(keep, dr, tl.zeros_like(dr))
        if NEED_DX:
            tl.store(dx_ptr + n * son + c64[:, None] * soc + p[None, :] * sop, dx, mask=ok)
        acc += r.to(ACC) * dx.to(ACC)
    store_partial(partial_ptr, tl.sum(acc, axis=1), n, c64, c_ok, split, C)


def relu_stats_op(
    r: torch.Tensor, dr: torch.Tensor, upper: float, has_upper: bool, channel_dim: int, need_dx: bool, split: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, s)``; ``dx`` is an empty ``[0]`` tensor when ``need_dx`` is false."""
    rv, dv = common.as_ncp(r, channel_dim), common.as_ncp(dr, channel_dim)
    dx = common.new_empty_like(dr) if need_dx else dr.new_empty(0)
    ov = common.as_ncp(dx, channel_dim) if need_dx else dv
    geo = common.Geometry(rv, r.dtype, split)
    common.launcher(relu_stats_kernel)[geo.grid](
        rv, dv, ov, geo.partial, geo.c, geo.p, geo.p_per_split, float(upper),
        *rv.stride(), *dv.stride(), *ov.stride(),
        ACC=geo.acc, HAS_UPPER=has_upper, NEED_DX=need_dx, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
    )  # fmt: skip
    return dx, geo.result()


relu_stats_op = common.register("triton_relu_stats", relu_stats_op)
