"""Triton: the generic statistic ``s[N, C] = sum_p x * dx`` (kernel, launcher, op, reference).

One program reduces one (example, channel block, position chunk) tile by tile in a fixed order and
writes one partial per channel; the chunks are summed in a fixed order afterwards (two-stage,
deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_common as common


@triton.jit
def channel_stats_kernel(
    x_ptr, dx_ptr, partial_ptr,
    C, P, p_per_split,
    sxn, sxc, sxp, sdn, sdc, sdp,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = c < C
    c64 = c.to(tl.int64)
    p_begin = split * p_per_split
    p_end = tl.minimum(p_begin + p_per_split, P)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        x = tl.load(x_ptr + n * sxn + c64[:, None] * sxc + p[None, :] * sxp, mask=ok, other=0.0)
        dx = tl.load(dx_ptr + n * sdn + c64[:, None] * sdc + p[None, :] * sdp, mask=ok, other=0.0)
        acc += x.to(ACC) * dx.to(ACC)
    s = tl.sum(acc, axis=1)
    num_splits = tl.num_programs(2)
    tl.store(partial_ptr + (n * C + c64) * num_splits + split, s, mask=c_ok)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _channel_stats(x: torch.Tensor, dx: torch.Tensor, channel_dim: int, split: int) -> torch.Tensor:
    xv, dv = common.as_ncp(x, channel_dim), common.as_ncp(dx, channel_dim)
    n, c, p = xv.shape
    block_c, block_p = common.tiles(xv)
    blocks = triton.cdiv(c, block_c)
    if split <= 0:
        split = common.default_split(n * blocks, p, block_p, x.device)
    p_per_split = triton.cdiv(max(p, 1), split)
    acc = common.acc_dtype(x.dtype)
    partial = common.new_empty((n, c, split), acc, x.device)
    common.launcher(channel_stats_kernel)[(n, blocks, split)](
        xv, dv, partial, c, p, p_per_split, *xv.stride(), *dv.stride(),
        ACC=_tl_dtype(x.dtype), BLOCK_C=block_c, BLOCK_P=block_p,
    )  # fmt: skip
    return common.finish_split(partial)


def channel_stats_op(x: torch.Tensor, dx: torch.Tensor, channel_dim: int, split: int) -> torch.Tensor:
    """``s[N, C]`` (float32; float64 for float64 input). ``split <= 0`` picks the position split."""
    return _channel_stats(x, dx, channel_dim, split)


channel_stats_op = common.register("triton_channel_stats", channel_stats_op)


def channel_stats_reference(x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """What the kernel computes, in plain torch (for reading; the tests use a float64 oracle)."""
    acc = common.acc_dtype(x.dtype)
    dims = [d for d in range(1, x.dim()) if d != channel_dim]
    prod = x.to(acc) * dx.to(acc)
    return prod.sum(dims) if dims else prod
