"""The CUDA kernels of rgprune_fast._C on a GPU (skipped where backend "cuda" cannot load, with the
reason): the layouts x dtypes x odd shapes of the CPU backend matrix against the float64 oracle,
the fused BatchNorm / ReLU variants, output layouts, determinism, opcheck, score() end to end, and
agreement with the Triton kernels where those exist. On a CPU-only machine the kernels' logic is
tested under emulation instead (test_cuda_emulated.py)."""

import pytest
import torch
from oracle import rel_err
from test_backends import BN_SHAPES, DTYPES, LAYOUTS, LOW, bn_inputs, bn_reference, check

from rgprune_fast.backends import load_backend, select_backend, why_unavailable

REASON = why_unavailable("cuda", torch.device("cuda"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no CUDA backend here: {REASON}")
DEV = torch.device("cuda")


def on_gpu(t: torch.Tensor) -> torch.Tensor:
    """A CUDA copy with exactly the same sizes and strides (gaps included)."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=DEV)
    return out.copy_(t)


@pytest.fixture(scope="module")
def cuda():
    return load_backend("cuda", DEV)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,c,p", [(2, 5, 7), (1, 1, 1), (3, 3, 4099), (4, 64, 1), (2, 3, 70001), (64, 256, 49)])
def test_channel_stats(cuda, layout, dtype, n, c, p):
    x, cdim = LAYOUTS[layout](n, c, p)
    x = x.to(dtype)
    dx = torch.randn_like(x, dtype=torch.float32).to(dtype)
    s = cuda.channel_stats(on_gpu(x), on_gpu(dx), cdim)
    assert s.device.type == "cuda"
    check(s.cpu(), x, dx, cdim, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels_last", BN_SHAPES + [((8, 300, 33, 17), True), ((2, 3, 50000), False)])
def test_batchnorm_stats(cuda, shape, dtype, channels_last):
    z, dy, mean, var, weight, shift = bn_inputs(shape, dtype, channels_last)
    scale, acc = weight * torch.rsqrt(var + 1e-5), mean.dtype
    dz, s = cuda.batchnorm_stats(on_gpu(z), on_gpu(dy), mean.to(DEV), scale.to(DEV), shift.to(DEV), need_dz=True)
    s_ref, _ = bn_reference(z, dy, mean, scale, shift)
    view = [1, -1] + [1] * (z.dim() - 2)
    assert dz.stride() == torch.empty_like(on_gpu(dy)).stride()
    assert torch.equal(dz.cpu(), (dy.to(acc) * scale.view(view)).to(dtype))  # one rounding, as torch_ref
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1e-3
    assert rel_err(s.cpu(), s_ref) <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("upper", [None, 6.0])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc", "ntc", "strided"])
def test_relu_stats(cuda, layout, dtype, upper):
    x, cdim = LAYOUTS[layout](3, 40, 77)
    x = (x * 5).to(dtype)
    x[0, 0] = 0
    dr = torch.randn_like(x, dtype=torch.float32).to(dtype)
    r = torch.relu(x) if upper is None else torch.nn.functional.hardtanh(x, 0.0, upper)
    dx, s = cuda.relu_stats(on_gpu(r), on_gpu(dr), upper, cdim, need_dx=True)
    mask = (r > 0) & (r < (upper if upper is not None else float("inf")))
    dx_ref = torch.where(mask, dr, torch.zeros((), dtype=dtype))
    assert torch.equal(dx.cpu(), dx_ref)
    if dtype in LOW:
        assert rel_err(s.cpu(), (r.double() * dx_ref.double()).sum([d for d in range(1, r.dim()) if d != cdim])) <= 1e-3
    else:
        check(s.cpu(), r, dx_ref, cdim, dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic(cuda, channels_last, dtype):
    x = torch.randn(16, 96, 40, 40, device=DEV, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    c = x.shape[1]
    mean, scale, shift = (torch.randn(c, device=DEV) for _ in range(3))
    first = (cuda.channel_stats(x, dy, 1), *cuda.batchnorm_stats(x, dy, mean, scale, shift, True))
    for _ in range(3):
        again = (cuda.channel_stats(x, dy, 1), *cuda.batchnorm_stats(x, dy, mean, scale, shift, True))
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_opcheck_cuda():
    import rgprune_fast._ext  # noqa: F401 - registers the fake implementations

    ops = torch.ops.rgprune_fast
    x = torch.randn(2, 5, 4, 3, device=DEV)
    xl = x.contiguous(memory_format=torch.channels_last)
    for a in (x, xl):
        torch.library.opcheck(ops.channel_stats.default, (a, torch.randn_like(a), 1))
        torch.library.opcheck(ops.relu_stats.default, (a.relu(), torch.randn_like(a), 6.0, 1, True))
        ones = torch.ones(5, device=DEV)
        torch.library.opcheck(ops.batchnorm_stats.default, (a, torch.randn_like(a), ones * 0, ones, ones, True))


def test_selection():
    expected = "triton" if why_unavailable("triton", DEV) is None else "cuda"
    assert select_backend("auto", DEV).name == expected
    assert select_backend("cuda", DEV).name == "cuda"


def test_score_cuda_matches_torch():
    from models import randomize

    import rgprune_fast as rg
    from benchmarks.common import import_torchvision

    torch.manual_seed(0)
    model = randomize(import_torchvision().models.resnet18()).to(DEV).eval()
    data = [torch.randn(8, 3, 64, 64, device=DEV) for _ in range(2)]
    methods = ["taylorfo", "taylorfo_abs", "taylorfo_sq", "molchanov_bn"]
    ours = rg.score(model, data, method=methods, backend="cuda")
    ref = rg.score(model, data, method=methods, backend="torch")
    for m in methods:
        for name in ref[m]:
            assert rel_err(ours[m][name], ref[m][name]) <= 1e-4, (m, name)
    again = rg.score(model, data, method=methods, backend="cuda")
    assert all(torch.equal(again[m][k], ours[m][k]) for m in methods for k in ours[m])


@pytest.mark.skipif(why_unavailable("triton", DEV) is not None, reason="no Triton backend here")
@pytest.mark.parametrize("channels_last", [False, True])
def test_agrees_with_triton(cuda, channels_last):
    triton = load_backend("triton", DEV)
    x = torch.randn(32, 128, 28, 28, device=DEV, dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    assert rel_err(cuda.channel_stats(x, dy, 1), triton.channel_stats(x, dy, 1)) <= 1e-5
