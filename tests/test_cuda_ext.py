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
