"""Shared pieces of the Triton kernels: layout normalisation, tile and split heuristics, op registration.

Every tensor a kernel reads is viewed as ``[N, C, P]`` (example, channel, position) with three
strides, without a copy whenever the position dims collapse into one stride (NCHW, channels_last,
``[N, C]``, ``[N, T, C]``, transposes, channel slices); anything else is copied once (slow path).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..contract import stat_dtype

# Tests set this to True: outputs are then pre-filled with NaN, so an element a kernel forgets to write
# shows up as NaN instead of as a lucky zero.
POISON_OUTPUTS = False

TILE_ELEMENTS = 4096  # elements of x (and dx) one program iteration loads
MAX_BLOCK_P = 1024
MAX_BLOCK_C_CHANNELS_LAST = 128


@triton.jit
def downcast(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)`` rounding to nearest-even, also for bfloat16 under the interpreter (which would
    truncate); on GPUs this is what the native conversion does anyway."""
    if tl.bfloat16 == DTYPE:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN stays NaN
    else:
        return x.to(DTYPE)


@triton.jit
def program_tile(C, P, p_per_split, BLOCK_C: tl.constexpr):
    """This program's example ``n``, channels ``c`` (int64, with their mask) and position chunk
    ``[p_begin, p_end)`` of chunk ``split`` (grid: examples x channel blocks x position chunks)."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    p_begin = split * p_per_split
    return n, c.to(tl.int64), c < C, split, p_begin, tl.minimum(p_begin + p_per_split, P)


@triton.jit
def store_partial(partial_ptr, s, n, c, c_ok, split, C):
    """One partial sum per channel into the ``[N, C, SPLIT]`` buffer (second stage: finish_split)."""
    tl.store(partial_ptr + (n * C + c) * tl.num_programs(2) + split, s, mask=c_ok)


def new_empty(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def new_empty_like(t: torch.Tensor) -> torch.Tensor:
    """Same shape, dtype and (for dense tensors) strides as ``t``."""
    out = torch.empty_like(t)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def as_ncp(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``t`` viewed as ``[N, C, P]`` (a copy only when its position dims do not share one stride)."""
    t = t.movedim(channel_dim, 1) if channel_dim != 1 else t
    if t.dim() == 2:
        return t.unsqueeze(2)
    spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    collapsible = all(outer[1] == inner[0] * inner[1] for outer, inner in zip(spatial, spatial[1:]))
    if not collapsible:
        t = t.contiguous()
        spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    positions = 1
    for size, _ in spatial:
        positions *= size
    position_stride = spatial[-1][1] if spatial else 1
    return t.as_strided((t.shape[0], t.shape[1], positions), (t.stride(0), t.stride(1), position_stride))


def tiles(ncp: torch.Tensor) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: coalesced along whichever of channels / positions is contiguous."""
    channels, positions = ncp.shape[1], ncp.shape[2]
    if ncp.stride(1) == 1 and ncp.stride(2) != 1 and channels > 1:  # channels_last, [N, T, C]
        block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C_CHANNELS_LAST)
        block_p = max(1, min(triton.next_power_of_2(positions), TILE_ELEMENTS // block_c))
    else:  # NCHW, [N, C, L]
        block_p = min(triton.next_power_of_2(max(positions, 1)), MAX_BLOCK_P)  # no positions: one empty tile
        block_c = max(1, min(triton.next_power_of_2(channels), TILE_ELEMENTS // block_p))
    return block_c, block_p


def default_split(programs: int, positions: int, block_p: int, device: torch.device) -> int:
    """How many position chunks each (n, channel block) is split into, to fill the device when N*C is
    small and positions are many. Fixed for given shapes and device, so results stay deterministic."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(positions, 4 * block_p)))


def finish_split(partial: torch.Tensor) -> torch.Tensor:
    """Second stage of the two-stage reduction: ``[N, C, SPLIT] -> [N, C]`` in a fixed order."""
    return partial[:, :, 0] if partial.shape[2] == 1 else partial.sum(2)


class Geometry:
    """Launch geometry of one reduction over ``view`` (``[N, C, P]``): tiles, grid, position chunks,
    and the partial-sum buffer."""

    def __init__(self, view: torch.Tensor, dtype: torch.dtype, split: int):
        self.n, self.c, self.p = view.shape
        self.block_c, self.block_p = tiles(view)
        blocks = triton.cdiv(self.c, self.block_c)
        self.split = split if split > 0 else default_split(self.n * blocks, self.p, self.block_p, view.device)
        self.p_per_split = triton.cdiv(max(self.p, 1), self.split)
        self.grid = (self.n, blocks, self.split)
        acc = stat_dtype(dtype)
        self.acc = tl.float64 if acc == torch.float64 else tl.float32
        self.partial = new_empty((self.n, self.c, self.split), acc, view.device)

    def result(self) -> torch.Tensor:
        return finish_split(self.partial)


def register(name: str, fn):
    """Register ``fn`` as the ``torch.library`` op ``rgprune_fast::name`` (``triton_op`` on torch >= 2.6,
    so that compiled graphs can call it); on older torch the plain function is used."""
    triton_op = getattr(torch.library, "triton_op", None)
    if triton_op is None:
        return fn
    return triton_op(f"rgprune_fast::{name}", mutates_args=())(fn)


def launcher(kernel):
    """``wrap_triton(kernel)`` where torch has it (traceable launches), else the kernel itself."""
    wrap = getattr(torch.library, "wrap_triton", None)
    return wrap(kernel) if wrap is not None else kernel
