"""The backend contract (rgprune_fast/backends/contract.py) on every (backend, device) pair of the matrix
(tests/matrix.py) against the float64 brute force (tests/reference.py): layouts x dtypes x odd shapes
and strides, the fused BatchNorm / ReLU variants, the criteria update, output layouts, determinism."""

import models
import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rgprune_fast as rg
from rgprune_fast.backends import AUTO_ORDER, RunningSums, select_backend, why_unavailable

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LAYOUTS = {  # (n, c, p) -> (x, channel dim)
    "nchw": lambda n, c, p: (torch.randn(n, c, p, 3), 1),
    "channels_last": lambda n, c, p: (torch.randn(n, c, p, 3).contiguous(memory_format=torch.channels_last), 1),
    "nc": lambda n, c, p: (torch.randn(n, c), 1),
    "ntc": lambda n, c, p: (torch.randn(n, p, c), 2),
    "ncl": lambda n, c, p: (torch.randn(n, c, p), 1),
    "strided": lambda n, c, p: (torch.randn(n, 2 * c, p, 5)[:, ::2, :, 1:4], 1),
    "transposed_ntc": lambda n, c, p: (torch.randn(n, c, p).transpose(1, 2), 2),
}
SHAPES = [(2, 5, 7), (1, 1, 1), (3, 3, 4099), (4, 64, 1), (2, 3, 20001), (16, 256, 7)]


def check_stats(s, x, dx, cdim, dtype):
    assert s.dtype == rg.backends.stat_dtype(dtype)
    native = ref.native_channel_stats(x, dx, cdim) if dtype in ref.LOW_PRECISION else None
    magnitude = ref.channel_stats(x.abs(), dx.abs(), cdim)
    ref.assert_stats_close(s, ref.channel_stats(x, dx, cdim), dtype, native, magnitude)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,c,p", SHAPES)
def test_channel_stats(backend, layout, dtype, n, c, p):
    x, cdim = LAYOUTS[layout](n, c, p)
    x = x.to(dtype)
    dx = torch.randn_like(x, dtype=torch.float32).to(dtype)
    s = backend.impl.channel_stats(backend.put(x), backend.put(dx), cdim)
    assert s.device.type == backend.device.type
    check_stats(s, x, dx, cdim, dtype)


BN_SHAPES = [  # (shape, channels_last)
    ((2, 5, 7, 3), False),
    ((2, 5, 7, 3), True),
    ((1, 1, 1, 1), False),
    ((1, 1, 1, 1), True),
    ((3, 3, 4099), False),
    ((4, 6), False),
    ((4, 300, 9, 7), True),
]


def bn_inputs(shape, dtype, channels_last):
    """An eval BatchNorm's input z (offset, so the mean matters), output gradient dy, running statistics
    and affine parameters (in the statistics dtype)."""
    c = shape[1]
    z = (torch.randn(shape) * 2 + 3).to(dtype)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(z, dtype=torch.float32).to(dtype)
    acc = rg.backends.stat_dtype(dtype)
    mean, var = torch.randn(c, dtype=acc) + 3, torch.rand(c, dtype=acc) + 0.5
    weight, bias = torch.randn(c, dtype=acc), torch.randn(c, dtype=acc)
    return z, dy, mean, var, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels_last", BN_SHAPES)
