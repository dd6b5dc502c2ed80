"""The Triton kernels' wide-load designs, checked for correctness (their load widths are checked ahead
of time by ``benchmarks/aot.py``): row-group kernels for contiguous rows that are not 16-byte aligned,
and the alignment the tiled kernels declare. Under the interpreter the declarations are computed for
real (``(v // A) * A``), so a false one gives wrong numbers here."""

from unittest import mock

import pytest
import reference as ref
import torch

from rgprune_fast.backends import why_unavailable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    why_unavailable("triton", DEVICE) is not None, reason=f"triton on {DEVICE}: {why_unavailable('triton', DEVICE)}"
)
LOW = (torch.bfloat16, torch.float16)


@pytest.fixture()
def poisoned():
    from rgprune_fast.backends.triton import common

    common.POISON_OUTPUTS = True
    yield
    common.POISON_OUTPUTS = False


def ops():
    from rgprune_fast.backends.triton import batchnorm_stats, channel_stats, relu_stats

    return channel_stats.channel_stats_op, batchnorm_stats.batchnorm_stats_op, relu_stats.relu_stats_op


def check_all_ops(x, dx, channel_dim=1, split=0):
    """Every op on ``(x, dx)`` against the float64 reference; outputs of fused backwards exactly."""
    channel_stats_op, batchnorm_stats_op, relu_stats_op = ops()
    tol = torch.float64 if x.dtype == torch.float64 else torch.float32  # accumulation precision
    ref.assert_stats_close(channel_stats_op(x, dx, channel_dim, split), ref.channel_stats(x, dx, channel_dim), tol)
    if channel_dim == 1:
        c = x.shape[1]
        mean, scale, shift = torch.randn(c) + 3, torch.rand(c) + 0.5, torch.randn(c)
        for need_dz in (True, False):
            dz, s = batchnorm_stats_op(x, dx, *(v.to(DEVICE) for v in (mean, scale, shift)), need_dz, split)
            s_ref, _ = ref.batchnorm_stats(x, dx, mean, scale, shift)
            ref.assert_stats_close(s, s_ref, tol)
            if need_dz:
                acc = torch.float64 if x.dtype == torch.float64 else torch.float32
                view = [1, -1] + [1] * (x.dim() - 2)
                expected = (dx.cpu().to(acc) * scale.to(acc).view(view)).to(dx.dtype)
                assert torch.equal(dz.cpu(), expected)
                assert dz.stride() == torch.empty_like(dx).stride()  # dx's layout (dense when dx is not)
    r = torch.relu(x)
    for upper in (None, 6.0):
        for need_dx in (True, False):
            d, s = relu_stats_op(r, dx, upper or 0.0, upper is not None, channel_dim, need_dx, split)
            d_ref, s_ref = ref.relu_stats(r, dx, upper, channel_dim)
            ref.assert_stats_close(s, s_ref, tol)
            if need_dx:
                assert torch.equal(d.cpu(), d_ref)


# (shape, dtype): rows of 98 B (7x7 bf16/fp16), 392 B (14x14 bf16), 196 B (7x7 fp32), 26 B, 36 B
ROW_GROUP_CASES = [
    ((2, 16, 7, 7), torch.bfloat16),
    ((3, 8, 14, 14), torch.bfloat16),
    ((2, 16, 7, 7), torch.float16),
    ((2, 8, 7, 7), torch.float32),
    ((1, 32, 13, 1), torch.bfloat16),
    ((5, 8, 3, 3), torch.float32),
    ((2, 4, 7, 7), torch.float64),
]


