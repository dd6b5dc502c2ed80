"""A memory-traffic model of ``score`` vs the floor, computed without a GPU: PREDICTIONS, not measurements.

    PYTHONPATH=. python -m benchmarks.suite --model [--out DIR] [--configs resnet50,llama] [--quick]

For each benchmark configuration, at its GPU batch, on fake tensors (``FakeTensorMode``: shapes, dtypes
and strides, no data, no compute; bf16 configurations under CPU autocast, which gives the scored tensors
the dtypes CUDA autocast gives them), it runs the real code once for the floor and once for a scoring
step, and counts:

* ``floor_bytes``: the input + output bytes of every aten op of one floor step (forward + backward,
  ``benchmarks.common.floor_step``), seen by a ``TorchDispatchMode``; views move nothing. A rough lower
  bound of what the GPU moves (real kernels re-read inputs; convolutions and matmuls are partly
  compute-bound).
* the taps' kernels: a scoring step (``engine.session`` probes and plans with the real planner,
  ``taps.TapSet`` installs the real taps, ``scorers.taylor._score_batch`` runs the batch) whose backend
  records every ``channel_stats`` / ``batchnorm_stats`` / ``relu_stats`` / ``fold_criteria`` call with
  its tensors (the reference backend computes the values, so the run proceeds as it would). Each call's
  *raw* bytes are what the fused (Triton) kernel reads and writes; its *extra* bytes are raw minus the
  native backward kernel the floor runs in its place (``batchnorm_stats`` replaces BatchNorm's eval
  backward, which reads ``dy`` and writes ``dz``; ``relu_stats`` replaces ReLU's ``threshold_backward``,
  which reads ``r``, ``dr`` and writes ``dx``; the other calls replace nothing).
* ``g_bytes``: making the output gradient (``OutputGradient``, ``"random"``, normalised): per batch in
  ``score``, precomputed for the floor.
* ``kept_bytes``: memory, not traffic: the bytes of the storages autograd keeps for backward during the
  scoring step minus those kept during the floor (``saved_tensors_hooks``; parameters excluded).

``extra = taps' extra + g``; predicted score/floor = (floor + extra) / floor, if both were
bandwidth-bound; predicted extra ms = extra / bandwidth (:data:`BANDWIDTH_TBPS`). docs/traffic_model.md
says what is and is not counted.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rgprune_fast.backends.torch_ref import TorchBackend
from rgprune_fast.criteria import DEFAULT_METHOD, parse_methods
from rgprune_fast.engine.gradients import OutputGradient
from rgprune_fast.engine.model_state import requires_grad
from rgprune_fast.engine.session import prepare, session
from rgprune_fast.errors import SkippedUnitsWarning
from rgprune_fast.scorers.taylor import _score_batch
from rgprune_fast.taps import TapSet

from .common import commit, floor_step, import_torchvision
from .memory import fake_tensors
from .models import build
from .suite import Config, autocast, make_batch

# Copy bandwidth per device, TB/s (1e12 bytes per second; the spec sheets' HBM / GDDR figures)
BANDWIDTH_TBPS = {"H100 SXM": 3.35, "A100": 2.0, "RTX 4090": 1.0, "H200": 4.8}
GB = 1e9
TITLE = "PREDICTIONS (traffic model, not measurements)"


def footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of ``t`` (a broadcast dim, stride 0, is one element)."""
    if t.numel() == 0:
        return 0
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    return elements * t.element_size()


def needs_copy(t: torch.Tensor, channel_dim: int) -> bool:
    """Whether the Triton backend's ``as_ncp`` copies ``t`` (its position dims do not collapse into one
    stride); the same rule as ``rgprune_fast/backends/triton/common.py`` (test_traffic_quick checks)."""
    t = t.movedim(channel_dim, 1) if channel_dim != 1 else t
    if t.dim() == 2:
        return False
    spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    return not all(outer[1] == inner[0] * inner[1] for outer, inner in zip(spatial, spatial[1:]))


# ------------------------------------------------------------------------------------------------ the floor


# ops that move no bytes (allocation, metadata); views are recognised by their schema
_FREE = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
         "_unsafe_view", "_reshape_alias", "as_strided_", "resize_", "set_"}  # fmt: skip
# in-place ops that write ``self`` without reading it
_WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}