def test_batchnorm_stats(backend, shape, dtype, channels_last):
    z, dy, mean, var, weight, shift = bn_inputs(shape, dtype, channels_last)
    scale = weight * torch.rsqrt(var + 1e-5)
    args = [backend.put(t) for t in (z, dy, mean, scale, shift)]
    dz, s = backend.impl.batchnorm_stats(*args, need_dz=True)
    s_ref, dz_ref = ref.batchnorm_stats(z, dy, mean, scale, shift)
    assert dz.dtype == dy.dtype and dz.shape == dy.shape
    assert dz.stride() == torch.empty_like(args[1]).stride()  # laid out like the incoming gradient
    # dz is rounded once from the statistics dtype, as the torch reference does
    view = [1, -1] + [1] * (z.dim() - 2)
    assert torch.equal(dz.cpu(), (dy.to(scale.dtype) * scale.view(view)).to(dtype))
    if dtype in ref.LOW_PRECISION:
        # PyTorch's own BatchNorm forward in this dtype hands on a rounded x: the yardstick for s
        f32 = [v.float() for v in (mean, var, weight, shift)]
        x_native = torch.nn.functional.batch_norm(z, f32[0], f32[1], f32[2], f32[3], False, 0.0, 1e-5)
        ref.assert_stats_close(s, s_ref, dtype, ref.native_channel_stats(x_native, dy, 1))
    else:
        ref.assert_stats_close(s, s_ref, dtype)
        assert ref.rel_err(dz, dz_ref) <= ref.TOLERANCE[dtype]
    dz_none, s2 = backend.impl.batchnorm_stats(*args, need_dz=False)
    assert dz_none is None and torch.equal(s, s2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("upper", [None, 6.0])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc", "ntc", "strided"])
def test_relu_stats(backend, layout, dtype, upper):
    x, cdim = LAYOUTS[layout](3, 40, 9)
    x = (x * 5).to(dtype)
    x[0, 0] = 0  # exact zeros: the mask boundary
    dr = torch.randn_like(x, dtype=torch.float32).to(dtype)
    r = torch.relu(x) if upper is None else torch.nn.functional.hardtanh(x, 0.0, upper)
    dx, s = backend.impl.relu_stats(backend.put(r), backend.put(dr), upper, cdim, need_dx=True)
    dx_ref, _ = ref.relu_stats(r, dr, upper, cdim)
    assert torch.equal(dx.cpu(), dx_ref)
    assert dx.stride() == torch.empty_like(backend.put(dr)).stride()
    check_stats(s, r, dx_ref, cdim, dtype)
    dx_none, s2 = backend.impl.relu_stats(backend.put(r), backend.put(dr), upper, cdim, need_dx=False)
    assert dx_none is None and torch.equal(s, s2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("present", [("s",), ("s", "abs", "sq", "batch_sq")], ids=["sum-only", "all-sums"])
def test_fold_criteria(backend, dtype, present):
    """Three batches folded into the running sums against float64 sums; a batch with an Inf flags
    exactly its channels with its batch number, and absent sums stay absent."""
    c = 200
    zeros = {k: torch.zeros(c, dtype=dtype, device=backend.device) for k in ("s", "abs", "sq", "batch_sq")}
    first_bad = torch.full((c,), -1, dtype=torch.int64, device=backend.device)
    sums = RunningSums(zeros["s"], first_bad, *(zeros[k] if k in present else None for k in ("abs", "sq", "batch_sq")))
    batches = [torch.randn(5, c, dtype=dtype) for _ in range(3)]
    batches[1][2, 150] = float("inf")
    for b, s in enumerate(batches):
        backend.impl.fold_criteria(backend.put(s), b, sums)
    finite = [s.double().masked_fill(~torch.isfinite(s), 0) for s in batches]
    expected = {
        "s": sum(s.sum(0) for s in finite),
        "abs": sum(s.abs().sum(0) for s in finite),
        "sq": sum(s.square().sum(0) for s in finite),
        "batch_sq": sum(s.sum(0).square() for s in finite),
    }
    tol = ref.TOLERANCE[dtype]
    for key in ("s", "abs", "sq", "batch_sq"):
        got = getattr(sums, key)
        if key not in present:
            assert got is None
            continue
        assert not torch.isfinite(got[150]), key  # the Inf propagates
        ok = torch.arange(c) != 150
        assert ref.rel_err(got.cpu()[ok], expected[key][ok]) <= tol, key
    flags = sums.first_bad.cpu()
    assert flags[150] == 1 and (flags[torch.arange(c) != 150] == -1).all()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 9),
    spatial=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    channel_last=st.booleans(),
)
def test_channel_stats_any_shape(n, c, spatial, channel_last):
    """Every available pair on hypothesis' shapes (a loop: hypothesis does not mix with fixtures)."""
    import matrix

    shape = [n] + (spatial + [c] if channel_last else [c] + spatial)
    x, dx = torch.randn(shape), torch.randn(shape)
    cdim = len(shape) - 1 if channel_last else 1
    for name, device in matrix.PAIRS:
        if matrix.unavailable(name, device) is None:
            case = matrix.load_case((name, device))
            check_stats(case.impl.channel_stats(case.put(x), case.put(dx), cdim), x, dx, cdim, torch.float32)


