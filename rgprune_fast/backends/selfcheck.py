"""Self-check on first use: a fused kernel's results are used only once it has agreed with the torch
backend on the machine at hand.

Why: the fused backends (``"triton"``, ``"cuda"``, ``"cpp"``) are tested on the machines CI has. On a
GPU, driver, compiler or Triton version nobody tested, a kernel may fail to compile, fail to launch or,
worst, compute wrong numbers, and every score after it would be wrong although the pure-PyTorch backend
would have served. So rgprune_fast is never worse than the torch backend: the first time a kernel runs
for a *case* (backend, device, op, the variant its flags select, the kernel variant the backend reports
through its optional ``kernel_variant`` hook (Triton: row groups or tiled, with their compile-time
parameters), the inputs' dtypes and layout classes), it first runs on a small slice of the real inputs
(at most 2 examples, every position, every channel within 2M elements (256K on CPU), else 112-127 or
16-31 channels: :func:`_few_channels`) next to :class:`~.torch_ref.TorchBackend`. An exception, or a
result beyond the tolerance below, gives one :class:`~rgprune_fast.errors.KernelSelfCheckWarning` naming
the case and what went wrong, and that case is served by the torch backend for the rest of the process.
Passing cases are remembered and never checked again: one extra small call per case per process. The
real call is the kernel's own, unchanged, so scores are bit-identical with and without the check.

The slice keeps the layout class (:func:`layout_class`): dense inputs are copied in their own dim
order (channels_last stays channels_last, ``[N, T, C]`` stays channel-last, NCHW stays contiguous) at
their storage offset modulo 16; gapped ones (channel slices, other strides) are sliced as a view, gaps
included. Every position is kept and every channel when that is cheap, else a channel count congruent
to the real one modulo 16 in the same power-of-two bucket up to 128. For a backend with the
``kernel_variant`` hook the slice is made to run the real call's kernel variant: the first of (few
channels, every channel) x (copy, view) whose variant matches is checked, else the real inputs
themselves (:func:`_slices`; that check costs one more full kernel call plus the torch reference's
temporaries, a few statistics-dtype copies of the inputs, once per case). Without the hook the slice
is only likely to run the same variant.
``fold_criteria`` is checked on copies of a slice of the running sums: the real sums are updated once.

Tolerance, per element of ``s`` (the sum over ``L`` positions of terms ``t = x * dx``)::

    |kernel - torch| <= rtol |torch| + 4 sqrt(L) eps_acc sum|t| + 4 eps_in sqrt(sum t^2)

``rtol`` is 1e-4 (1e-9 for float64 statistics) and ``eps_acc`` the machine epsilon of the statistics
dtype (float32, or float64): summing L terms in another order moves a float sum by about
``sqrt(L) eps_acc sum|t|`` at most in practice (``sum|t|`` is the scale the rounding of a cancelling sum
has), so a correct kernel passes with an order of magnitude to spare. The last term, for bfloat16 /
float16 inputs only (``eps_in`` is that dtype's epsilon, 0 otherwise), lets a kernel round each product
to the input dtype: independent roundings add up as ``sqrt(sum t^2)`` (about ``sqrt(L)`` times a typical
term). For BatchNorm, ``|t|`` is bounded by ``(|scale| |z - mean| + |shift|) |dy|``. ``dz`` / ``dx``, in
the input dtype: ``|kernel - torch| <= eps(dtype) |torch|`` (one rounding). The running sums of
``fold_criteria``: the rule above over ``L = N + 1`` terms (the old sum and the N examples; for
``batch_sq``, ``2 (sum|s|)^2``), ``first_bad`` exactly. A NaN against a number (either way) is a
mismatch; two NaNs, or equal infinities, agree. On random data a kernel off by 1 % (float32) or 10 %
(bfloat16) over a few thousand positions is caught; smaller errors may pass.

``RGPRUNE_NO_SELFCHECK=1`` skips the checks: it is read whenever a case not yet judged comes up, and the
kernel then serves that call (a case judged before keeps its verdict). Not checked, and served by the
kernel: tensor subclasses (FakeTensor, ...), meta tensors, empty inputs, calls while ``torch.compile``
traces or a CUDA graph captures. The verdicts are per-process state, found on later calls through the
inputs' exact signature (shape, strides, dtype, device) in a few microseconds behind a lock that is
never held during a check (checks run one at a time under a second lock); :func:`reset` forgets them
(for tests). :func:`verdicts` lists them.

Not covered: a kernel that fails only at sizes the slice does not reach (many examples or channels), or
only when it splits positions and the slice's split differs from the real call's (the kernel variant
leaves the split out), and a CUDA error that poisons the context (the torch backend cannot run after it
either)."""