def _unread(name: str, named: dict) -> set[str]:
    """Tensor arguments an op takes but does not read on the GPU path the floor runs."""
    unread = {"out"}
    if name in _WRITE_ONLY:
        unread.add("self")
    mask = named.get("output_mask") or (True, True, True)
    if name == "convolution_backward" and not mask[1]:
        unread.add("input")  # grad_input needs grad_output and the weight only
    if name in ("native_batch_norm_backward", "batch_norm_backward"):
        training = named.get("train", named.get("update", True))
        if not training and not (mask[1] or mask[2]):
            unread.add("input")  # eval-mode grad_input = dy * weight * invstd (an elementwise kernel)
    if name.startswith("max_pool") and name.endswith("_backward"):
        unread.add("self")  # the indices say where the gradient goes
    return unread


def op_bytes(func, args: tuple, kwargs: dict, out) -> int:
    """Input + output bytes of one aten op (0 for views and allocations): the floor's rough count."""
    if func.namespace != "aten" or getattr(func, "is_view", False):
        return 0
    name = func._schema.name.split("::")[-1]
    if name in _FREE:
        return 0
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outputs:
        return 0  # metadata queries (sizes, item of a scalar, equal)
    named = dict(zip((a.name for a in func._schema.arguments), args))
    named.update(kwargs)
    unread = _unread(name, named)
    seen, total = set(), 0
    for arg, value in named.items():
        if arg in unread:
            continue
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += footprint(t)
    return total + sum(footprint(t) for t in outputs)


class TrafficCounter(TorchDispatchMode):
    """``bytes``: the sum of :func:`op_bytes` over the aten ops run while active (and not ``paused``);
    ``by_op`` per op; ``ops``: how many of them moved bytes (kernel launches, roughly)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops = 0
        self.paused = 0
        self.by_op: Counter = Counter()

    def reset(self) -> None:
        self.bytes, self.ops, self.by_op = 0, 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        moved = 0 if self.paused else op_bytes(func, args, kwargs, out)
        if moved:
            self.bytes += moved
            self.ops += 1
            self.by_op[func._schema.name.split("::")[-1]] += moved
        return out


class Kept:
    """Bytes of the distinct storages autograd saves for backward while active (``exclude``: storages
    that exist anyway, e.g. parameters)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self.exclude = {_storage_key(t) for t in exclude}
        self.storages: dict = {}
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.exclude:
            self.storages[key] = t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def _storage_key(t: torch.Tensor):
    return t.untyped_storage()._cdata


# ------------------------------------------------------------------------------------------------- the taps