def test_inputs_not_written_and_outputs_fresh(backend):
    """Inputs are read-only; outputs never alias them."""
    x, dx = backend.put(torch.randn(2, 3, 5, 4)), backend.put(torch.randn(2, 3, 5, 4))
    r = torch.relu(x)
    before = [t.clone() for t in (x, dx, r)]
    s = backend.impl.channel_stats(x, dx, 1)
    mean, scale, shift = (backend.put(v) for v in (torch.zeros(3), torch.ones(3), torch.zeros(3)))
    dz, s_bn = backend.impl.batchnorm_stats(x, dx, mean, scale, shift, need_dz=True)
    dr, s_relu = backend.impl.relu_stats(r, dx, None, 1, need_dx=True)
    assert all(torch.equal(a, b) for a, b in zip((x, dx, r), before))
    inputs = {t.untyped_storage().data_ptr() for t in (x, dx, r)}
    assert all(out.untyped_storage().data_ptr() not in inputs for out in (s, dz, s_bn, dr, s_relu))
    torch.testing.assert_close(s, s_bn, rtol=1e-6, atol=1e-6)  # scale 1, shift 0: x itself


def test_expanded_gradient(backend):
    """A gradient with stride 0 (as from ``.sum()``) is read right."""
    x = torch.randn(3, 4, 5, 6)
    dx = torch.ones(()).expand_as(x)
    s = backend.impl.channel_stats(backend.put(x), dx.to(backend.device), 1)
    check_stats(s, x, dx, 1, torch.float32)


def test_empty_positions(backend):
    """No positions: s is all zeros; dz keeps its (empty) shape."""
    x = backend.put(torch.randn(2, 3, 0))
    assert torch.equal(backend.impl.channel_stats(x, x, 1).cpu(), torch.zeros(2, 3))
    ones = backend.put(torch.ones(3))
    dz, s = backend.impl.batchnorm_stats(x, x, ones * 0, ones, ones, need_dz=True)
    assert dz.shape == x.shape and torch.equal(s.cpu(), torch.zeros(2, 3))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic(backend, channels_last, dtype):
    """Same inputs, same bits: no reduction order left to chance (atomics, thread counts)."""
    x = torch.randn(4, 96, 20, 20).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x, dy = backend.put(x), backend.put(torch.randn_like(x))
    mean, scale, shift = (backend.put(torch.randn(96)) for _ in range(3))

    def run():
        return (
            backend.impl.channel_stats(x, dy, 1),
            *backend.impl.batchnorm_stats(x, dy, mean, scale, shift, True),
            *backend.impl.relu_stats(torch.relu(x), dy, 6.0, 1, True),
        )

    first = run()
    assert all(torch.equal(a, b) for a, b in zip(first, run()))


@pytest.mark.parametrize("name", ["conv_bn_relu", "resnet18", "vgg_no_bn"])
def test_score_agrees_with_the_torch_backend(backend, name):
    """score() end to end on each pair (BatchNorm, ReLU and generic taps, the criteria update): the torch
    backend's scores on the same device within float32 rounding, and the same bits on a second call."""
    model = models.make(name).to(backend.device)
    data = [x.to(backend.device) for x, _ in models.batches(name, sizes=(2, 3))]
    methods = ["taylorfo", "taylorfo_abs", "taylorfo_sq", "molchanov_bn"]
    ours = rg.score(model, data, method=methods, backend=backend.name)
    torch_scores = rg.score(model, data, method=methods, backend="torch")
    for m in methods:
        for key, value in torch_scores[m].items():
            assert ref.rel_err(ours[m][key], value) <= ref.TOLERANCE[torch.float32], (m, key)
    again = rg.score(model, data, method=methods, backend=backend.name)
    assert all(torch.equal(again[m][k], ours[m][k]) for m in methods for k in ours[m])


def test_backend_selection():
    """``auto`` takes the first available backend of AUTO_ORDER for the device, else torch; explicit
    backends that cannot serve say why."""
    cpu = torch.device("cpu")
    assert AUTO_ORDER["cpu"] == ("cpp",)
    expected = "cpp" if why_unavailable("cpp", cpu) is None else "torch"
    assert select_backend("auto", cpu).name == expected
    assert select_backend("torch", cpu).name == "torch"
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        expected = next((b for b in AUTO_ORDER["cuda"] if why_unavailable(b, gpu) is None), "torch")
        assert select_backend("auto", gpu).name == expected
    else:
        with pytest.raises(rg.BackendUnavailableError, match="backend 'cuda' cannot score on cuda: .*no CUDA device"):
            select_backend("cuda", torch.device("cuda"))
    with pytest.raises(rg.BackendUnavailableError, match="backend 'cuda' cannot score on cpu"):
        select_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown backend 'nope'.*auto, triton, cuda, cpp, torch"):
        select_backend("nope", cpu)
