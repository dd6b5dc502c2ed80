"""The CUDA kernels of the extension on a GPU, beyond the (backend, device) matrix of
test_backends.py (which runs them against the float64 brute force, and score() end to end): opcheck on
CUDA tensors and agreement with the Triton kernels. Skipped, with the reason, where backend "cuda"
cannot load; on a CPU-only machine the kernels' logic runs under emulation (test_cuda_emulated.py)."""

import pytest
import torch
from reference import rel_err

from rgprune_fast.backends import load_backend, why_unavailable

REASON = why_unavailable("cuda", torch.device("cuda"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no CUDA backend here: {REASON}")
DEV = torch.device("cuda")


def test_opcheck_cuda():
    from rgprune_fast.backends.extension import loader

    loader.load()  # registers the fake implementations
    ops = torch.ops.rgprune_fast
    x = torch.randn(2, 5, 4, 3, device=DEV)
    for a in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(ops.channel_stats.default, (a, torch.randn_like(a), 1))
        torch.library.opcheck(ops.relu_stats.default, (a.relu(), torch.randn_like(a), 6.0, 1, True))
        ones = torch.ones(5, device=DEV)
        torch.library.opcheck(ops.batchnorm_stats.default, (a, torch.randn_like(a), ones * 0, ones, ones, True))


@pytest.mark.skipif(why_unavailable("triton", DEV) is not None, reason="no Triton backend here")
@pytest.mark.parametrize("channels_last", [False, True])
def test_agrees_with_triton(channels_last):
    cuda, triton = load_backend("cuda", DEV), load_backend("triton", DEV)
    x = torch.randn(32, 128, 28, 28, device=DEV, dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    assert rel_err(cuda.channel_stats(x, dy, 1), triton.channel_stats(x, dy, 1)) <= 1e-5


def _rows_apart(t: torch.Tensor, stride: int, channels_last: bool) -> torch.Tensor:
    """`t` ([N, C, P] or, channels-last, [N, C, H, W]) copied into a NaN-filled buffer whose rows (the P
    positions of a channel; channels-last, the C channels of a position) start `stride` elements apart."""
    if channels_last:
        n, c, h, w = t.shape
        buf = torch.full((n, h, w, stride), float("nan"), dtype=t.dtype, device=t.device)
        view = buf[..., :c].permute(0, 3, 1, 2)
    else:
        n, c, p = t.shape
        buf = torch.full((n, c, stride), float("nan"), dtype=t.dtype, device=t.device)
        view = buf[..., :p]
    view.copy_(t)
    return view


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_load_widths_agree_bit_for_bit(dtype, channels_last):
    """The kernels read rows that start 16-byte aligned with 16-byte loads, else in 8- or 4-byte pieces when
    they are that aligned, else element by element (load_width in stats_cuda.cu), always in the same order:
    the same data with rows 16, 8, 4 or 2 bytes aligned gives the same bits (sums and dz / dx)."""
    from rgprune_fast.backends.extension import loader

    loader.load()
    ops = torch.ops.rgprune_fast
    es = torch.empty((), dtype=dtype).element_size()
    # NCHW 14 x 14 maps (rows of 196 elements) / channels-last with C = 100: whole packs and a partial one.
    shape = (3, 100, 7, 5) if channels_last else (3, 6, 196)
    row = shape[1] if channels_last else shape[2]
    base = -(-row // (16 // es)) * (16 // es)  # 16-byte rows
    strides = [base + extra // es for extra in (0, 8, 4, 2) if extra == 0 or extra >= es]
    gen = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(shape, device=DEV, generator=gen).to(dtype)
    dy = torch.randn(shape, device=DEV, generator=gen).to(dtype)
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    c = shape[1]
    mean, scale, shift = (torch.randn(c, device=DEV, generator=gen, dtype=stat) for _ in range(3))

    def results(stride):
        a, b, r = (_rows_apart(t, stride, channels_last) for t in (x, dy, (x * 4).clamp(0, 6)))
        out = [ops.channel_stats(a, b, 1)]
        out += list(ops.relu_stats(r, b, None, 1, True)) + list(ops.relu_stats(r, b, 6.0, 1, True))
        out += list(ops.batchnorm_stats(a, b, mean, scale, shift, True))
        return [o.contiguous() for o in out]

    want = results(strides[0])
    for stride in strides[1:]:
        got = results(stride)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert torch.equal(g, w), f"row stride {stride * es} bytes: result {i} differs from 16-byte rows"