class RecordingBackend(TorchBackend):
    """The reference backend (it computes the values, so scoring proceeds as usual) recording every op the
    taps and the criteria call, with the bytes the fused kernel moves (``raw``), the bytes of the native
    backward kernel it replaces (``native``) and the difference (``extra``)."""

    name = "traffic-model"

    def __init__(self, counter: TrafficCounter | None = None):
        self.records: list[dict] = []
        self.counter = counter  # paused during the reference ops: each record stands for one fused kernel
        self._depth = 0  # the reference relu_stats calls channel_stats: one record per outer call

    def _run(self, fn: Callable):
        self._depth += 1
        if self.counter is not None:
            self.counter.paused += 1
        try:
            return fn()
        finally:
            self._depth -= 1
            if self.counter is not None:
                self.counter.paused -= 1

    def _record(self, op: str, frame, tensors: dict, raw: int, native: int, **info) -> None:
        if self._depth:
            return
        ctx = frame.f_locals.get("ctx")
        tap = getattr(ctx, "tap", None) or getattr(getattr(ctx, "record", None), "tap", None)
        owner = frame.f_locals.get("self")
        self.records.append({
            "op": op,
            "tap": type(ctx).__name__.removesuffix("Backward") if ctx is not None else type(owner).__name__,
            "key": tap.plan.key if tap is not None else getattr(owner, "key", "?"),
            "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                            "bytes": footprint(t), "copied": copied} for k, (t, copied) in tensors.items()},
            "raw": raw, "native": native, "extra": raw - native, **info,
            "ms": {d: raw / (bw * 1e12) * 1e3 for d, bw in BANDWIDTH_TBPS.items()},
        })  # fmt: skip

    def channel_stats(self, x, dx, channel_dim):
        s = self._run(lambda: super(RecordingBackend, self).channel_stats(x, dx, channel_dim))
        frame = sys._getframe(1)
        cx, cd = needs_copy(x, channel_dim), needs_copy(dx, channel_dim)
        raw = footprint(x) * (1 + 2 * cx) + footprint(dx) * (1 + 2 * cd) + footprint(s)
        ctx = frame.f_locals.get("ctx")
        recompute = 2 * footprint(x) if type(ctx).__name__ == "ActivationTapBackward" else 0  # h = act(z) again
        self._record("channel_stats", frame, {"x": (x, cx), "dx": (dx, cd), "s": (s, False)}, raw + recompute, 0,
                     recompute=recompute)  # fmt: skip
        return s

    def batchnorm_stats(self, z, dy, mean, scale, shift, need_dz):
        dz, s = self._run(lambda: super(RecordingBackend, self).batchnorm_stats(z, dy, mean, scale, shift, need_dz))
        cz, cd = needs_copy(z, 1), needs_copy(dy, 1)
        raw = footprint(z) * (1 + 2 * cz) + footprint(dy) * (1 + 2 * cd + need_dz) + footprint(s)
        # the floor's eval-mode BatchNorm backward: reads dy, writes dz (it computes dz for every BN)
        self._record("batchnorm_stats", sys._getframe(1), {"z": (z, cz), "dy": (dy, cd), "s": (s, False)}, raw,
                     2 * footprint(dy), need_grad=bool(need_dz))  # fmt: skip
        return dz, s

    def relu_stats(self, r, dr, upper, channel_dim, need_dx):
        dx, s = self._run(lambda: super(RecordingBackend, self).relu_stats(r, dr, upper, channel_dim, need_dx))
        cr, cd = needs_copy(r, channel_dim), needs_copy(dr, channel_dim)
        raw = footprint(r) * (1 + 2 * cr) + footprint(dr) * (1 + 2 * cd + need_dx) + footprint(s)
        # the floor's threshold_backward: reads r and dr, writes dx
        self._record("relu_stats", sys._getframe(1), {"r": (r, cr), "dr": (dr, cd), "s": (s, False)}, raw,
                     footprint(r) + 2 * footprint(dr), need_grad=bool(need_dx))  # fmt: skip
        return dx, s

    def fold_criteria(self, s, batch, sums):
        self._run(lambda: super(RecordingBackend, self).fold_criteria(s, batch, sums))
        self._record("fold_criteria", sys._getframe(1), {"s": (s, False)}, footprint(s), 0)


