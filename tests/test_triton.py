"""Triton-specific checks (the matrix in test_backends.py covers layouts, dtypes and the criteria
update): position splits with poisoned outputs, the two-stage reduction's fixed order, op
registration, score() end to end, and Triton as an optional dependency. Without a GPU these run under
the Triton interpreter (tests/conftest.py)."""

import subprocess
import sys

import models
import pytest
import reference as ref
import torch
from oracle import oracle_scores

import rgprune_fast as rg
from rgprune_fast.backends import why_unavailable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    why_unavailable("triton", DEVICE) is not None, reason=f"triton on {DEVICE}: {why_unavailable('triton', DEVICE)}"
)


@pytest.fixture()
def poisoned():
    """Outputs pre-filled with NaN: an element a kernel forgets to write shows up."""
    from rgprune_fast.backends.triton import common

    common.POISON_OUTPUTS = True
    yield
    common.POISON_OUTPUTS = False


@pytest.mark.parametrize("split", [1, 2, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_position_splits_agree(poisoned, split, channels_last):
    from rgprune_fast.backends.triton.batchnorm_stats import batchnorm_stats_op
    from rgprune_fast.backends.triton.channel_stats import channel_stats_op
    from rgprune_fast.backends.triton.relu_stats import relu_stats_op

    x = torch.randn(2, 3, 17, 9, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dx = torch.randn_like(x)
    s = channel_stats_op(x, dx, 1, split)
    ref.assert_stats_close(s, ref.channel_stats(x, dx, 1), torch.float32)
    mean, scale, shift = torch.randn(3), torch.rand(3) + 0.5, torch.randn(3)
    dz, s_bn = batchnorm_stats_op(x, dx, *(v.to(DEVICE) for v in (mean, scale, shift)), True, split)
    s_bn_ref, dz_ref = ref.batchnorm_stats(x, dx, mean, scale, shift)
    ref.assert_stats_close(s_bn, s_bn_ref, torch.float32)
    assert ref.rel_err(dz, dz_ref) <= 1e-6
    assert dz.stride() == dx.stride()  # same memory format as the incoming gradient
    r = torch.relu(x)
    dr, s_relu = relu_stats_op(r, dx, 6.0, True, 1, True, split)
    dr_ref, s_relu_ref = ref.relu_stats(r, dx, 6.0, 1)
    assert torch.equal(dr.cpu(), dr_ref)
    ref.assert_stats_close(s_relu, s_relu_ref, torch.float32)
    for out in (s, dz, s_bn, dr, s_relu):
        assert not out.isnan().any()


def test_split_is_a_fixed_order_sum_of_chunks():
    """A split reduction equals, bit for bit, each position chunk reduced alone (split 1) and the
    partials added in chunk order: the second stage is a fixed-order sum, not a race."""
    from rgprune_fast.backends.triton.channel_stats import channel_stats_op

    chunk = 2048  # three chunks; the same tiles (1024 positions) whole or sliced, so the same programs
    x = torch.randn(2, 4, 3 * chunk, device=DEVICE)
    dx = torch.randn_like(x)
    partials = [
        channel_stats_op(x[..., i : i + chunk], dx[..., i : i + chunk], 1, 1) for i in range(0, 3 * chunk, chunk)
    ]
    in_order = torch.stack(partials, 2).sum(2)
    assert torch.equal(channel_stats_op(x, dx, 1, 3), in_order)


def test_ops_are_registered():
    import rgprune_fast.backends.triton  # noqa: F401
    from rgprune_fast.backends.triton import batchnorm_stats, channel_stats, relu_stats  # noqa: F401

    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch < 2.6 has no triton_op: the kernels are called directly")
    x = torch.randn(2, 3, 4, device=DEVICE)
    s = torch.ops.rgprune_fast.triton_channel_stats(x, x, 1, 1)
    torch.testing.assert_close(s, (x * x).sum(2))
    zeros, ones = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
    dz, s_bn = torch.ops.rgprune_fast.triton_batchnorm_stats(x, x, zeros, ones, zeros, False, 1)
    assert dz.numel() == 0
    torch.testing.assert_close(s_bn, s)
    dr, s_relu = torch.ops.rgprune_fast.triton_relu_stats(x.relu(), x, 0.0, False, 1, True, 1)
    torch.testing.assert_close(dr, torch.where(x > 0, x, 0))
    torch.testing.assert_close(s_relu, (x.relu() * x).sum(2))


@pytest.mark.parametrize("name", ["resnet18", "token_mlp", "vgg_no_bn", "mlp"])
def test_score_end_to_end(name):
    # Not a batch of one: PyTorch's own CPU convolution backward (oneDNN) can round a 1-example,
    # 1x1-map 3x3 conv differently on its first call in a process, which no scorer can make bit-stable.
    model, data = models.make(name).to(DEVICE), models.batches(name, sizes=(2, 3))
    data = [(x.to(DEVICE), t.to(DEVICE)) for x, t in data]
    methods = list(rg.METHODS)
    ours = rg.score(model, data, method=methods, gradient="label", backend="triton")
    keys = models.expected_units(name, model)
    assert list(ours["taylorfo"]) == keys
    cpu_data = [(x.cpu(), t.cpu()) for x, t in data]
    expected = oracle_scores(model.cpu(), cpu_data, keys, methods, "label", True, dtype=None)
    for m in methods:
        for k in expected[m]:
            assert ref.rel_err(ours[m][k], expected[m][k]) <= 1e-5, (m, k)
    again = rg.score(model.to(DEVICE), data, method=methods, gradient="label", backend="triton")
    assert all(torch.equal(ours[m][k], again[m][k]) for m in methods for k in ours[m])


def test_explicit_triton_on_cpu_without_interpreter(monkeypatch):
    from rgprune_fast.backends import triton as triton_backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(rg.BackendUnavailableError, match="CUDA devices"):
        triton_backend.load(torch.device("cpu"))


def test_rgprune_fast_works_without_triton():
    """Triton is optional: with it unimportable, scoring works and backend='triton' says why not."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, rgprune_fast as rg\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))\n"
        "print(sorted(rg.score(m, torch.randn(3, 4))))\n"
        "try:\n"
        "    rg.score(m, torch.randn(3, 4), backend='triton')\n"
        "except rg.BackendUnavailableError as e:\n"
        "    print('unavailable:', e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stderr[-3000:]}"
    out = run.stdout
    assert "['0']" in out
    assert "triton is not installed" in out