@pytest.mark.parametrize("shape,dtype", ROW_GROUP_CASES, ids=lambda v: str(v))
def test_row_groups_match_the_reference(poisoned, shape, dtype):
    from rgprune_fast.backends.triton import common

    x, dx = torch.randn(shape).to(dtype).to(DEVICE), torch.randn(shape).to(dtype).to(DEVICE)
    x[0, 0, 0, 0] = 1e4  # a large value: each row is reduced apart from its neighbours
    plan = common.row_groups((common.as_ncp(x, 1),))
    assert plan is not None, "these shapes must take the row-group kernels"
    itemsize = x.element_size()
    assert (plan.r * plan.p * itemsize) % 16 == 0 and shape[1] % plan.r == 0
    check_all_ops(x, dx)


def test_row_groups_several_groups_per_program_and_a_partial_last_one(poisoned):
    """40 rows of 49 bf16 = 5 groups of 8 on 4 programs: 2 groups per program, the last program's second
    group past the end (masked)."""
    from rgprune_fast.backends.triton import common

    x = torch.randn(5, 8, 7, 7).to(torch.bfloat16).to(DEVICE)
    dx = torch.randn_like(x)
    with mock.patch.object(common, "multiprocessors", lambda device: 0):
        plan = common.row_groups((common.as_ncp(x, 1),))
        assert (plan.groups, plan.groups_per_program, plan.grid) == (5, 2, (3,))
        check_all_ops(x, dx)


