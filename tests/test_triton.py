"""Triton-specific checks (the shared backend matrix in test_backends.py covers layouts and dtypes):
position splits, poisoned outputs, the fused criteria update, op registration, and score() end to end
with backend="triton". Without a GPU these run under the Triton interpreter (tests/conftest.py)."""

import models
import pytest
import torch
from oracle import oracle_scores, rel_err

import rgprune_fast as rg
from rgprune_fast.backends import why_unavailable
from rgprune_fast.criteria import ChannelAccumulator, fold_torch

pytestmark = pytest.mark.skipif(
    why_unavailable("triton", torch.device("cpu")) is not None and not torch.cuda.is_available(),
    reason="triton is not installed",
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture()
def poisoned():
    from rgprune_fast.backends import triton_common

    triton_common.POISON_OUTPUTS = True
    yield
    triton_common.POISON_OUTPUTS = False


def f64(*tensors):
    return [t.double() for t in tensors]


@pytest.mark.parametrize("split", [1, 2, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_position_splits_agree(poisoned, split, channels_last):
    from rgprune_fast.backends.triton_batchnorm import batchnorm_stats_op, batchnorm_stats_reference
    from rgprune_fast.backends.triton_relu import relu_stats_op, relu_stats_reference
    from rgprune_fast.backends.triton_stats import channel_stats_op, channel_stats_reference

    x = torch.randn(2, 3, 17, 9, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dx = torch.randn_like(x)
    s = channel_stats_op(x, dx, 1, split)
    assert rel_err(s, channel_stats_reference(*f64(x, dx), 1)) < 1e-6
    mean, scale, shift = (
        torch.randn(3, device=DEVICE),
        torch.rand(3, device=DEVICE) + 0.5,
        torch.randn(3, device=DEVICE),
    )
    dz, s_bn = batchnorm_stats_op(x, dx, mean, scale, shift, True, split)
    dz_ref, s_bn_ref = batchnorm_stats_reference(*f64(x, dx, mean, scale, shift))
    assert rel_err(s_bn, s_bn_ref) < 1e-6 and rel_err(dz, dz_ref) < 1e-6
    assert dz.stride() == dx.stride()  # same memory format as the incoming gradient
    r = torch.relu(x)
    dr, s_relu = relu_stats_op(r, dx, 6.0, True, 1, True, split)
    dr_ref, s_relu_ref = relu_stats_reference(*f64(r, dx), 6.0, 1)
    assert torch.equal(dr.double(), dr_ref) and rel_err(s_relu, s_relu_ref) < 1e-6
    for out in (s, dz, s_bn, dr, s_relu):
        assert not out.isnan().any()


def test_split_results_are_deterministic():
    from rgprune_fast.backends.triton_stats import channel_stats_op

    x = torch.randn(2, 4, 300, device=DEVICE)
    dx = torch.randn_like(x)
    assert torch.equal(channel_stats_op(x, dx, 1, 3), channel_stats_op(x, dx, 1, 3))


@pytest.mark.parametrize("methods", [["taylorfo"], ["taylorfo_abs", "taylorfo_sq", "molchanov_bn"]])
def test_fused_criteria_update_matches_torch(methods):
    from rgprune_fast.backends.triton_criteria import fold_criteria

    fused = ChannelAccumulator(200, methods, DEVICE, torch.float32, fold_criteria)
    plain = ChannelAccumulator(200, methods, DEVICE, torch.float32, fold_torch)
    for batch in range(3):
        s = torch.randn(5, 200, device=DEVICE)
        if batch == 1:
            s[2, 150] = float("inf")
        fused.update(s, batch)
        plain.update(s, batch)
    for name in ("sum_s", "sum_abs", "sum_sq", "sum_batch_sq"):
        a, b = getattr(fused, name), getattr(plain, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(fused.first_bad, plain.first_bad)
    assert int(fused.first_bad_batch()) == 1


def test_ops_are_registered():
    from rgprune_fast.backends import triton_batchnorm, triton_relu, triton_stats  # noqa: F401

    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch < 2.6 has no triton_op: the kernels are called directly")
    x = torch.randn(2, 3, 4, device=DEVICE)
    s = torch.ops.rgprune_fast.triton_channel_stats(x, x, 1, 1)
    torch.testing.assert_close(s, (x * x).sum(2))
    dz, s_bn = torch.ops.rgprune_fast.triton_batchnorm_stats(
        x, x, torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE), False, 1
    )
    assert dz.numel() == 0
    torch.testing.assert_close(s_bn, s)
    dr, s_relu = torch.ops.rgprune_fast.triton_relu_stats(x.relu(), x, 0.0, False, 1, True, 1)
    torch.testing.assert_close(dr, torch.where(x > 0, x, 0))


@pytest.mark.parametrize("name", ["resnet18", "token_mlp", "vgg_no_bn", "mlp"])
def test_score_end_to_end(name):
    model, data = models.make(name).to(DEVICE), models.batches(name, sizes=(2, 1))
    data = [(x.to(DEVICE), t.to(DEVICE)) for x, t in data]
    methods = list(rg.METHODS)
    ours = rg.score(model, data, method=methods, gradient="label", backend="triton")
    ref = oracle_scores(model.cpu(), [(x.cpu(), t.cpu()) for x, t in data], list(ours["taylorfo"]), methods, "label",
                        True, dtype=None)  # fmt: skip
    for m in methods:
        for k in ref[m]:
            assert rel_err(ours[m][k], ref[m][k]) <= 1e-5, (m, k)
    again = rg.score(model.to(DEVICE), data, method=methods, gradient="label", backend="triton")
    for m in methods:
        for k in ours[m]:
            assert torch.equal(ours[m][k], again[m][k])


def test_explicit_triton_on_cpu_without_interpreter(monkeypatch):
    from rgprune_fast.backends import triton as triton_backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(rg.BackendUnavailableError, match="CUDA devices"):
        triton_backend.load(torch.device("cpu"))


def test_rgprune_fast_works_without_triton():
    """Triton is optional: with it unimportable, scoring works and backend='triton' says why not."""
    import subprocess
    import sys

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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "['0']" in out
    assert "triton is not installed" in out