from __future__ import annotations

import math
import os
import threading
import warnings

import torch

from ..errors import KernelSelfCheckWarning
from .contract import ReductionBackend, RunningSums, stat_dtype
from .torch_ref import TorchBackend, _per_channel, _reduce_positions

ENV = "RGPRUNE_NO_SELFCHECK"
OPS = ("channel_stats", "batchnorm_stats", "relu_stats", "fold_criteria")
SLICE_EXAMPLES = 2
SLICE_ELEMENTS = 1 << 21  # elements of one sliced input: every channel if they fit, else fewer (_few_channels)
SLICE_ELEMENTS_CPU = 1 << 18  # on CPU, where the slice costs time rather than a launch
MAX_ALIGN = 16
MAX_SIGNATURES = 4096  # remembered input signatures (a cache in front of the verdicts); cleared when full

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_TORCH = TorchBackend()

_lock = threading.Lock()  # the two dicts below; held for lookups and updates only, never during a check
_check_lock = threading.Lock()  # held while a check runs (it may compile for seconds): one check at a time
_verdicts: dict[tuple, str | None] = {}  # case -> None (the kernel passed) or what went wrong (torch serves)
_by_signature: dict[tuple, bool] = {}  # exact input signature -> whether the kernel serves it


def enabled() -> bool:
    """Whether the checks run (``RGPRUNE_NO_SELFCHECK=1`` turns them off)."""
    return os.environ.get(ENV, "") != "1"


def reset() -> None:
    """Forget every verdict: the next call of each case is checked again (for tests)."""
    with _lock:
        _verdicts.clear()
        _by_signature.clear()


def verdicts() -> dict[tuple, str | None]:
    """A copy of the verdicts: case -> ``None`` (the kernel serves it) or the reason torch serves it."""
    with _lock:
        return dict(_verdicts)


def wrap(backend: ReductionBackend) -> ReductionBackend:
    """``backend`` behind the self-check; the torch backend itself is returned as it is."""
    if type(backend) is TorchBackend or isinstance(backend, SelfCheckedBackend):
        return backend
    return SelfCheckedBackend(backend)