def test_row_groups_do_not_depend_on_the_grid():
    """Each row is summed by one program in a fixed order: the same bits whatever the number of
    programs (devices differ in multiprocessors), and on every call."""
    from rgprune_fast.backends.triton import common

    channel_stats_op, batchnorm_stats_op, _ = ops()
    x = torch.randn(4, 16, 7, 7).to(torch.bfloat16).to(DEVICE)
    dx = torch.randn_like(x)
    p = torch.rand(16, device=DEVICE) + 0.5
    results = []
    for sms in (0, 1, 132):
        with mock.patch.object(common, "multiprocessors", lambda device, sms=sms: sms):
            results.append((channel_stats_op(x, dx, 1, 0), *batchnorm_stats_op(x, dx, p, p, p, True, 0)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_row_group_plan_only_where_it_helps():
    from rgprune_fast.backends.triton import common

    def plan(t):
        return common.row_groups((common.as_ncp(t, 1),))

    bf16 = torch.bfloat16
    assert plan(torch.empty(2, 16, 56, 56, dtype=bf16)) is None  # rows of 6272 B: aligned already
    assert plan(torch.empty(2, 16, 7, 7, dtype=bf16).contiguous(memory_format=torch.channels_last)) is None
    assert plan(torch.empty(2, 16, 7, 7, dtype=bf16)[:, :8]) is None  # a channel slice is not contiguous
    assert plan(torch.empty(2, 3, 7, 7, dtype=bf16)) is None  # C=3: no whole group of 8 rows
    assert plan(torch.empty(2, 8, 40, 40, dtype=bf16)[..., :39, :39].contiguous()) is None  # rows too long
    big = plan(torch.empty(2, 64, 7, 7, dtype=bf16))
    assert (big.r, big.flat) == (8, 512)  # 8 rows of 98 B = 784 B, a multiple of 16


# Tiled layouts whose alignment declaration is > 1 although the JIT marks nothing (not multiples of 16).
def tiled_cases():
    yield "fp32 NCHW 14x14 (ALIGN 4)", torch.randn(2, 3, 14, 14), 1, 0
    yield "fp32 channel slice 14x14", torch.randn(2, 6, 14, 14)[:, 1:4], 1, 0
    yield "bf16 channels_last C=24 (ALIGN 8)", torch.randn(2, 24, 5, 3).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last), 1, 0  # fmt: skip
    yield "fp32 NCHW 14x14 split 3", torch.randn(1, 2, 14, 14), 1, 3
    yield "bf16 tokens C=24", torch.randn(2, 5, 24).to(torch.bfloat16), -1, 0
    yield "fp32 [N, C] C=20", torch.randn(3, 20), 1, 0
    yield "fp16 transposed tokens: row groups, channel dim -1", torch.randn(2, 24, 5).to(torch.float16).transpose(
        1, 2), -1, 0  # fmt: skip


# x and dx in different layouts: the alignment is declared for every tensor the kernel touches (the
# output follows dx), so one tensor with a unit or odd stride where another has a multiple must lower it.
def mixed_cases():
    x = torch.randn(2, 24, 14, 14)
    yield "fp32 x NCHW, dx channels_last", x, torch.randn(2, 24, 14, 14).contiguous(memory_format=torch.channels_last)
    yield "fp32 x channels_last, dx NCHW", x.contiguous(memory_format=torch.channels_last), torch.randn_like(x)
    yield "fp32 x NCHW, dx a channel slice", x, torch.randn(2, 30, 14, 14)[:, 3:27]
    yield "fp32 x NCHW, dx expanded over positions", x, torch.randn(2, 24, 1, 1).expand(2, 24, 14, 14)
    bf = torch.randn(2, 24, 7, 7).to(torch.bfloat16)
    yield "bf16 x contiguous 7x7 (rows), dx channels_last", bf, bf.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", list(mixed_cases()), ids=lambda c: c[0])
def test_mixed_layouts(poisoned, case):
    _, x, dx = case
    check_all_ops(x.to(DEVICE), dx.to(DEVICE))


@pytest.mark.parametrize("case", list(tiled_cases()), ids=lambda c: c[0])
def test_tiled_alignment_declarations(poisoned, case):
    from rgprune_fast.backends.triton import common

    _, x, channel_dim, split = case
    x = x.to(DEVICE)
    dx = torch.randn(x.shape).to(x.dtype).to(DEVICE)
    if x.stride() != dx.stride():
        dx = torch.empty_like(x).copy_(dx)
    views = (common.as_ncp(x, channel_dim), common.as_ncp(dx, channel_dim))
    if common.row_groups(views) is not None:
        assert "row groups" in case[0]
        check_all_ops(x, dx, channel_dim, split)
        return
    geo = common.Geometry(views, x.dtype, split)
    n, c, p = views[0].shape
    if geo.channels_contiguous:
        declared = [c] + [t.stride(d) for t in views for d in (0, 2) if t.shape[d] > 1]
    else:
        declared = [p, geo.p_per_split] + [t.stride(d) for t in views for d in (0, 1) if t.shape[d] > 1]
    assert all(v % geo.align == 0 for v in declared)
    check_all_ops(x, dx, channel_dim, split)


def test_alignment_is_the_largest_power_of_two_up_to_16():
    from rgprune_fast.backends.triton.common import alignment

    assert alignment(196) == 4 and alignment(49) == 1 and alignment(3136, 196) == 4 and alignment(64) == 16
    assert alignment() == 16 and alignment(0) == 16 and alignment(24, 40) == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_an_empty_batch_through_every_op(dtype):
    """N = 0: no rows, so no row-group plan (its grid would divide by zero); the tiled path returns
    empty results, as the torch backend does."""
    from rgprune_fast.backends.torch_ref import TorchBackend
    from rgprune_fast.backends.triton import TritonBackend, common

    x = torch.randn(0, 16, 7, 7).to(dtype).to(DEVICE)
    dx = torch.randn_like(x)
    assert common.row_groups((common.as_ncp(x, 1),)) is None
    triton_b, torch_b = TritonBackend(), TorchBackend()
    p = torch.rand(16, device=DEVICE) + 0.5

    def same(a, b):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype

    same(triton_b.channel_stats(x, dx, 1), torch_b.channel_stats(x, dx, 1))
    for need in (True, False):
        for a, b in zip(triton_b.batchnorm_stats(x, dx, p, p, p, need), torch_b.batchnorm_stats(x, dx, p, p, p, need)):
            same(a, b)
        for upper in (None, 6.0):
            for a, b in zip(triton_b.relu_stats(x, dx, upper, 1, need), torch_b.relu_stats(x, dx, upper, 1, need)):
                same(a, b)
