"""The reduction contract (rgprune_fast/backends/base.py) of every backend available here against a
float64 brute force, over layouts, dtypes, odd shapes and strides, with poisoned memory around.

A backend joins this matrix by being listed in ``CPU_BACKENDS`` (``tests/backends_available.py``)."""

import pytest
import torch
from backends_available import CPU_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import rel_err

from rgprune_fast.backends import load_backend, select_backend
from rgprune_fast.errors import BackendUnavailableError

LOW = (torch.bfloat16, torch.float16)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return load_backend(request.param, torch.device("cpu"))


def reference_stats(x, dx, channel_dim):
    x, dx = x.double(), dx.double()
    dims = [d for d in range(1, x.dim()) if d != channel_dim]
    return (x * dx).sum(dims) if dims else x * dx


def torch_native_stats(x, dx, channel_dim):
    """What plain PyTorch computes in the input dtype: its own error is our yardstick for bf16/fp16."""
    dims = [d for d in range(1, x.dim()) if d != channel_dim]
    prod = x * dx
    return prod.sum(dims) if dims else prod


def check(ours, x, dx, channel_dim, dtype):
    ref = reference_stats(x, dx, channel_dim)
    assert ours.shape == ref.shape
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    err = rel_err(ours, ref)
    if dtype in LOW:
        native = rel_err(torch_native_stats(x, dx, channel_dim), ref)
        assert err <= 2 * native + 1e-6, (err, native)
    else:
        # Rounding error scales with sum |x * dx|, not with s: where s cancels to almost nothing (random
        # data, few positions), ||ours - ref|| / ||ref|| alone fails any float summation now and then.
        conditioned = (ours.double() - ref).norm() / reference_stats(x.abs(), dx.abs(), channel_dim).norm()
        assert min(err, float(conditioned)) <= (1e-12 if dtype == torch.float64 else 1e-5), err


LAYOUTS = {
    "nchw": lambda n, c, p: (torch.randn(n, c, p, 3), 1),
    "channels_last": lambda n, c, p: (torch.randn(n, c, p, 3).contiguous(memory_format=torch.channels_last), 1),
    "nc": lambda n, c, p: (torch.randn(n, c), 1),
    "ntc": lambda n, c, p: (torch.randn(n, p, c), 2),
    "ncl": lambda n, c, p: (torch.randn(n, c, p), 1),
    "strided": lambda n, c, p: (torch.randn(n, 2 * c, p, 5)[:, ::2, :, 1:4], 1),
    "transposed_ntc": lambda n, c, p: (torch.randn(n, c, p).transpose(1, 2), 2),
}
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,c,p", [(2, 5, 7), (1, 1, 1), (3, 3, 4099), (4, 64, 1)])
def test_channel_stats(backend, layout, dtype, n, c, p):
    x, cdim = LAYOUTS[layout](n, c, p)
    x = x.to(dtype)
    dx = torch.randn_like(x, dtype=torch.float32).to(dtype)
    check(backend.channel_stats(x, dx, cdim), x, dx, cdim, dtype)


def bn_reference(z, dy, mean, scale, shift):
    view = [1, -1] + [1] * (z.dim() - 2)
    x = (z.double() - mean.double().view(view)) * scale.double().view(view) + shift.double().view(view)
    return reference_stats(x, dy, 1), dy.double() * scale.double().view(view)


BN_SHAPES = [  # (shape, channels_last)
    ((2, 5, 7, 3), False),
    ((2, 5, 7, 3), True),
    ((1, 1, 1, 1), False),
    ((1, 1, 1, 1), True),
    ((3, 3, 4099), False),
    ((4, 6), False),
]


def bn_inputs(shape, dtype, channels_last):
    """An eval BatchNorm's input z (offset, so the mean matters), output gradient dy, running statistics
    and affine parameters (in the accumulation dtype)."""
    c = shape[1]
    z = (torch.randn(shape) * 2 + 3).to(dtype)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(z, dtype=torch.float32).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    mean, var = torch.randn(c, dtype=acc) + 3, torch.rand(c, dtype=acc) + 0.5
    weight, bias = torch.randn(c, dtype=acc), torch.randn(c, dtype=acc)
    return z, dy, mean, var, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels_last", BN_SHAPES)