class _CountedGradient(OutputGradient):
    """The output gradient ``score`` makes per batch, its ops counted by ``counter``; ``output``: the
    shape and dtype of the last output it was made for."""

    def __init__(self, counter: TrafficCounter, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter
        self.output: tuple | None = None

    def __call__(self, output, targets, batch):
        self.output = (tuple(output.shape), output.dtype)
        with self.counter:
            return super().__call__(output, targets, batch)


def _score_step(model: nn.Module, x, backend: RecordingBackend, gradient: _CountedGradient, kept: Kept):
    """``score(model, [x, x])`` (default method, ``gradient``) as ``scorers.taylor.score`` runs it, with
    ``backend``; the second batch (the steady state: the running sums exist) is the one measured: the
    backend's records and counter, ``gradient``'s counter and ``kept``. Returns the plans."""
    target = prepare(model, seed=0, modules=None)
    criteria, _ = parse_methods(DEFAULT_METHOD)
    with session(target, [x, x], max_batches=2, molchanov=False) as run:
        taps = TapSet(run.plans, backend, criteria, target.device)
        with requires_grad(target.model.parameters(), False), taps.installed():
            for i, batch in enumerate(run.batches):
                measured = i == 1
                if measured:
                    backend.records.clear()
                    gradient.counter.reset()
                with (
                    kept if measured else contextlib.nullcontext(),
                    backend.counter if measured else contextlib.nullcontext(),
                ):
                    _score_batch(target.model, batch, taps, gradient)
        return run.plans


# ---------------------------------------------------------------------------------------------- predictions


def measure(model: nn.Module, x: torch.Tensor, amp=None) -> dict:
    """The traffic of one scoring step and one floor step of ``model`` (parameters frozen, eval mode) on
    batch ``x`` (real or fake tensors; ``amp``: an autocast context for both, or None). The floor
    backpropagates a normalised random ``g`` in the output's dtype, as the suite's floor does."""
    exclude = [*model.parameters(), *model.buffers(), x]
    with amp if amp is not None else contextlib.nullcontext():
        backend, g_counter, score_kept = RecordingBackend(TrafficCounter()), TrafficCounter(), Kept(exclude)
        gradient = _CountedGradient(g_counter, "random", True, 0, x.device, shift=False)
        plans = _score_step(model, x, backend, gradient, score_kept)
        shape, dtype = gradient.output
        g = torch.randn(shape, device=x.device)
        g = (g / g.norm(dim=-1, keepdim=True)).to(dtype)
        floor, floor_kept = TrafficCounter(), Kept(exclude)
        with floor_kept, floor:
            floor_step(model, x, g, [p.module for p in plans])
    records = backend.records
    taps = sum(r["extra"] for r in records)
    extra = taps + g_counter.bytes
    kinds = Counter(p.kind + (f" ({p.fused})" if p.fused else "") for p in plans)
    return {
        "floor_bytes": floor.bytes, "taps_bytes": taps, "g_bytes": g_counter.bytes, "extra_bytes": extra,
        "extra_pct": 100 * extra / floor.bytes, "predicted_ratio": (floor.bytes + extra) / floor.bytes,
        "predicted_extra_ms": {d: extra / (bw * 1e12) * 1e3 for d, bw in BANDWIDTH_TBPS.items()},
        "kernel_bytes": sum(r["raw"] for r in records), "kernels": len(records),
        "predicted_kernel_ms": {d: sum(r["raw"] for r in records) / (bw * 1e12) * 1e3
                                for d, bw in BANDWIDTH_TBPS.items()},
        "kept_bytes": score_kept.bytes - floor_kept.bytes, "taps": dict(kinds), "scored": len(plans),
        "floor_ops": floor.ops, "extra_ops": backend.counter.ops + len(records) - floor.ops,
        "floor_top_ops": dict(floor.by_op.most_common(12)), "kernel_records": records,
    }  # fmt: skip


def _set_layout(model: nn.Module, layout: str) -> None:
    """``model.to(memory_format=...)`` for fake parameters (``Module.to`` cannot swap fake tensors)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for t in [*model.parameters(), *model.buffers()]:
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=fmt)


def _predict(cfg: Config, batch: int, models: dict) -> dict:
    if cfg.model not in models:
        with contextlib.suppress(ImportError):
            import_torchvision()  # transformers imports torchvision, which needs the op shim on CPU torch
        models[cfg.model] = build(cfg.model)
    model = models[cfg.model]
    if model is None:
        import transformers  # noqa: F401  (raises the reason: not installed, or not importable)

        raise RuntimeError("the model could not be built")
    _set_layout(model, cfg.layout)
    for p in model.parameters():
        p.requires_grad_(False)
    cpu = torch.device("cpu")
    x = make_batch(cfg, batch, cpu, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", SkippedUnitsWarning)
        row = measure(model, x, autocast(cfg, cpu))
    skipped = sorted({str(w.message) for w in caught if issubclass(w.category, SkippedUnitsWarning)})
    return {"config": cfg.name, "model": cfg.model, "dtype": cfg.dtype, "layout": cfg.layout, "batch": batch,
            **row, "warnings": skipped}  # fmt: skip


def predict(configs: Iterable[Config], batches: dict[str, int] | None = None, log=print) -> list[dict]:
    """One row per configuration (at ``batches[cfg.name]``, default the config's GPU batch), on fake
    tensors; a configuration whose model cannot be built or run is skipped with a line saying why."""
    rows, models = [], {}
    with fake_tensors():
        for cfg in configs:
            batch = (batches or {}).get(cfg.name, cfg.batch)
            t0 = time.perf_counter()
            try:
                rows.append(_predict(cfg, batch, models))
            except Exception as e:  # one model's failure must not cost the others
                log(f"  skipped {cfg.name}: {type(e).__name__}: {e}")
                continue
            r = rows[-1]
            log(f"  {cfg.name} batch {batch}: floor {r['floor_bytes'] / GB:.2f} GB, extra {r['extra_bytes'] / GB:.3f} "
                f"GB, predicted score/floor {r['predicted_ratio']:.3f} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return rows


# -------------------------------------------------------------------------------------------------- report


def kernel_kinds(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The kernel records grouped by (tap Function, op), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for k in records:
        groups.setdefault((k["tap"], k["op"]), []).append(k)
    return groups


def markdown(rows: list[dict], command: str, sha: str) -> str:
    devices = list(BANDWIDTH_TBPS)
    out = [
        f"# {TITLE}",
        "",
        f"Commit {sha}; `{command}`; torch {torch.__version__}. Computed on fake tensors at each configuration's "
        "GPU batch (no GPU, no data). GB = 1e9 bytes. floor = input + output bytes of every aten op of one floor "
        "step (a rough lower bound); extra = the taps' kernels beyond the floor's backward + making the output "
        "gradient; predicted score/floor = (floor + extra) / floor if both were bandwidth-bound; extra ms = extra / "
        "the device's bandwidth. What is and is not counted: docs/traffic_model.md.",
        "",
        "| model | dtype | layout | batch | floor GB | extra GB | extra/floor % | predicted score/floor | "
        + " | ".join(f"extra ms {d} ({BANDWIDTH_TBPS[d]} TB/s)" for d in devices)
        + " |",
        "|" + "---|" * (8 + len(devices)),
    ]
    for r in rows:
        ms = " | ".join(f"{r['predicted_extra_ms'][d]:.3f}" for d in devices)
        out.append(f"| {r['model']} | {r['dtype']} | {r['layout']} | {r['batch']} | {r['floor_bytes'] / GB:.2f} "
                   f"| {r['extra_bytes'] / GB:.3f} | {r['extra_pct']:.2f} | {r['predicted_ratio']:.3f} "
                   f"| {ms} |")  # fmt: skip
    out += [
        "",
        "Details: extra = taps + g (making the output gradient); tap kernels = the fused kernels' own traffic "
        "(raw, not net of the native kernels they replace) and their time at each bandwidth; kept = memory "
        "autograd keeps during scoring beyond what it keeps during the floor (not traffic); launches = aten ops "
        "that move bytes (each fused kernel one) of the scoring step beyond the floor's (not timed).",
        "",
        "| config | taps | kernels | kernel GB | "
        + " | ".join(f"kernel ms {d}" for d in devices)
        + " | taps GB | g GB | kept GB | floor launches | extra launches |",
        "|" + "---|" * (9 + len(devices)),
    ]
    for r in rows:
        taps = ", ".join(f"{n} {k}" for k, n in sorted(r["taps"].items()))
        ms = " | ".join(f"{r['predicted_kernel_ms'][d]:.3f}" for d in devices)
        out.append(f"| {r['config']} | {taps} | {r['kernels']} | {r['kernel_bytes'] / GB:.3f} | {ms} "
                   f"| {r['taps_bytes'] / GB:.3f} | {r['g_bytes'] / GB:.3f} "
                   f"| {r['kept_bytes'] / GB:.3f} | {r['floor_ops']} | {r['extra_ops']} |")  # fmt: skip
    out += [
        "",
        "Tap kernels by kind: count, the bytes one kernel moves (mean, MB = 1e6 bytes), all of them (raw GB), "
        "beyond the native kernels they replace (extra GB), and their time at each bandwidth (ms).",
        "",
        "| config | tap | kernel | count | MB each | raw GB | extra GB | "
        + " | ".join(f"ms {d}" for d in devices)
        + " |",
        "|" + "---|" * (7 + len(devices)),
    ]
    for r in rows:
        for (tap, op), group in kernel_kinds(r["kernel_records"]).items():
            raw = sum(k["raw"] for k in group)
            ms = " | ".join(f"{raw / (bw * 1e12) * 1e3:.3f}" for bw in BANDWIDTH_TBPS.values())
            out.append(f"| {r['config']} | {tap} | {op} | {len(group)} | {raw / len(group) / 1e6:.2f} "
                       f"| {raw / GB:.3f} | {sum(k['extra'] for k in group) / GB:.3f} | {ms} |")  # fmt: skip
    warned = [r for r in rows if r["warnings"]]
    if warned:
        out += ["", "Modules the default selection left out (as `score` would):"]
        out += [f"- {r['config']}: {w}" for r in warned for w in r["warnings"]]
    return "\n".join(out) + "\n"


def run(configs: list[Config], out: Path | None, command: str) -> list[dict]:
    """``suite --model``: predict, print the table, write ``model.json`` / ``model.md`` into ``out``."""
    started = time.perf_counter()
    print(f"{TITLE}: {len(configs)} configuration(s) on fake tensors, no GPU used", flush=True)
    rows = predict(configs)
    sha = commit()
    text = markdown(rows, command, sha)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"title": TITLE, "commit": sha, "command": command, "torch": torch.__version__,
                "bandwidth_tbps": BANDWIDTH_TBPS}  # fmt: skip
        (out / "model.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        (out / "model.md").write_text(text)
    print(f"traffic model finished in {time.perf_counter() - started:.0f} s"
          + (f"; wrote {out}/model.json, model.md" if out is not None else ""))  # fmt: skip
    return rows
