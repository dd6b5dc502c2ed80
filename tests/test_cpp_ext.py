"""The C++ extension's CPU kernels beyond the (backend, device) matrix of test_backends.py: op
registration (opcheck against the fake implementations), determinism across thread counts, both CPU
kernel sets, layouts and blockings the matrix does not reach, output layouts, fallbacks, and the
reasons given when the extension cannot serve."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reference import assert_stats_close, native_channel_stats, rel_err
from reference import channel_stats as reference

from rgprune_fast.backends import load_backend, select_backend, stat_dtype, why_unavailable
from rgprune_fast.backends.extension import loader
from rgprune_fast.errors import BackendUnavailableError

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(why_unavailable("cpp", CPU) is not None, reason=str(why_unavailable("cpp", CPU)))
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def cpp():
    return load_backend("cpp", CPU)


def ops():
    loader.load()
    return torch.ops.rgprune_fast


def samples():
    """(x, dx, channel dim) in layouts the kernels treat differently."""
    cl = torch.randn(2, 5, 4, 3).contiguous(memory_format=torch.channels_last)
    yield torch.randn(2, 5, 4, 3), torch.randn(2, 5, 4, 3), 1
    yield cl, torch.randn_like(cl), 1
    yield cl, torch.randn(2, 5, 4, 3), 1  # dx in another layout than x
    yield torch.randn(3, 7, 6), torch.randn(3, 7, 6), 2  # [N, T, C]
    yield torch.randn(4, 9), torch.randn(4, 9), 1  # [N, C]
    yield torch.randn(2, 8, 6, 5)[:, ::2, :, 1:4], torch.randn(2, 4, 6, 3), 1  # fits no layout: copied
    yield torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), 2  # channel dim in the middle


@pytest.mark.parametrize("i", range(7))
def test_opcheck(i):
    x, dx, cdim = list(samples())[i]
    o = ops()
    c = x.shape[cdim]
    torch.library.opcheck(o.channel_stats.default, (x, dx, cdim))
    torch.library.opcheck(o.relu_stats.default, (torch.relu(x), dx, None, cdim, True))
    torch.library.opcheck(o.relu_stats.default, (torch.relu(x), dx, 6.0, cdim, False))
    if cdim == 1:
        mean, scale, shift = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
        torch.library.opcheck(o.batchnorm_stats.default, (x, dx, mean, scale, shift, True))
        torch.library.opcheck(o.batchnorm_stats.default, (x, dx, mean, scale, shift, False))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts_beyond_the_matrix(cpp, dtype):
    for x, dx, cdim in samples():
        x, dx = x.to(dtype), dx.to(dtype)
        s = cpp.channel_stats(x, dx, cdim)
        assert s.dtype == stat_dtype(dtype)
        assert_stats_close(s, reference(x, dx, cdim), dtype, native_channel_stats(x, dx, cdim))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 600, 3, 5), (3, 40, 130, 2), (1, 3, 300, 7), (5, 1, 1, 1)])
def test_channel_blocks_and_chunks(cpp, shape, channels_last):
    """Channels-last blocks (C > 256), position chunks (P > 128), single items; BN and ReLU too."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    c = shape[1]
    mean, scale, shift = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
    assert rel_err(cpp.channel_stats(x, dy, 1), reference(x, dy, 1)) <= 1e-5
    dz, s = cpp.batchnorm_stats(x, dy, mean, scale, shift, need_dz=True)
    view = (1, -1, 1, 1)
    xb = (x.double() - mean.double().view(view)) * scale.double().view(view) + shift.double().view(view)
    assert rel_err(s, reference(xb, dy, 1)) <= 1e-5
    assert torch.equal(dz, dy * scale.view(view))
    r = torch.relu(x)
    dx, s = cpp.relu_stats(r, dy, None, 1, need_dx=True)
    assert torch.equal(dx, torch.where(r > 0, dy, 0.0))
    assert rel_err(s, reference(r, dx, 1)) <= 1e-5


def test_outputs_are_laid_out_like_empty_like(cpp):
    """dz / dx follow dy / dr's layout (as the fake implementation says), also when that differs from z's."""
    z = torch.randn(2, 6, 5, 4).contiguous(memory_format=torch.channels_last)
    for dy in (
        torch.randn(2, 6, 5, 4),
        torch.randn_like(z),
        torch.randn(2, 6, 5, 4).transpose(2, 3).contiguous().transpose(2, 3),
    ):
        ones = torch.ones(6)
        dz, _ = cpp.batchnorm_stats(z, dy, torch.zeros(6), ones * 2, ones, need_dz=True)
        assert dz.stride() == torch.empty_like(dy).stride()
        assert torch.equal(dz, dy * 2)
        dx, _ = cpp.relu_stats(torch.relu(z), dy, None, 1, need_dx=True)
        assert dx.stride() == torch.empty_like(dy).stride()


def test_no_examples(cpp):
    x = torch.randn(0, 4, 3)
    assert cpp.channel_stats(x, x, 1).shape == (0, 4)