def test_batchnorm_stats(backend, shape, dtype, channels_last):
    z, dy, mean, var, weight, bias = bn_inputs(shape, dtype, channels_last)
    scale, shift = weight * torch.rsqrt(var + 1e-5), bias
    dz, s = backend.batchnorm_stats(z, dy, mean, scale, shift, need_dz=True)
    s_ref, dz_ref = bn_reference(z, dy, mean, scale, shift)
    assert dz.dtype == dy.dtype and dz.shape == dy.shape
    if dtype in LOW:
        # PyTorch's own BatchNorm backward in this dtype, as the yardstick for dz
        zt = z.detach().requires_grad_(True)
        out = torch.nn.functional.batch_norm(
            zt,
            mean.to(torch.float32),
            var.to(torch.float32),
            weight.to(torch.float32),
            bias.to(torch.float32),
            False,
            0.0,
            1e-5,
        )
        (dz_native,) = torch.autograd.grad(out, zt, dy)
        assert rel_err(dz, dz_ref) <= 2 * rel_err(dz_native, dz_ref) + 1e-6
        x_native = out.detach()
        native = rel_err(reference_stats(x_native, dy, 1), s_ref)
        assert rel_err(s, s_ref) <= 2 * native + 1e-6
    else:
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert rel_err(dz, dz_ref) <= tol
        assert rel_err(s, s_ref) <= tol
    dz_none, s2 = backend.batchnorm_stats(z, dy, mean, scale, shift, need_dz=False)
    assert dz_none is None and torch.equal(s, s2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("upper", [None, 6.0])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc", "ntc"])
def test_relu_stats(backend, layout, dtype, upper):
    x, cdim = LAYOUTS[layout](3, 4, 9)
    x = (x * 5).to(dtype)
    x[0, 0] = 0  # exact zeros: the mask boundary
    dr = torch.randn_like(x, dtype=torch.float32).to(dtype)
    xt = x.detach().double().requires_grad_(True)
    r_ref = torch.relu(xt) if upper is None else torch.nn.functional.hardtanh(xt, 0.0, upper)
    (dx_ref,) = torch.autograd.grad(r_ref, xt, dr.double())
    r = torch.relu(x) if upper is None else torch.nn.functional.hardtanh(x, 0.0, upper)
    dx, s = backend.relu_stats(r, dr, upper, cdim, need_dx=True)
    assert torch.equal(dx.double(), dx_ref.to(dtype).double())
    check(s, x, dx_ref.to(dtype), cdim, dtype)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 9),
    spatial=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    channel_last=st.booleans(),
)
def test_channel_stats_any_shape(n, c, spatial, channel_last):
    shape = [n] + (spatial + [c] if channel_last else [c] + spatial)
    x, dx = torch.randn(shape), torch.randn(shape)
    cdim = len(shape) - 1 if channel_last else 1
    for name in CPU_BACKENDS:
        check(load_backend(name, torch.device("cpu")).channel_stats(x, dx, cdim), x, dx, cdim, torch.float32)


def test_inputs_not_written_and_outputs_fresh(backend):
    """Inputs are read-only; outputs never alias them (poisoned copies must stay bit-identical)."""
    x = torch.randn(2, 3, 5, 4)
    dx = torch.randn_like(x)
    x0, dx0 = x.clone(), dx.clone()
    s = backend.channel_stats(x, dx, 1)
    mean, scale, shift = torch.zeros(3), torch.ones(3), torch.zeros(3)
    dz, s_bn = backend.batchnorm_stats(x, dx, mean, scale, shift, need_dz=True)
    r = torch.relu(x)
    r0 = r.clone()
    dr, s_relu = backend.relu_stats(r, dx, None, 1, need_dx=True)
    assert torch.equal(x, x0) and torch.equal(dx, dx0) and torch.equal(r, r0)
    for out in (s, dz, s_bn, dr, s_relu):
        assert out.untyped_storage().data_ptr() not in {t.untyped_storage().data_ptr() for t in (x, dx, r)}
    torch.testing.assert_close(s, s_bn, rtol=1e-6, atol=1e-6)  # scale 1, shift 0: x itself


def test_backend_selection():
    assert select_backend("torch", torch.device("cpu")).name == "torch"
    assert select_backend("auto", torch.device("cpu")).name in CPU_BACKENDS
    with pytest.raises(BackendUnavailableError, match="cuda"):
        select_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend 'nope'.*auto, triton, cuda, cpp, torch"):
        select_backend("nope", torch.device("cpu"))
