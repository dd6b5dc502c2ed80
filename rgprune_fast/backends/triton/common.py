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
MAX_ALIGN = 16  # elements; the widest hint worth giving (16 bytes is the widest load)
ROW_GROUP_CELLS = 4096  # FLAT * R of a row-group program: its one-hot [FLAT, R] tile stays in registers


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
def hinted(v, A: tl.constexpr):
    """``v``, a multiple of ``A`` (the launcher checked it: :func:`alignment`), written so that Triton's
    alignment analysis can see it: its JIT only marks integers divisible by 16, so without this a row of
    196 elements would be read element by element although every row starts 8-byte aligned.
    (``tl.multiple_of`` does not survive on scalar kernel arguments.)"""
    if A > 1:
        return (v // A) * A
    else:
        return v


@triton.jit
def program_tile(C, P, p_per_split, BLOCK_C: tl.constexpr, ALIGN: tl.constexpr, CHANNELS_CONTIGUOUS: tl.constexpr):
    """This program's example ``n``, channels ``c`` (int64, with their mask) and position chunk
    ``[p_begin, p_end)`` of chunk ``split`` (grid: examples x channel blocks x position chunks)."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    if CHANNELS_CONTIGUOUS:
        c_ok = c < hinted(C, ALIGN)
        p_begin = split * p_per_split
        p_end = tl.minimum(p_begin + p_per_split, P)
    else:
        c_ok = c < C
        p_begin = hinted(split * p_per_split, ALIGN)
        p_end = hinted(tl.minimum(p_begin + p_per_split, P), ALIGN)
    return n, c.to(tl.int64), c_ok, split, p_begin, p_end


@triton.jit
def tile_offsets(n, c, p, sn, sc, sp, ALIGN: tl.constexpr, CHANNELS_CONTIGUOUS: tl.constexpr):
    """Element offsets of the ``[BLOCK_C, BLOCK_P]`` tile, with the non-contiguous terms declared
    multiples of ``ALIGN`` so that the contiguous dim is read with the widest loads it allows."""
    row = hinted(n * sn, ALIGN)
    if CHANNELS_CONTIGUOUS:
        return row + c[:, None] * sc + hinted(p * sp, ALIGN)[None, :]
    else:
        return row + hinted(c * sc, ALIGN)[:, None] + p[None, :] * sp


@triton.jit
def row_group_tile(P: tl.constexpr, R: tl.constexpr, FLAT: tl.constexpr):
    """A row-group program's element offsets ``[FLAT]``, their one-hot row selection ``[FLAT, R]``
    (rows ``local // P``; all false past ``R * P``) and the row indices ``[R]``."""
    local = tl.arange(0, FLAT)
    rows = tl.arange(0, R)
    return local, (local // P)[:, None] == rows[None, :], rows


@triton.jit
def row_group_at(g, groups, local, P: tl.constexpr, R: tl.constexpr):
    """Group ``g``'s first element (a multiple of 16 bytes: ``R * P * itemsize`` is), the mask of its
    elements, and whether it exists (the last program's last groups may not)."""
    live = g < groups
    return g.to(tl.int64) * (R * P), (local < R * P) & live, live


@triton.jit
def store_rows(s_ptr, g, rows, s, live, R: tl.constexpr):
    """The ``R`` row sums of group ``g`` into ``s`` (``[N * C]``, one per row)."""
    tl.store(s_ptr + g.to(tl.int64) * R + rows, s, mask=(rows < R) & live)


@triton.jit
def store_partial(partial_ptr, s, n, c, c_ok, split, C):
    """One partial sum per channel into the ``[N, C, SPLIT]`` buffer (second stage: finish_split)."""
    tl.store(partial_ptr + (n * C + c) * tl.num_programs(2) + split, s, mask=c_ok)


def acc_type(dtype: torch.dtype):
    """The kernels' accumulation type (:func:`stat_dtype` as a Triton type)."""
    return tl.float64 if stat_dtype(dtype) == torch.float64 else tl.float32


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
    if channels_contiguous(ncp):  # channels_last, [N, T, C], [N, C]
        cap = TILE_ELEMENTS if positions == 1 else MAX_BLOCK_C_CHANNELS_LAST
        block_c = min(triton.next_power_of_2(channels), cap)
        block_p = max(1, min(triton.next_power_of_2(positions), TILE_ELEMENTS // block_c))
    else:  # NCHW, [N, C, L]
        block_p = min(triton.next_power_of_2(max(positions, 1)), MAX_BLOCK_P)  # no positions: one empty tile
        block_c = max(1, min(triton.next_power_of_2(channels), TILE_ELEMENTS // block_p))
    return block_c, block_p


def channels_contiguous(ncp: torch.Tensor) -> bool:
    """Whether the tile is coalesced along channels (channels_last, ``[N, T, C]``, ``[N, C]``) rather
    than positions."""
    return ncp.stride(1) == 1 and (ncp.stride(2) != 1 or ncp.shape[2] == 1) and ncp.shape[1] > 1


def alignment(*values: int) -> int:
    """The largest power of two (at most ``MAX_ALIGN``) dividing every value."""
    align = MAX_ALIGN
    for v in values:
        while align > 1 and v % align:
            align //= 2
    return align


def tile_alignment(views, p_per_split: int) -> int:
    """``ALIGN`` of the tiled kernels: every term :func:`tile_offsets` and :func:`program_tile` declare a
    multiple of it, for every tensor the kernel reads or writes (the stride of a dim of size 1 only ever
    multiplies 0)."""
    n, c, p = views[0].shape
    if channels_contiguous(views[0]):
        dims, values = (0, 2), [c]
    else:
        dims, values = (0, 1), [p, p_per_split]
    return alignment(*values, *(t.stride(d) for t in views for d in dims if t.shape[d] > 1))


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (the launch heuristics size grids by it; 0 off CUDA:
    the interpreter, where fewer programs are faster)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_split(programs: int, positions: int, block_p: int, device: torch.device) -> int:
    """How many position chunks each (n, channel block) is split into, to fill the device when N*C is
    small and positions are many. Fixed for given shapes and device, so results stay deterministic."""
    sms = multiprocessors(device)
    if not sms:
        return 1
    target = 4 * sms
    if programs >= target or programs == 0:  # programs == 0: an empty batch, nothing to split
        return 1
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(positions, 4 * block_p)))


def finish_split(partial: torch.Tensor) -> torch.Tensor:
    """Second stage of the two-stage reduction: ``[N, C, SPLIT] -> [N, C]`` in a fixed order."""
    return partial[:, :, 0] if partial.shape[2] == 1 else partial.sum(2)


class Geometry:
    """Launch geometry of one tiled reduction over ``views`` (``[N, C, P]`` each; the first decides the
    tiling): tiles, grid, position chunks, alignment hint and the partial-sum buffer."""

    def __init__(self, views, dtype: torch.dtype, split: int):
        view = views[0]
        self.n, self.c, self.p = view.shape
        self.block_c, self.block_p = tiles(view)
        blocks = triton.cdiv(self.c, self.block_c)
        self.split = split if split > 0 else default_split(self.n * blocks, self.p, self.block_p, view.device)
        self.p_per_split = triton.cdiv(max(self.p, 1), self.split)
        if self.split > 1 and not channels_contiguous(view):
            # chunks that start on 16-element boundaries keep their loads as wide as the rows allow
            self.p_per_split = triton.cdiv(self.p_per_split, MAX_ALIGN) * MAX_ALIGN
            self.split = triton.cdiv(max(self.p, 1), self.p_per_split)
        self.grid = (self.n, blocks, self.split)
        # 16 elements of each tensor per thread at most: 32 kept the BatchNorm kernel's two accumulators and
        # two inputs in 200+ registers (8 resident warps; spills with Triton 3.6)
        # (and at least 8 per thread in small tiles: with 4 warps a 32 x 16 tile read 4 bf16 at a time)
        tile = self.block_c * self.block_p
        self.num_warps = 8 if tile >= TILE_ELEMENTS else max(1, min(4, tile // (32 * 8)))
        self.channels_contiguous = channels_contiguous(view)
        self.align = tile_alignment(views, self.p_per_split)
        self.acc = acc_type(dtype)
        self.partial = new_empty((self.n, self.c, self.split), stat_dtype(dtype), view.device)

    def result(self) -> torch.Tensor:
        return finish_split(self.partial)


class RowGroups:
    """Launch plan of the row-group kernels, for contiguous ``[N, C, P]`` tensors whose rows are not
    16-byte aligned (bf16 at 14x14 and 7x7: rows of 392 and 98 bytes).

    A tiled program reads rows, so it can only load as widely as each row's start is aligned. A
    row-group program instead streams ``R`` whole rows as one aligned run of ``R * P`` elements
    (``R * P * itemsize`` is a multiple of 16 bytes), reads it with 16-byte loads, and reduces it per row
    through a ``[FLAT, R]`` one-hot selection; every row is summed by one program in a fixed order
    (exact, deterministic, no atomics). ``R`` divides ``C``, so a group never leaves its example and its
    channels are ``c0 .. c0 + R - 1``."""

    def __init__(self, rows: int, positions: int, r: int, device: torch.device):
        self.p, self.r = positions, r
        self.flat = triton.next_power_of_2(r * positions)
        self.groups = rows // r
        sms = multiprocessors(device)
        programs = min(self.groups, 8 * sms if sms else 4)
        self.groups_per_program = triton.cdiv(self.groups, programs)
        self.grid = (triton.cdiv(self.groups, self.groups_per_program),)
        self.num_warps = row_group_warps(self.flat)


def row_group_warps(flat: int) -> int:
    """Warps of a row-group program: at least 8 consecutive elements per thread (16-byte loads for 2-byte
    types), at most 4 warps."""
    return max(1, min(4, flat // (32 * 8)))


def row_group_fits(r: int, positions: int) -> bool:
    """Whether ``r`` rows of ``positions`` fit one program: the ``[FLAT, R]`` one-hot within
    ``ROW_GROUP_CELLS`` and at most 64 cells per thread (more spilled: fp32 BatchNorm, 16 rows of 13)."""
    flat = triton.next_power_of_2(r * positions)
    return flat * r <= ROW_GROUP_CELLS and flat * r <= 64 * 32 * row_group_warps(flat)


def row_groups(views) -> RowGroups | None:
    """The row-group plan for ``views`` (``[N, C, P]`` each), or ``None`` when the tiled kernels serve
    them as well: rows already 16-byte aligned, a position dim that is not contiguous, ``C`` not a
    multiple of the group, or rows too long to stream ``R`` of them through registers."""
    n, c, p = views[0].shape
    row_bytes = [p * v.element_size() for v in views]
    if p < 2 or n * c == 0 or all(b % 16 == 0 for b in row_bytes) or not all(v.is_contiguous() for v in views):
        return None
    r = max(16 // alignment(b) for b in row_bytes)  # the fewest rows that make an aligned run
    if c % r or not row_group_fits(r, p):
        return None
    while c % (2 * r) == 0 and 2 * r <= 16 and row_group_fits(2 * r, p):
        r *= 2
    return RowGroups(n * c, p, r, views[0].device)


def kernel_variant(views, dtype: torch.dtype) -> tuple:
    """Which kernel design the launchers pick for ``views`` (``[N, C, P]`` each, in launch order; meta
    tensors will do) and its compile-time parameters: ``("rows", R, FLAT, num_warps)`` (:func:`row_groups`)
    or ``("tiled", BLOCK_C, BLOCK_P, ALIGN, CHANNELS_CONTIGUOUS, num_warps)`` (:class:`Geometry`). The
    position split is left out: it depends on the batch (a 2-example slice splits where a full batch does
    not) and changes which positions a program reads, not the kernel; ``ALIGN`` is the same either way
    (chunks start on 16-position boundaries). Allocates nothing."""
    plan = row_groups(views)
    if plan is not None:
        return "rows", plan.r, plan.flat, plan.num_warps
    meta = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta") for v in views]
    geo = Geometry(meta, dtype, 1)
    return "tiled", geo.block_c, geo.block_p, geo.align, geo.channels_contiguous, geo.num_warps


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