class SelfCheckedBackend(ReductionBackend):
    """A fused backend whose every op is checked against the torch backend on its first use per case;
    ``name`` is the wrapped backend's, ``inner`` the wrapped backend (its kernels, unchecked)."""

    def __init__(self, inner: ReductionBackend):
        self.inner = inner
        self.name = inner.name
        self._identity = (type(inner), inner.name)
        # Ops the backend inherits from TorchBackend (the extension's criteria update) need no check.
        self._fused = {op for op in OPS if getattr(type(inner), op, None) is not getattr(TorchBackend, op)}

    def __repr__(self) -> str:
        return f"SelfCheckedBackend({self.inner!r})"

    def channel_stats(self, x, dx, channel_dim):
        if self._use_kernel("channel_stats", (), (x, dx), channel_dim, _check_channel_stats, x, dx, channel_dim):
            return self.inner.channel_stats(x, dx, channel_dim)
        return _TORCH.channel_stats(x, dx, channel_dim)

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        variant = (("need_dz", bool(need_dz)), ("params", tuple(_dtype_of(v) for v in (mean, scale, shift))))
        args = (z, dy, mean, scale, shift, need_dz)
        if self._use_kernel("batchnorm_stats", variant, (z, dy), 1, _check_batchnorm_stats, *args, out=need_dz):
            return self.inner.batchnorm_stats(*args)
        return _TORCH.batchnorm_stats(*args)

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        variant = (("relu6", upper is not None), ("need_dx", bool(need_dx)))
        args = (r, dr, upper, channel_dim, need_dx)
        if self._use_kernel("relu_stats", variant, (r, dr), channel_dim, _check_relu_stats, *args, out=need_dx):
            return self.inner.relu_stats(*args)
        return _TORCH.relu_stats(*args)

    def fold_criteria(self, s: torch.Tensor, batch: int, sums: RunningSums) -> None:
        present = tuple(name for name in ("abs", "sq", "batch_sq") if getattr(sums, name) is not None)
        variant = (("sums", present), ("sums_dtype", _dtype_of(sums.s)))
        if self._use_kernel("fold_criteria", variant, (s,), 1, _check_fold_criteria, s, batch, sums):
            self.inner.fold_criteria(s, batch, sums)
        else:
            _TORCH.fold_criteria(s, batch, sums)

    def _use_kernel(self, op: str, variant: tuple, tensors: tuple, channel_dim: int, check, *args, out=False) -> bool:
        """Whether the kernel serves this call. The first call of a case checks it (one check at a time,
        so each case is checked and warned about once) and the verdict is kept; later calls find it
        through the inputs' exact signature (dtype, device, shape, strides, offset), without classifying
        them and without waiting for a check of another case. ``out``: the op also writes a tensor like
        ``tensors[-1]`` (``dz`` / ``dx``)."""
        if op not in self._fused:
            return True
        for t in tensors:
            if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
                return True  # FakeTensor, DTensor, ...: nothing to run the check on
        signature = (self._identity, op, variant, channel_dim) + tuple(
            (t.device, t.dtype, t.shape, t.stride(), t.storage_offset()) for t in tensors
        )
        with _lock:
            known = _by_signature.get(signature)
        if known is not None:
            return known
        return self._judge(signature, op, variant, tensors, channel_dim, out, lambda s: check(self.inner, s, *args))

    def _judge(self, signature, op: str, variant: tuple, tensors: tuple, channel_dim: int, out: bool, check) -> bool:
        if not enabled():
            return True  # read at check time; nothing is remembered, so unsetting it checks again
        key = problem = None
        if _checkable(tensors, channel_dim):
            kernel = _kernel_variant(self.inner, op, tensors, channel_dim, out)
            key = (*self._identity, op, tensors[0].device, variant, kernel) + tuple(
                (t.dtype, layout_class(t, channel_dim)) for t in tensors
            )
            with _lock:
                judged = key in _verdicts
                problem = _verdicts.get(key)
            if judged:
                key = None  # judged already (another signature of the same case): no warning
            else:
                with _check_lock:
                    with _lock:
                        judged = key in _verdicts
                        problem = _verdicts.get(key)
                    if judged:
                        key = None  # another thread judged it while this one waited
                    elif _tracing():
                        return True
                    else:
                        problem = check(lambda ts, cd: _slices(self.inner, op, ts, cd, kernel, out))
                        with _lock:
                            _verdicts[key] = problem
        verdict = problem is None
        with _lock:
            if len(_by_signature) >= MAX_SIGNATURES:
                _by_signature.clear()
            _by_signature[signature] = verdict
        if key is not None and problem is not None:
            message = _message(self.name, op, key, tensors, channel_dim, problem)
            warnings.warn(message, KernelSelfCheckWarning, stacklevel=4)  # the caller of the op
        return verdict


def _kernel_variant(backend: ReductionBackend, op: str, tensors: tuple, channel_dim: int, out: bool):
    """``backend.kernel_variant(op, *tensors, channel_dim=...)``: which of its kernel designs (and their
    compile-time parameters) the backend would run on ``tensors`` (then a meta stand-in for the output
    ``out`` says it writes), or None where the backend does not tell (no such hook, or it raised)."""
    hook = getattr(backend, "kernel_variant", None)
    if hook is None:
        return None
    if out:
        tensors = (*tensors, torch.empty_like(tensors[-1], device="meta"))
    try:
        return hook(op, *tensors, channel_dim=channel_dim)
    except Exception:  # noqa: BLE001 - the check itself will see what the kernel does with them
        return None


