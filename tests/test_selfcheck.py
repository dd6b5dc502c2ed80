"""The self-check of the fused backends (rgprune_fast/backends/selfcheck.py), on CPU: a kernel that
raises or computes wrong numbers for one case (device, dtype, layout, op variant) gives one
KernelSelfCheckWarning and that case is served by the torch backend, while other cases keep the kernel;
RGPRUNE_NO_SELFCHECK=1 skips the check; the real kernels (cpp, Triton under its interpreter) pass
silently and leave the scores bit-identical with the check on and off."""

import threading
import warnings
from contextlib import contextmanager

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg
from rgprune_fast import backends
from rgprune_fast.backends import RunningSums, select_backend, selfcheck, why_unavailable
from rgprune_fast.backends.torch_ref import TorchBackend
from rgprune_fast.errors import KernelSelfCheckWarning

CPU = torch.device("cpu")
TORCH = TorchBackend()
COMPILE_ERROR = "simulated compile error: ptxas fatal: unresolved extern function"


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    selfcheck.reset()
    yield
    selfcheck.reset()


@contextmanager
def no_warning():
    """Any warning inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class Fake(TorchBackend):
    """A fused backend stand-in: the torch backend's own code (so correct) except where :meth:`broken`
    says ``"raise"`` or ``"wrong"`` (off by a factor); records the input shape of every call."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def broken(self, op, x, **flags):
        return None

    def _outcome(self, op, x, result, **flags):
        self.calls.append((op, tuple(x.shape)))
        how = self.broken(op, x, **flags)
        if how == "raise":
            raise RuntimeError(f"{COMPILE_ERROR}\nsecond line of the error")
        if how != "wrong":
            return result
        return tuple(None if r is None else 1.5 * r for r in result) if isinstance(result, tuple) else 1.5 * result

    def channel_stats(self, x, dx, channel_dim):
        return self._outcome("channel_stats", x, super().channel_stats(x, dx, channel_dim))

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        result = super().batchnorm_stats(z, dy, mean, scale, shift, need_dz)
        return self._outcome("batchnorm_stats", z, result, need_dz=need_dz)

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        result = super().relu_stats(r, dr, upper, channel_dim, need_dx)
        return self._outcome("relu_stats", r, result, upper=upper, need_dx=need_dx)

    def fold_criteria(self, s, batch, sums):
        self.calls.append(("fold_criteria", tuple(s.shape)))
        how = self.broken("fold_criteria", s)
        if how == "raise":
            raise RuntimeError(COMPILE_ERROR)
        super().fold_criteria(2 * s if how == "wrong" else s, batch, sums)

    def reached(self, op, shape) -> bool:
        """Whether a call of ``op`` with inputs of ``shape`` (the real ones, not the check's slice) ran."""
        return (op, tuple(shape)) in self.calls


class Raises(Fake):
    def broken(self, op, x, **flags):
        return "raise" if op == "channel_stats" else None


class WrongForFloat64(Fake):
    def broken(self, op, x, **flags):
        return "wrong" if op == "channel_stats" and x.dtype == torch.float64 else None


class FailsChannelsLast(Fake):
    def broken(self, op, x, **flags):
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return "raise" if op == "channel_stats" and channels_last else None


