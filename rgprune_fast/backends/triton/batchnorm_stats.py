"""Triton: fused eval-mode BatchNorm backward that also yields the statistic (kernel, launcher,
op).

With ``x = (z - mean) * scale + shift`` per channel, one pass over the BN input ``z`` (kept by
autograd anyway) and the incoming ``dy`` writes ``dz = dy * scale`` and reduces
``s = scale * sum_p (z - mean) * dy + shift * sum_p dy`` (centred, so a large running mean does not
cancel against the shift term). ``x`` itself is never stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import downcast, program_tile, store_partial


@triton.jit
def batchnorm_stats_kernel(
    z_ptr, dy_ptr, dz_ptr, mean_ptr, scale_ptr, shift_ptr, partial_ptr,
    C, P, p_per_split,
    szn, szc, szp, sdn, sdc, sdp, son, soc, sop,
    ACC: tl.constexpr, NEED_DZ: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c64, c_ok, split, p_begin, p_end = program_tile(C, P, p_per_split, BLOCK_C)
    mean = tl.load(mean_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    shift = tl.load(shift_ptr + c64, mask=c_ok, other=0.0).to(ACC)
    centred_dot = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    dy_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        z = tl.load(z_ptr + n * szn + c64[:, None] * szc + p[None, :] * szp, mask=ok, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + n * sdn + c64[:, None] * sdc + p[None, :] * sdp, mask=ok, other=0.0).to(ACC)
        centred_dot += (z - mean[:, None]) * dy  # dy is 0 outside the tile
        dy_sum += dy
        if NEED_DZ:
            out = dz_ptr + n * son + c64[:, None] * soc + p[None, :] * sop
            tl.store(out, downcast(dy * scale[:, None], dz_ptr.dtype.element_ty), mask=ok)
    s = scale * tl.sum(centred_dot, axis=1) + shift * tl.sum(dy_sum, axis=1)
    store_partial(partial_ptr, s, n, c64, c_ok, split, C)


def batchnorm_stats_op(
    z: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    need_dz: bool, split: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(dz, s)``; ``dz`` is an empty ``[0]`` tensor when ``need_dz`` is false."""
    zv, dv = common.as_ncp(z, 1), common.as_ncp(dy, 1)
    dz = common.new_empty_like(dy) if need_dz else dy.new_empty(0)
    ov = common.as_ncp(dz, 1) if need_dz else dv
    geo = common.Geometry(zv, z.dtype, split)
    common.launcher(batchnorm_stats_kernel)[geo.grid](
        zv, dv, ov, mean, scale, shift, geo.partial, geo.c, geo.p, geo.p_per_split,
        *zv.stride(), *dv.stride(), *ov.stride(),
        ACC=geo.acc, NEED_DZ=need_dz, BLOCK_C=geo.block_c, BLOCK_P=geo.block_p,
    )  # fmt: skip
    return dz, geo.result()


batchnorm_stats_op = common.register("triton_batchnorm_stats", batchnorm_stats_op)