def test_mixed_dtypes_fall_back_to_the_reference(cpp):
    x, dx = torch.randn(2, 3, 4), torch.randn(2, 3, 4).half()
    ref = load_backend("torch", CPU).channel_stats(x, dx, 1)
    assert torch.equal(cpp.channel_stats(x, dx, 1), ref)


def test_bad_arguments_are_reported():
    o = ops()
    with pytest.raises(RuntimeError, match="shapes differ"):
        o.channel_stats(torch.randn(2, 3), torch.randn(2, 4), 1)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        o.channel_stats(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32), 1)
    with pytest.raises(RuntimeError, match="channel dim cannot be dim 0"):
        o.channel_stats(torch.randn(2, 3), torch.randn(2, 3), 0)
    with pytest.raises(RuntimeError, match="scale must be"):
        o.batchnorm_stats(
            torch.randn(2, 3), torch.randn(2, 3), torch.zeros(3), torch.ones(3).double(), torch.zeros(3), True
        )


@pytest.mark.parametrize("channels_last", [False, True])
def test_deterministic_across_calls_and_threads(cpp, channels_last):
    x = torch.randn(8, 48, 20, 20)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    c = x.shape[1]
    mean, scale, shift = torch.randn(c), torch.rand(c), torch.randn(c)
    threads = torch.get_num_threads()

    def run():
        return (
            cpp.channel_stats(x, dy, 1),
            *cpp.batchnorm_stats(x, dy, mean, scale, shift, True),
            *cpp.relu_stats(torch.relu(x), dy, 6.0, 1, True),
        )

    first = run()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for a, b in zip(first, run()):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


SUBPROCESS = textwrap.dedent(
    """
    import sys, torch
    from rgprune_fast.backends.extension import loader
    from rgprune_fast.backends import load_backend
    ext = loader.load()
    torch.manual_seed(0)
    b = load_backend("cpp", torch.device("cpu"))
    out = {"isa": ext.cpu_isa}
    for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for cl in (False, True):
            x = torch.randn(3, 21, 7, 5).to(dt)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            dy = torch.randn_like(x)
            c = x.shape[1]
            acc = torch.float64 if dt == torch.float64 else torch.float32
            mean, scale, shift = (torch.randn(c, dtype=acc) for _ in range(3))
            s = b.channel_stats(x, dy, 1)
            bn = b.batchnorm_stats(x, dy, mean, scale, shift, True)
            out[(str(dt), cl)] = (x, dy, mean, scale, shift, s, bn, b.relu_stats(x.relu(), dy, 6.0, 1, True))
    torch.save(out, sys.argv[1])
    """
)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_both_cpu_kernel_sets(tmp_path, capability):
    """ATEN_CPU_CAPABILITY picks the kernel set, as it does for ATen; both match the reference."""
    if capability == "avx2" and loader.load().cpu_isa != "AVX2":
        pytest.skip("this CPU or build has no AVX2 kernels")
    path = tmp_path / "out.pt"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", SUBPROCESS, str(path)], check=True, env=env, cwd=ROOT)
    out = torch.load(path, weights_only=False)
    assert out.pop("isa") == capability.upper()
    for x, dy, mean, scale, shift, s, (dz, s_bn), (dx, s_relu) in out.values():
        dtype = x.dtype
        assert_stats_close(s, reference(x, dy, 1), dtype, native_channel_stats(x, dy, 1))
        view = (1, -1, 1, 1)
        xb = (x.double() - mean.double().view(view)) * scale.double().view(view) + shift.double().view(view)
        native_bn = native_channel_stats(xb.to(dtype), dy, 1)
        assert_stats_close(s_bn, reference(xb, dy, 1), dtype, native_bn)
        assert torch.equal(dz, (dy.to(scale.dtype) * scale.view(view)).to(dy.dtype))
        r = x.relu()
        assert torch.equal(dx, torch.where((r > 0) & (r < 6), dy, torch.zeros((), dtype=dy.dtype)))
        assert_stats_close(s_relu, reference(r, dx, 1), dtype, native_channel_stats(r, dx, 1))


def test_selection_and_reasons():
    assert select_backend("auto", CPU).name == "cpp"
    assert select_backend("cpp", CPU).name == "cpp"
    with pytest.raises(BackendUnavailableError, match="backend 'cpp' cannot score on cuda.*CPU kernels"):
        load_backend("cpp", torch.device("cuda"))
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot score on cpu"):
        load_backend("cuda", CPU)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            load_backend("cuda", torch.device("cuda"))


def test_disabled_by_environment():
    code = (
        "import torch, rgprune_fast as rg\n"
        "from rgprune_fast.backends import select_backend, why_unavailable\n"
        "cpu = torch.device('cpu')\n"
        "assert select_backend('auto', cpu).name == 'torch'\n"
        "print(why_unavailable('cpp', cpu))\n"
    )
    env = dict(os.environ, RGPRUNE_NO_EXT="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    assert "disabled by RGPRUNE_NO_EXT=1" in out.stdout