def pair(*shape, dtype=torch.float32, channels_last=False):
    x = torch.randn(*shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn_like(x)


def one_warning(record) -> str:
    found = [w for w in record if issubclass(w.category, KernelSelfCheckWarning)]
    assert len(found) == 1, [str(w.message) for w in found]
    return str(found[0].message)


def test_a_kernel_that_raises_is_replaced_by_torch_with_one_warning():
    fake = Raises()
    b = selfcheck.wrap(fake)
    assert b.name == "fake" and b.inner is fake
    x, dx = pair(3, 20, 5, 4)
    with pytest.warns(KernelSelfCheckWarning) as record:
        s = b.channel_stats(x, dx, 1)
    message = one_warning(record)
    for part in ("'fake' backend's channel_stats", "cpu", "float32", "channels_first 4-d", COMPILE_ERROR, "torch"):
        assert part in message, (part, message)
    assert "second line" not in message
    assert torch.equal(s, TORCH.channel_stats(x, dx, 1))
    assert not fake.reached("channel_stats", x.shape)  # only the check's slice ran
    calls = len(fake.calls)
    with no_warning():  # the same case again (another batch size, same layout class): torch, no warning, no check
        x2, dx2 = pair(5, 20, 5, 4)
        assert torch.equal(b.channel_stats(x2, dx2, 1), TORCH.channel_stats(x2, dx2, 1))
        assert torch.equal(b.channel_stats(x, dx, 1), s)
    assert len(fake.calls) == calls
    (problem,) = selfcheck.verdicts().values()
    assert COMPILE_ERROR in problem


def test_wrong_values_for_one_dtype_only():
    fake = WrongForFloat64()
    b = selfcheck.wrap(fake)
    x32, dx32 = pair(3, 20, 7, 6)
    x64, dx64 = x32.double(), dx32.double()
    with pytest.warns(KernelSelfCheckWarning) as record:
        s64 = b.channel_stats(x64, dx64, 1)
    message = one_warning(record)
    assert "channel_stats" in message and "float64" in message and "float32" not in message
    assert "where the torch backend gives" in message and "tolerance" in message
    assert torch.equal(s64, TORCH.channel_stats(x64, dx64, 1))
    assert not fake.reached("channel_stats", x64.shape)
    with no_warning():
        s32 = b.channel_stats(x32, dx32, 1)  # another case: checked, passes, the kernel serves
        assert torch.equal(b.channel_stats(x64, dx64, 1), s64)  # judged already: no second warning
    assert fake.reached("channel_stats", x32.shape)
    assert torch.equal(s32, fake.channel_stats(x32, dx32, 1))
    assert sorted(v is None for v in selfcheck.verdicts().values()) == [False, True]


def test_a_kernel_failing_only_for_channels_last():
    fake = FailsChannelsLast()
    b = selfcheck.wrap(fake)
    x, dx = pair(4, 40, 6, 5)
    cl, dcl = pair(4, 40, 6, 5, channels_last=True)
    with pytest.warns(KernelSelfCheckWarning) as record:
        s_cl = b.channel_stats(cl, dcl, 1)
    message = one_warning(record)
    assert "channels_last 4-d" in message and "channel_stats" in message and COMPILE_ERROR in message
    assert torch.equal(s_cl, TORCH.channel_stats(cl, dcl, 1))
    ntc, dntc = pair(3, 7, 24)
    with no_warning():
        s = b.channel_stats(x, dx, 1)
        s_ntc = b.channel_stats(ntc, dntc, 2)  # [N, T, C]: channel-last but 3-d, not channels_last
        b.channel_stats(cl, dcl, 1)
    assert fake.reached("channel_stats", x.shape) and fake.reached("channel_stats", ntc.shape)
    assert torch.equal(s, TORCH.channel_stats(x, dx, 1)) and torch.equal(s_ntc, TORCH.channel_stats(ntc, dntc, 2))
    assert [op for op, shape in fake.calls if shape == tuple(cl.shape)] == ["channel_stats"]  # the NCHW call


@pytest.mark.parametrize("budget", [selfcheck.SLICE_ELEMENTS_CPU, 3000, 64])
def test_the_slice_keeps_the_layout_class(monkeypatch, budget):
    """channels_last stays channels_last, [N, T, C] channel-last, strided stays strided; the alignment
    class (channel residue mod 16, strides, offset) is kept too; every channel when they fit the budget,
    else 112-127 (C > 128) or 16-31."""
    monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", budget)
    cases = [
        (torch.randn(4, 40, 9, 7).contiguous(memory_format=torch.channels_last), 1),
        (torch.randn(4, 48, 8, 8).contiguous(memory_format=torch.channels_last), 1),
        (torch.randn(4, 40, 9, 7), 1),
        (torch.randn(3, 5, 40), 2),
        (torch.randn(3, 40, 5).transpose(1, 2), 2),
        (torch.randn(3, 80, 9, 7)[:, ::2, :, 1:4], 1),
        (torch.randn(5, 40), 1),
        (torch.randn(1000)[3:].view(1, 997), 1),
        (torch.randn(4, 128, 9, 7)[:, :64], 1),
        (torch.randn(3, 300, 4, 2).contiguous(memory_format=torch.channels_last), 1),
    ]
    for t, cd in cases:
        part = selfcheck._slice(t, cd)
        assert selfcheck.layout_class(part, cd) == selfcheck.layout_class(t, cd)
        assert (
            part.is_contiguous(memory_format=torch.channels_last) == t.is_contiguous(memory_format=torch.channels_last)
            or t.dim() != 4
        )
        c, k = t.shape[cd], part.shape[cd]
        assert part.shape[0] == min(t.shape[0], 2) and k % 16 == c % 16
        assert k in (c, 112 + c % 16, 16 + c % 16)
        if part.numel() // k * c <= budget:  # every channel fits
            assert k == c
        if budget == 64:
            assert k == min(c, 16 + c % 16)
        elif budget == 3000 and c == 300:
            assert k == 124  # the bucket 128, as C's
        index = [slice(0, part.shape[0])] + [slice(None)] * (t.dim() - 1)
        index[cd] = slice(0, part.shape[cd])
        assert torch.equal(part, t[tuple(index)])
    kinds = [selfcheck.layout_class(t, cd)[0] for t, cd in cases]
    expected = ["channels_last"] * 2 + ["channels_first", "channels_last", "channels_first", "strided"]
    assert kinds == expected + ["flat"] * 2 + ["channels_first", "channels_last"]


class BrokenOps(Fake):
    """Wrong in one op variant only: ``which`` = (op, flags that must match)."""

    def __init__(self, op, **flags):
        super().__init__()
        self.op, self.flags = op, flags

    def broken(self, op, x, **flags):
        return "wrong" if op == self.op and all(flags.get(k) == v for k, v in self.flags.items()) else None


def bn_args(c=20, dtype=torch.float32, channels_last=False):
    z, dy = pair(3, c, 6, 5, dtype=dtype, channels_last=channels_last)
    acc = rg.backends.stat_dtype(dtype)
    return z, dy, torch.randn(c, dtype=acc), torch.rand(c, dtype=acc) + 0.5, torch.randn(c, dtype=acc)


@pytest.mark.parametrize("need_dz", [True, False])
def test_batchnorm_variants_are_separate_cases(need_dz):
    fake = BrokenOps("batchnorm_stats", need_dz=need_dz)
    b = selfcheck.wrap(fake)
    args = bn_args()
    with pytest.warns(KernelSelfCheckWarning) as record:
        dz, s = b.batchnorm_stats(*args, need_dz)
    assert f"batchnorm_stats [need_dz={need_dz}]" in one_warning(record)
    dz_ref, s_ref = TORCH.batchnorm_stats(*args, need_dz)
    assert torch.equal(s, s_ref) and (torch.equal(dz, dz_ref) if need_dz else dz is None)
    with no_warning():
        b.batchnorm_stats(*args, not need_dz)  # the other variant keeps the kernel
    assert fake.reached("batchnorm_stats", args[0].shape)


def test_relu6_and_relu_are_separate_cases():
    fake = BrokenOps("relu_stats", upper=6.0)
    b = selfcheck.wrap(fake)
    r, dr = pair(3, 20, 6, 5)
    r = r.relu()
    with pytest.warns(KernelSelfCheckWarning) as record:
        dx, s = b.relu_stats(r, dr, 6.0, 1, True)
    assert "relu_stats [relu6=True, need_dx=True]" in one_warning(record)
    dx_ref, s_ref = TORCH.relu_stats(r, dr, 6.0, 1, True)
    assert torch.equal(dx, dx_ref) and torch.equal(s, s_ref)
    with no_warning():
        b.relu_stats(r, dr, None, 1, True)
    assert fake.reached("relu_stats", r.shape)


def running_sums(c, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return RunningSums(
        s=torch.randn(c, generator=g, dtype=dtype),
        first_bad=torch.full((c,), -1, dtype=torch.int64),
        abs=torch.rand(c, generator=g, dtype=dtype),
        sq=torch.rand(c, generator=g, dtype=dtype),
        batch_sq=torch.rand(c, generator=g, dtype=dtype),
    )


def copy_sums(sums):
    return RunningSums(*(None if v is None else v.clone() for v in (sums.s, sums.first_bad, sums.abs, sums.sq,
                                                                      sums.batch_sq)))  # fmt: skip


def assert_sums_equal(a, b):
    """The same bits (NaN where NaN)."""
    for field in ("s", "first_bad", "abs", "sq", "batch_sq"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0, equal_nan=True, msg=field)


@pytest.mark.parametrize("broken", [False, True])
def test_fold_criteria_updates_the_real_sums_once(broken):
    """Checked on copies: the real running sums see exactly one update, the kernel's or (broken) torch's."""
    fake = BrokenOps("fold_criteria") if broken else Fake()
    b = selfcheck.wrap(fake)
    s = torch.randn(5, 40)
    s[2, 3] = float("nan")  # a non-finite column: first_bad is compared too
    sums = running_sums(40)
    expected = copy_sums(sums)
    TORCH.fold_criteria(s, 7, expected)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        b.fold_criteria(s, 7, sums)
    assert len([w for w in record if issubclass(w.category, KernelSelfCheckWarning)]) == int(broken)
    if broken:
        assert "fold_criteria [sums=('abs', 'sq', 'batch_sq')]" in one_warning(record)
    assert_sums_equal(sums, expected)
    assert [op for op, _ in fake.calls] == ["fold_criteria"] * (1 if broken else 2)  # the check (and the real call)
    assert expected.first_bad[3] == 7


def test_nan_agreement():
    """NaN against a number is a mismatch; NaN where torch has NaN agrees."""
    x, dx = pair(2, 20, 6, 5)
    x[0, 1, 2, 2] = float("nan")
    with no_warning():
        s = selfcheck.wrap(Fake()).channel_stats(x, dx, 1)
    assert s[0, 1].isnan()

    class NaNs(Fake):
        def channel_stats(self, x, dx, channel_dim):
            s = super().channel_stats(x, dx, channel_dim)
            s[:, -1] = float("nan")
            return s

    y, dy = pair(2, 20, 6, 5)
    with pytest.warns(KernelSelfCheckWarning) as record:
        selfcheck.wrap(NaNs()).channel_stats(y, dy, 1)
    assert "= nan where the torch backend gives" in one_warning(record)


def test_low_precision_tolerance():
    """bfloat16: a kernel rounding each product to bfloat16 (then summing in float32) passes, one off by
    10 % does not; float32: off by 1 % does not pass either (4096 positions, random signs)."""

    class RoundsProducts(Fake):
        def channel_stats(self, x, dx, channel_dim):
            return (x * dx).float().sum(dim=[d for d in range(1, x.dim()) if d != channel_dim])

    class OffByPercent(Fake):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def channel_stats(self, x, dx, channel_dim):
            return super().channel_stats(x, dx, channel_dim) * self.factor

    x, dx = pair(2, 24, 64, 64, dtype=torch.bfloat16)
    with no_warning():
        selfcheck.wrap(RoundsProducts()).channel_stats(x, dx, 1)
    with pytest.warns(KernelSelfCheckWarning):
        selfcheck.wrap(OffByPercent(1.1)).channel_stats(x, dx, 1)
    x32, dx32 = x.float(), dx.float()
    with pytest.warns(KernelSelfCheckWarning):
        selfcheck.wrap(OffByPercent(1.01)).channel_stats(x32, dx32, 1)


def test_no_selfcheck_environment_variable(monkeypatch):
    fake = WrongForFloat64()
    b = selfcheck.wrap(fake)
    x, dx = pair(3, 20, 5, 4, dtype=torch.float64)
    monkeypatch.setenv(selfcheck.ENV, "1")
    with no_warning():
        s = b.channel_stats(x, dx, 1)  # not checked: the wrong kernel's result comes through
    assert torch.equal(s, 1.5 * TORCH.channel_stats(x, dx, 1))
    assert selfcheck.verdicts() == {}
    monkeypatch.delenv(selfcheck.ENV)  # read at check time: the next call checks
    with pytest.warns(KernelSelfCheckWarning):
        assert torch.equal(b.channel_stats(x, dx, 1), TORCH.channel_stats(x, dx, 1))


def test_verdicts_are_per_process_and_reset_forgets_them():
    x, dx = pair(3, 20, 5, 4)
    with pytest.warns(KernelSelfCheckWarning):
        selfcheck.wrap(Raises()).channel_stats(x, dx, 1)
    with no_warning():  # another wrapper of the same kernels (a second score() call): the verdict holds
        assert torch.equal(selfcheck.wrap(Raises()).channel_stats(x, dx, 1), TORCH.channel_stats(x, dx, 1))
    assert len(selfcheck.verdicts()) == 1
    selfcheck.reset()
    assert selfcheck.verdicts() == {}
    with pytest.warns(KernelSelfCheckWarning):
        selfcheck.wrap(Raises()).channel_stats(x, dx, 1)


def test_threads_check_a_case_once():
    fake = Raises()
    b = selfcheck.wrap(fake)
    x, dx = pair(3, 20, 5, 4)
    barrier, results = threading.Barrier(6), []

    def work():
        barrier.wait()
        results.append(b.channel_stats(x, dx, 1))

    with pytest.warns(KernelSelfCheckWarning) as record:
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    one_warning(record)
    assert len(fake.calls) == 1  # one check, by one thread
    assert len(results) == 6 and all(torch.equal(r, TORCH.channel_stats(x, dx, 1)) for r in results)


def small_conv_net():
    """Two BatchNorms of the same case (channels, map size, dtype, layout)."""
    torch.manual_seed(0)
    return models.randomize(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
    )


def test_score_with_a_failing_backend_gives_the_torch_scores(monkeypatch):
    """The BatchNorm kernel writing dz raises: both BatchNorms are that case (the first one, whose dz
    nobody needs, is another variant and keeps the kernel)."""

    class DzRaises(Fake):
        name = "cpp"

        def __init__(self):
            super().__init__()
            self.served = []  # (need_dz, examples) of the batchnorm_stats calls that reached the kernel

        def broken(self, op, x, **flags):
            if op == "batchnorm_stats":
                self.served.append((flags["need_dz"], x.shape[0]))
            return "raise" if op == "batchnorm_stats" and flags["need_dz"] else None

    fake = DzRaises()
    load = backends.load_backend
    monkeypatch.setattr(backends, "load_backend", lambda name, device: fake if name == "cpp" else load(name, device))
    model = small_conv_net()
    data = [torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    methods = ["taylorfo", "taylorfo_sq", "molchanov_bn"]
    expected = rg.score(model, data, method=methods, backend="torch")
    with pytest.warns(KernelSelfCheckWarning) as record:
        ours = rg.score(model, data, method=methods, backend="cpp")
    message = one_warning(record)
    assert "'cpp' backend's batchnorm_stats [need_dz=True]" in message and COMPILE_ERROR in message
    assert list(ours["taylorfo"]) == ["1", "4"]
    assert all(torch.equal(ours[m][k], expected[m][k]) for m in methods for k in expected[m])
    assert (False, 4) in fake.served and (False, 3) in fake.served  # the other variant: the kernel
    assert (True, 4) not in fake.served and (True, 3) not in fake.served  # only the check's 2-example slice
    assert fake.reached("fold_criteria", (4, 8))
    with no_warning():  # "auto" picks the same kernels: judged already
        again = rg.score(model, data, method=methods, backend="auto")
    assert all(torch.equal(again[m][k], expected[m][k]) for m in methods for k in expected[m])


# --- the real kernels: they pass, silently, and the check changes no bit -------------------------------------

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def layouts(n, c, p):
    """(x, channel dim) in the layout classes the kernels treat differently."""
    yield torch.randn(n, c, p, 3), 1
    yield torch.randn(n, c, p, 3).contiguous(memory_format=torch.channels_last), 1
    yield torch.randn(n, p, c), 2
    yield torch.randn(n, c), 1
    yield torch.randn(n, 2 * c, p, 5)[:, ::2, :, 1:4], 1
    yield torch.randn(n, c, p).transpose(1, 2), 2


def exercise(b, dtypes, shapes):
    """Every op and variant of ``b`` (checked) against ``b.inner`` (unchecked): the same bits."""
    for dtype in dtypes:
        for n, c, p in shapes:
            for x, cd in layouts(n, c, p):
                x = x.to(dtype)
                dx = torch.randn_like(x, dtype=torch.float32).to(dtype)
                assert torch.equal(b.channel_stats(x, dx, cd), b.inner.channel_stats(x, dx, cd))
                r = x.relu()
                for upper in (None, 6.0):
                    for need_dx in (True, False):
                        ours = b.relu_stats(r, dx, upper, cd, need_dx)
                        theirs = b.inner.relu_stats(r, dx, upper, cd, need_dx)
                        assert all(a is None and t is None or torch.equal(a, t) for a, t in zip(ours, theirs))
                if cd == 1 and x.dim() > 2:
                    z = x * 2 + 3
                    acc = rg.backends.stat_dtype(dtype)
                    mean, scale, shift = (
                        torch.randn(c, dtype=acc) + 3,
                        torch.rand(c, dtype=acc) + 0.5,
                        torch.randn(c, dtype=acc),
                    )
                    for need_dz in (True, False):
                        ours = b.batchnorm_stats(z, dx, mean, scale, shift, need_dz)
                        theirs = b.inner.batchnorm_stats(z, dx, mean, scale, shift, need_dz)
                        assert all(a is None and t is None or torch.equal(a, t) for a, t in zip(ours, theirs))
                s = b.inner.channel_stats(x, dx, cd)
                sums, again = running_sums(c, s.dtype), running_sums(c, s.dtype)
                b.fold_criteria(s, 3, sums)
                b.inner.fold_criteria(s, 3, again)
                assert_sums_equal(sums, again)


def score_on_and_off(monkeypatch, backend, names):
    """``score`` with the check on (every case checked) and off: the same bits, no warning."""
    for name in names:
        model = models.make(name)
        data = [x for x, _ in models.batches(name, sizes=(2, 3))]
        methods = ["taylorfo", "taylorfo_abs", "taylorfo_sq", "molchanov_bn"]
        selfcheck.reset()
        monkeypatch.delenv(selfcheck.ENV, raising=False)
        checked = rg.score(model, data, method=methods, backend=backend)
        judged = selfcheck.verdicts()
        assert judged and all(v is None for v in judged.values()), judged
        selfcheck.reset()
        monkeypatch.setenv(selfcheck.ENV, "1")
        unchecked = rg.score(model, data, method=methods, backend=backend)
        assert selfcheck.verdicts() == {}
        assert all(torch.equal(checked[m][k], unchecked[m][k]) for m in methods for k in checked[m]), name


@pytest.mark.skipif(why_unavailable("cpp", CPU) is not None, reason=str(why_unavailable("cpp", CPU)))
def test_cpp_kernels_pass_and_change_no_bit(monkeypatch):
    b = select_backend("cpp", CPU)
    assert b.name == "cpp" and type(b.inner).__name__ == "ExtensionBackend"
    assert select_backend("auto", CPU).name == "cpp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exercise(b, DTYPES, [(2, 5, 7), (3, 40, 1000)])
        assert all(v is None for v in selfcheck.verdicts().values())
        assert not any(k[2] == "fold_criteria" for k in selfcheck.verdicts())  # inherited from torch: not checked
        selfcheck.reset()
        budget = selfcheck.SLICE_ELEMENTS_CPU
        monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", 256)  # slices of 16 + C % 16 channels
        exercise(b, (torch.float32, torch.bfloat16), [(3, 40, 1000)])
        assert all(v is None for v in selfcheck.verdicts().values())
        monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", budget)
        score_on_and_off(monkeypatch, "cpp", ["conv_bn_relu", "token_mlp", "mlp"])


@pytest.mark.skipif(why_unavailable("triton", CPU) is not None, reason=str(why_unavailable("triton", CPU)))
def test_triton_kernels_pass_and_change_no_bit(monkeypatch):
    """Under the Triton interpreter (tests/conftest.py switches it on without a GPU)."""
    b = select_backend("triton", CPU)
    assert b.name == "triton" and type(b.inner).__name__ == "TritonBackend"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exercise(b, (torch.float32, torch.bfloat16), [(2, 5, 7)])
        assert any(k[2] == "fold_criteria" for k in selfcheck.verdicts())
        assert all(v is None for v in selfcheck.verdicts().values())
        selfcheck.reset()
        budget = selfcheck.SLICE_ELEMENTS_CPU
        monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", 64)  # slices of 16 + C % 16 channels
        exercise(b, (torch.float32,), [(3, 20, 5)])
        monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", budget)
        assert all(v is None for v in selfcheck.verdicts().values())
        score_on_and_off(monkeypatch, "triton", ["conv_bn_relu", "token_mlp"])


NO_TRITON = why_unavailable("triton", CPU)


def variant_inputs():
    """(name, tensor, channel dim): each Triton kernel design the launchers pick between."""
    bf16 = torch.bfloat16
    yield "bf16 NCHW 56x56 (tiled)", torch.randn(2, 16, 56, 56).to(bf16), 1
    yield "bf16 NCHW 14x14 (rows R=4)", torch.randn(3, 8, 14, 14).to(bf16), 1
    yield "bf16 NCHW 7x7 (rows R=8)", torch.randn(3, 32, 7, 7).to(bf16), 1
    yield "bf16 NCHW 7x7, C=136 (rows R=8, fewer channels in the slice)", torch.randn(3, 136, 7, 7).to(bf16), 1
    yield "fp32 channel slice (tiled; a dense copy would take row groups)", torch.randn(4, 128, 9, 7)[:, :64], 1
    yield "bf16 channels_last", torch.randn(3, 24, 7, 7).to(bf16).contiguous(memory_format=torch.channels_last), 1
    yield "bf16 [N, T, C]", torch.randn(3, 9, 300).to(bf16), 2


@pytest.mark.skipif(NO_TRITON is not None, reason=str(NO_TRITON))
@pytest.mark.parametrize("budget", [selfcheck.SLICE_ELEMENTS_CPU, 64])
def test_the_slice_runs_the_real_calls_triton_kernel_variant(monkeypatch, budget):
    """For the Triton backend the slice runs the kernel design (row groups or tiled) and compile-time
    parameters of the real call, also when the budget keeps few channels; the designs are distinct cases."""
    from rgprune_fast.backends.triton import TritonBackend

    monkeypatch.setattr(selfcheck, "SLICE_ELEMENTS_CPU", budget)
    b = TritonBackend()
    seen = {}
    for name, t, cd in variant_inputs():
        for op, out in (("channel_stats", False), ("relu_stats", True), ("relu_stats", False)):
            real = selfcheck._kernel_variant(b, op, (t, t), cd, out)
            sliced = selfcheck._slices(b, op, (t, t), cd, real, out)
            assert selfcheck._kernel_variant(b, op, sliced, cd, out) == real, (name, op)
            assert sliced[0].shape[0] <= 2 and all(
                torch.equal(s, t[: s.shape[0]].narrow(cd, 0, s.shape[cd])) for s in sliced
            )
        seen[name] = selfcheck._kernel_variant(b, "channel_stats", (t, t), cd, False)
    assert [v[0] for v in seen.values()] == ["tiled", "rows", "rows", "rows", "tiled", "tiled", "tiled"]
    assert len({seen[k] for k in list(seen)[:3]}) == 3  # 56x56, 14x14, 7x7: three cases


class WrongInRowGroups(Fake):
    """Triton-like: tells its kernel variants through the Triton backend's hook, and is wrong only in
    its row-group variant."""

    def __init__(self):
        from rgprune_fast.backends.triton import TritonBackend

        super().__init__()
        self._triton = TritonBackend()

    def kernel_variant(self, op, *tensors, channel_dim=1):
        return self._triton.kernel_variant(op, *tensors, channel_dim=channel_dim)

    def broken(self, op, x, **flags):
        return "wrong" if self.kernel_variant(op, x, x)[0] == "rows" else None


@pytest.mark.skipif(NO_TRITON is not None, reason=str(NO_TRITON))
def test_distinct_kernel_variants_get_distinct_verdicts():
    """A tiled call passing does not vouch for the row-group kernel of the same dtype and layout kind,
    nor the row-group call for a channel slice of the same tensor (tiled)."""
    b = selfcheck.wrap(WrongInRowGroups())
    tiled, rows = pair(2, 8, 56, 56, dtype=torch.bfloat16), pair(2, 8, 7, 7, dtype=torch.bfloat16)
    with no_warning():
        assert torch.equal(b.channel_stats(*tiled, 1), TORCH.channel_stats(*tiled, 1))
    with pytest.warns(KernelSelfCheckWarning) as record:
        assert torch.equal(b.channel_stats(*rows, 1), TORCH.channel_stats(*rows, 1))  # torch serves
    assert "kernel variant ('rows', 8" in one_warning(record)
    with no_warning():
        channel_slice = tuple(t[:, :4] for t in rows)  # tiled: the kernel serves it
        assert torch.equal(b.channel_stats(*channel_slice, 1), b.inner.channel_stats(*channel_slice, 1))
    assert sorted(v is None for v in selfcheck.verdicts().values()) == [False, True, True]


def test_lookups_do_not_wait_for_a_running_check():
    entered, release = threading.Event(), threading.Event()

    class Slow(Fake):
        def broken(self, op, x, **flags):
            if x.shape[1] == 7:  # the second case: its check blocks until released
                entered.set()
                release.wait(30)

    b = selfcheck.wrap(Slow())
    judged, slow = pair(2, 5, 4), pair(2, 7, 4)
    b.channel_stats(*judged, 1)
    checking = threading.Thread(target=b.channel_stats, args=(*slow, 1))
    checking.start()
    try:
        assert entered.wait(30)
        looked_up = threading.Thread(target=b.channel_stats, args=(*judged, 1))
        looked_up.start()
        looked_up.join(5)
        assert not looked_up.is_alive(), "a judged signature waited for another case's check"
    finally:
        release.set()
        checking.join()