# --- the case ----------------------------------------------------------------------------------------


def layout_class(t: torch.Tensor, channel_dim: int) -> tuple:
    """``(kind, ndim, channel dim, alignment, dense)`` of ``t``: kind is ``"flat"`` (no positions of size
    > 1), ``"channels_first"`` (positions collapse to one run of stride 1: NCHW, ``[N, C, L]``, channel
    slices), ``"channels_last"`` (positions collapse, channels of stride 1: NHWC, ``[N, T, C]``) or
    ``"strided"`` (neither: the kernels copy first); alignment is the largest power of two up to 16
    dividing, in bytes, the contiguous run (the positions for channels-first and strided, else the
    channels), every stride other than 1 (of dims of size > 1) and the storage offset; dense is whether
    the elements fill one block without gaps (a channel slice has gaps)."""
    cd = channel_dim % t.dim()
    positions = [d for d in range(1, t.dim()) if d != cd and t.shape[d] != 1]
    channels, count = t.shape[cd], 1
    for d in positions:
        count *= t.shape[d]
    if not positions:
        kind = "flat"
    else:
        ordered = sorted(positions, key=lambda d: -t.stride(d))
        chained = all(t.stride(a) == t.stride(b) * t.shape[b] for a, b in zip(ordered, ordered[1:]))
        if chained and t.stride(ordered[-1]) == 1:
            kind = "channels_first"
        elif chained and (channels == 1 or t.stride(cd) == 1):
            kind = "channels_last"
        else:
            kind = "strided"
    run = channels if kind in ("flat", "channels_last") else count
    strides = [t.stride(d) for d in range(t.dim()) if t.shape[d] != 1 and t.stride(d) != 1]
    size = t.element_size()
    align = _alignment(*(v * size for v in (run, t.storage_offset(), *strides)))
    return kind, t.dim(), cd, align, _dense(t)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of storage (any dim order), without gaps or overlaps."""
    dims = sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=lambda d: t.stride(d))
    step = 1
    for d in dims:
        if t.stride(d) != step:
            return False
        step *= t.shape[d]
    return True


def _alignment(*values: int) -> int:
    align = MAX_ALIGN
    for v in values:
        while align > 1 and v % align:
            align //= 2
    return align


def _dtype_of(v) -> torch.dtype | None:
    return v.dtype if isinstance(v, torch.Tensor) else None


def _checkable(tensors: tuple, channel_dim: int) -> bool:
    """Plain, non-empty tensors of at least 2 dims and one shape, on a real device."""
    first = tensors[0]
    for t in tensors:
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return False
        if t.device.type == "meta" or t.dim() < 2 or t.numel() == 0 or t.shape != first.shape:
            return False
    return -first.dim() <= channel_dim < first.dim() and channel_dim % first.dim() != 0


def _tracing() -> bool:
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _message(name: str, op: str, key: tuple, tensors: tuple, channel_dim: int, problem: str) -> str:
    dtypes = "/".join(dict.fromkeys(str(t.dtype).removeprefix("torch.") for t in tensors))
    layouts = []
    for t in tensors:
        kind, ndim, cd, align, dense = layout_class(t, channel_dim)
        layouts.append(f"{kind} {ndim}-d (channel dim {cd}, {align}-byte aligned, {'dense' if dense else 'gapped'})")
    layout = " / ".join(dict.fromkeys(layouts))
    variant = ", ".join(f"{k}={v}" for k, v in key[4] if k not in ("params", "sums_dtype"))
    variant = f" [{variant}]" if variant else ""
    if key[5] is not None:
        variant += f" (kernel variant {key[5]})"
    return (
        f"rgprune_fast: the {name!r} backend's {op}{variant} kernel failed its self-check against the torch "
        f"backend on {tensors[0].device}, {dtypes}, layout {layout}: {problem}. That case uses the torch backend "
        f"for the rest of this process (other cases keep the {name!r} kernels); set {ENV}=1 to skip the checks"
    )


# --- the checks: each returns None (agrees) or what went wrong ---------------------------------------------


def _few_channels(c: int, per_channel: int, device: torch.device) -> int:
    """How many channels the slice keeps (``per_channel``: its elements per channel): all of them if the
    slice stays within the budget (``SLICE_ELEMENTS``, on CPU ``SLICE_ELEMENTS_CPU``), else 112 + C % 16
    (C > 128: the power-of-two bucket 128 that caps tile widths, e.g. Triton's channels_last BLOCK_C),
    else 16 + C % 16; always C modulo 16."""
    budget = SLICE_ELEMENTS_CPU if device.type == "cpu" else SLICE_ELEMENTS
    for k in (c, 112 + c % 16, 16 + c % 16):
        if k <= c and k * per_channel <= budget:
            return k
    return min(c, 16 + c % 16)


def _slice(t: torch.Tensor, channel_dim: int, every_channel: bool = False, copy: bool = True) -> torch.Tensor:
    """The first examples and channels (``every_channel``: all of them) of ``t`` in its layout class:
    for a dense ``t`` (``copy``), a dense copy with ``t``'s dim order (channels_last stays
    ``is_contiguous(channels_last)``) at ``t``'s storage offset modulo 16; else a view (same strides,
    offset and gaps)."""
    cd = channel_dim % t.dim()
    examples = min(t.shape[0], SLICE_EXAMPLES)
    channels = t.shape[cd] if every_channel else _few_channels(t.shape[cd], examples * _positions(t, cd), t.device)
    view = t.narrow(0, 0, examples).narrow(cd, 0, channels)
    if not copy or not _dense(t):
        return view
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))  # outermost first; stable for ties
    strides, step = [0] * t.dim(), 1
    for d in reversed(order):
        strides[d] = step
        step *= view.shape[d]
    offset = t.storage_offset() % MAX_ALIGN
    out = torch.empty(offset + step, dtype=t.dtype, device=t.device).as_strided(view.shape, strides, offset)
    return out.copy_(view)


def _slices(backend: ReductionBackend, op: str, tensors: tuple, channel_dim: int, kernel, out: bool) -> tuple:
    """Slices of ``tensors`` on which ``backend`` runs the kernel variant ``kernel`` it runs on the real
    inputs: the first of (few channels, every channel) x (:func:`_slice`'s copy, a view) that keeps it,
    else the real inputs themselves (the check then costs a full call and the reference's temporaries)."""
    for every_channel in (False, True):
        for copy in (True, False):
            sliced = tuple(_slice(t, channel_dim, every_channel, copy) for t in tensors)
            if kernel is None or _kernel_variant(backend, op, sliced, channel_dim, out) == kernel:
                return sliced
    return tensors


def _positions(t: torch.Tensor, channel_dim: int) -> int:
    return t[0].numel() // max(t.shape[channel_dim % t.dim()], 1) if t.shape[0] else 0


def _raised(e: Exception) -> str:
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"it raised {type(e).__name__}: {line[:300]}" if line else f"it raised {type(e).__name__}"


def _run(kernel, reference):
    """``(reference result, kernel result or None, problem or None)``; a reference that raises cannot
    judge the kernel (``(None, None, None)``: the kernel serves)."""
    try:
        expected = reference()
    except Exception:  # noqa: BLE001 - nothing to compare against: leave the kernel alone
        return None, None, None
    try:
        return expected, kernel(), None
    except Exception as e:  # noqa: BLE001 - a compile or launch error of the kernel
        return expected, None, _raised(e)


def _mismatch(what: str, out, ref: torch.Tensor, rtol: float, atol: torch.Tensor | float) -> str | None:
    """Where ``out`` leaves ``|out - ref| <= rtol |ref| + atol`` (NaN only with NaN), or None."""
    if not isinstance(out, torch.Tensor):
        return f"{what} is {type(out).__name__}, not a tensor"
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return (
            f"{what} is {str(out.dtype).removeprefix('torch.')} {list(out.shape)}, the torch backend's "
            f"{str(ref.dtype).removeprefix('torch.')} {list(ref.shape)}"
        )
    o, r = out.detach().to(device=ref.device, dtype=torch.float64), ref.detach().double()
    tol = rtol * r.abs() + (atol.double() if isinstance(atol, torch.Tensor) else atol) + torch.finfo(ref.dtype).tiny
    o_nan, r_nan = o.isnan(), r.isnan()
    err = torch.where(o == r, 0.0, (o - r).abs())  # equal infinities agree
    err = torch.where(o_nan & r_nan, 0.0, torch.where(o_nan | r_nan, math.inf, err))
    bad = ~((err <= tol) | (err == 0))
    if not bool(bad.any()):
        return None
    worst = int(torch.where(bad, err / tol, 0.0).nan_to_num(math.inf).flatten().argmax())
    index = []
    for size in reversed(o.shape):
        index.insert(0, worst % size)
        worst //= size
    at = tuple(index)
    return (
        f"{what}{list(index)} = {o[at].item():.7g} where the torch backend gives {r[at].item():.7g} (error "
        f"{err[at].item():.3g}, tolerance {tol[at].item():.3g}; {int(bad.sum())} of {bad.numel()} values off)"
    )


def _scale(products: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_p |t|, sqrt(sum_p t^2))`` per (example, channel) of the terms' magnitudes ``|t|``."""
    return _reduce_positions(products, channel_dim), _reduce_positions(products.square(), channel_dim).sqrt()


def _check_stats(what: str, out, ref, mag, spread, in_dtype: torch.dtype, terms: int) -> str | None:
    """``s`` (or a running sum) under the tolerance of the module docstring; ``spread``: the products'
    ``sqrt(sum t^2)``, for the rounding of products to a low-precision input dtype (``None``: none)."""
    rtol = 1e-9 if ref.dtype == torch.float64 else 1e-4
    atol = 4 * math.sqrt(max(terms, 1)) * torch.finfo(ref.dtype).eps * mag
    if in_dtype in _LOW_PRECISION and spread is not None:
        atol = atol + 4 * torch.finfo(in_dtype).eps * spread
    return _mismatch(what, out, ref, rtol, atol)


def _check_grad(what: str, out, ref) -> str | None:
    return _mismatch(what, out, ref, torch.finfo(ref.dtype).eps, 0.0)


def _check_channel_stats(inner: ReductionBackend, slices, x, dx, channel_dim) -> str | None:
    xs, ds = slices((x, dx), channel_dim)

    def reference():
        acc = stat_dtype(x.dtype)
        products = xs.to(acc).abs() * ds.to(acc).abs()
        return _TORCH.channel_stats(xs, ds, channel_dim), *_scale(products, channel_dim)

    expected, out, problem = _run(lambda: inner.channel_stats(xs, ds, channel_dim), reference)
    if expected is None or problem is not None:
        return problem
    try:
        return _check_stats("s", out, *expected, x.dtype, _positions(xs, channel_dim))
    except Exception as e:  # noqa: BLE001 - e.g. an asynchronous launch error surfacing here
        return _raised(e)


def _check_batchnorm_stats(inner: ReductionBackend, slices, z, dy, mean, scale, shift, need_dz) -> str | None:
    zs, ds = slices((z, dy), 1)
    params = []
    for v in (mean, scale, shift):
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != z.shape[1]:
            return None  # not the contract's per-channel vectors: nothing to slice, leave it to the kernel
        params.append(v.narrow(0, 0, zs.shape[1]))
    ms, ss, hs = params

    def reference():
        dz, s = _TORCH.batchnorm_stats(zs, ds, ms, ss, hs, need_dz)
        acc, ndim = stat_dtype(z.dtype), zs.dim()
        centred = (zs.to(acc) - _per_channel(ms.to(acc), ndim)).abs()
        x_bound = centred * _per_channel(ss.to(acc).abs(), ndim) + _per_channel(hs.to(acc).abs(), ndim)
        return dz, s, *_scale(x_bound * ds.to(acc).abs(), 1)

    expected, out, problem = _run(lambda: inner.batchnorm_stats(zs, ds, ms, ss, hs, need_dz), reference)
    if expected is None or problem is not None:
        return problem
    try:
        dz_ref, s_ref, mag, spread = expected
        if not isinstance(out, tuple) or len(out) != 2:
            return f"it returned {type(out).__name__}, not (dz, s)"
        dz, s = out
        return _check_stats("s", s, s_ref, mag, spread, z.dtype, _positions(zs, 1)) or (
            _check_grad("dz", dz, dz_ref) if need_dz else None
        )
    except Exception as e:  # noqa: BLE001
        return _raised(e)


def _check_relu_stats(inner: ReductionBackend, slices, r, dr, upper, channel_dim, need_dx) -> str | None:
    rs, ds = slices((r, dr), channel_dim)

    def reference():
        dx, s = _TORCH.relu_stats(rs, ds, upper, channel_dim, True)
        acc = stat_dtype(r.dtype)
        return dx, s, *_scale(rs.to(acc).abs() * dx.to(acc).abs(), channel_dim)

    expected, out, problem = _run(lambda: inner.relu_stats(rs, ds, upper, channel_dim, need_dx), reference)
    if expected is None or problem is not None:
        return problem
    try:
        dx_ref, s_ref, mag, spread = expected
        if not isinstance(out, tuple) or len(out) != 2:
            return f"it returned {type(out).__name__}, not (dx, s)"
        dx, s = out
        return _check_stats("s", s, s_ref, mag, spread, r.dtype, _positions(rs, channel_dim)) or (
            _check_grad("dx", dx, dx_ref) if need_dx else None
        )
    except Exception as e:  # noqa: BLE001
        return _raised(e)


def _sliced_sums(sums: RunningSums, channels: int) -> RunningSums:
    def part(v):
        return None if v is None else v.narrow(0, 0, channels).clone()

    return RunningSums(part(sums.s), part(sums.first_bad), part(sums.abs), part(sums.sq), part(sums.batch_sq))


def _check_fold_criteria(inner: ReductionBackend, slices, s: torch.Tensor, batch: int, sums: RunningSums) -> str | None:
    if s.dim() != 2 or any(v is not None and v.shape != (s.shape[1],) for v in vars(sums).values()):
        return None  # not the contract's shapes: leave it to the kernel
    ss = s.narrow(1, 0, _few_channels(s.shape[1], s.shape[0], s.device))  # every example: they are summed
    channels = ss.shape[1]
    before, theirs = _sliced_sums(sums, channels), _sliced_sums(sums, channels)

    def reference():
        ours = _sliced_sums(sums, channels)
        _TORCH.fold_criteria(ss, batch, ours)
        return ours

    expected, _, problem = _run(lambda: inner.fold_criteria(ss, batch, theirs), reference)
    if expected is None or problem is not None:
        return problem
    try:
        acc = expected.s.dtype
        s_abs = ss.to(acc).abs().sum(0)
        mags = {"s": s_abs, "abs": s_abs, "sq": ss.to(acc).square().sum(0), "batch_sq": 2 * s_abs.square()}
        for field, mag in mags.items():
            ref = getattr(expected, field)
            if ref is None:
                continue
            mag = getattr(before, field).abs() + mag
            problem = _check_stats(f"sums.{field}", getattr(theirs, field), ref, mag, None, ss.dtype, ss.shape[0] + 1)
            if problem is not None:
                return problem
        if not torch.equal(theirs.first_bad, expected.first_bad):
            return f"sums.first_bad is {theirs.first_bad.tolist()}, the torch backend's {expected.first_bad.tolist()}"
        return None
    except Exception as e:  # noqa: BLE001
        return _raised(e)


__all__ = [
    "ENV",
    "KernelSelfCheckWarning",
    "SelfCheckedBackend",
    "enabled",
    "layout_class",
    "reset",
    "verdicts",
    "wrap",
]
