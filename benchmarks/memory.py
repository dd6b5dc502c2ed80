"""Peak memory of four scorers on the same batch and the same output gradient, measured without a GPU.

    PYTHONPATH=. python -m benchmarks.memory --quick --out DIR   # CNNs + tiny transformers + a 7B-wide layer (fake)
    PYTHONPATH=. python -m benchmarks.memory --out DIR           # wider models, a real 7B-wide layer at seq 512
    PYTHONPATH=. python -m benchmarks.memory --plan --out DIR    # Llama-2-7B / 70B at seq 2048: the 80 GB table

Scorers (each run once; memory is deterministic):

* ``floor``: parameters frozen, one forward and one backward of the output gradient ``g``, no taps; the
  backward stops where the scorer's does (``benchmarks.common.floor_step``).
* ``score``: ``rg.score`` with its defaults (method, units, backend), ``g`` handed in as a callable.
* ``naive``: ``rgprune_fast.scorers.naive.score`` (hooks that copy each scored output), the same ``g``.
* ``weight_taylor``: a training step's backward (Torch-Pruning / LLM-Pruner): every parameter requires
  grad, ``loss = <output, g>``, ``loss.backward()``, then ``|W * dW|`` summed per output row; the
  ``.grad`` tensors count.

Peak bytes come from :class:`benchmarks.memory_tracker.MemoryTracker` (every storage created and freed
during the call; parameters, inputs and ``g`` existed before and are not counted), on CUDA also
``torch.cuda.max_memory_allocated`` above the start. Rows marked ``fake`` ran on fake tensors
(``FakeTensorMode``: shapes, dtypes and storage sizes without data or compute), which is how full-width
7B / 70B layers are measured on a CPU; the quick run checks fake against real on the tiny models.
``--plan`` measures whole Llama-2-7B / 70B-shaped models (bf16, sequence 2048) on fake tensors, one
and two layers (per-layer bytes) and the full depth at batch 1 and 2 (per-example bytes, confirming the
per-layer extrapolation), with and without activation checkpointing, and turns them into the largest
batch that fits an 80 GB GPU. Writes ``memory.json`` and ``memory.md`` (``plan.json`` / ``plan.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import rgprune_fast as rg
from rgprune_fast.engine.batching import as_batch, logits_of
from rgprune_fast.engine.gradients import OutputGradient
from rgprune_fast.engine.planning import plan_taps
from rgprune_fast.engine.probe import run_probe
from rgprune_fast.scorers import naive

from .common import floor_step, import_torchvision
from .memory_tracker import MemoryTracker
from .suite import environment

SCORERS = ("floor", "score", "naive", "weight_taylor")
GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class Spec:
    name: str
    family: str  # resnet18 | resnet50 | llama | mistral | qwen2 | gpt2 | bert
    shape: tuple = ()  # transformers: (hidden, intermediate, layers, heads, kv heads, vocab)
    batch: int = 2
    size: int = 32  # sequence length or image side
    fake: bool = False
    dtype: str = "float32"

    @property
    def tokens(self) -> bool:
        return not self.family.startswith("resnet")


TINY = (64, 176, 2, 4, 2, 1000)
WIDE = (512, 1376, 4, 8, 4, 32000)
LLAMA2_7B = (4096, 11008, 32, 32, 32, 32000)
LLAMA2_70B = (8192, 28672, 80, 64, 8, 128256)  # Llama-2-70B layer widths; Llama-3-70B vocabulary


def one_layer(shape: tuple) -> tuple:
    return (*shape[:2], 1, *shape[3:])


QUICK_SPECS = [
    Spec("resnet18 8x64²", "resnet18", batch=8, size=64),
    Spec("resnet50 8x64²", "resnet50", batch=8, size=64),
    *[Spec(f"{f} tiny 8x64", f, TINY, 8, 64) for f in ("llama", "mistral", "qwen2", "gpt2", "bert")],
    Spec("llama tiny 8x64 (fake)", "llama", TINY, 8, 64, fake=True),
    Spec("resnet18 8x64² (fake)", "resnet18", batch=8, size=64, fake=True),
    Spec("llama2-7b 1 layer 4x256 (fake)", "llama", one_layer(LLAMA2_7B), 4, 256, fake=True),
]
FULL_SPECS = [
    Spec("resnet18 32x128²", "resnet18", batch=32, size=128),
    Spec("resnet50 32x128²", "resnet50", batch=32, size=128),
    *[Spec(f"{f} 512w 8x256", f, WIDE, 8, 256) for f in ("llama", "mistral", "qwen2", "gpt2", "bert")],
    Spec("llama2-7b 1 layer 2x512", "llama", one_layer(LLAMA2_7B), 2, 512),
    Spec("llama2-7b 1 layer 2x512 (fake)", "llama", one_layer(LLAMA2_7B), 2, 512, fake=True),
    Spec("llama2-7b 1 layer 8x2048 (fake)", "llama", one_layer(LLAMA2_7B), 8, 2048, fake=True),
    Spec("llama2-70b 1 layer 8x2048 (fake)", "llama", one_layer(LLAMA2_70B), 8, 2048, fake=True),
]


# ---------------------------------------------------------------------------------------------- fake tensors


@contextlib.contextmanager
def fake_tensors():
    """``FakeTensorMode`` in which storages of fake tensors report distinct ``data_ptr()`` s (their
    ``StorageImpl`` address; all are 0 otherwise), so that rgprune_fast's structure probe, which compares
    storages to find aliases, sees what it sees on real tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    original = torch.UntypedStorage.data_ptr

    def data_ptr(self):
        return self._cdata if self.device.type == "meta" else original(self)

    torch.UntypedStorage.data_ptr = data_ptr
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield mode
    finally:
        torch.UntypedStorage.data_ptr = original


@contextlib.contextmanager
def phases(tracker: MemoryTracker):
    """Split the peaks of ``score`` / ``naive.score`` into ``setup`` (the structure probe: a forward of
    ``PROBE_EXAMPLES`` examples with every parameter requiring grad, and the planning) and ``batches``
    (from the first batch on, after the probe is freed)."""
    from rgprune_fast.taps import TapSet

    begin, install = getattr(TapSet, "begin_batch", None), getattr(naive, "_install", None)

    def begin_batch(self, *args, **kwargs):
        tracker.set_phase("batches")
        return begin(self, *args, **kwargs)

    def install_hooks(*args, **kwargs):
        tracker.set_phase("batches")
        return install(*args, **kwargs)

    if begin is not None:
        TapSet.begin_batch = begin_batch
    if install is not None:
        naive._install = install_hooks
    tracker.set_phase("setup")
    try:
        yield
    finally:
        if begin is not None:
            TapSet.begin_batch = begin
        if install is not None:
            naive._install = install


def measure(fn, fake: bool, split: bool = False) -> tuple[int, float, dict]:
    """(peak bytes, seconds, extra) of one call of ``fn``; with ``split``, the peaks of its ``setup``
    and ``batches`` phases in ``extra`` (score / naive). On fake tensors the scorers stop with a
    data-dependent error when they read their sums back to the host (after the last backward, so after
    the peak): that is counted as the end of the call."""
    extra = {}
    cuda = torch.cuda.is_available() and not fake
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tracker = MemoryTracker()
    t0 = time.perf_counter()
    try:
        with tracker, phases(tracker) if split else contextlib.nullcontext():
            fn()
    except Exception as e:
        from torch._subclasses.fake_tensor import DataDependentOutputException

        if not (fake and isinstance(e, DataDependentOutputException)):
            raise
        extra["stopped_at_readback"] = True
    seconds = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        extra["cuda_peak"] = torch.cuda.max_memory_allocated() - base
    extra["peak_op"] = tracker.peak_op
    if split:
        extra["setup_peak"] = tracker.phase_peaks.get("setup", 0)
        extra["batches_peak"] = tracker.phase_peaks.get("batches", 0)
    return tracker.peak, seconds, extra


# --------------------------------------------------------------------------------------------------------------- models


def _transformers():
    with contextlib.suppress(ImportError):
        import_torchvision()  # transformers imports torchvision, which needs the op shim on CPU torch
    import transformers

    return transformers


def build_transformer(family: str, shape: tuple, seq: int):
    tf = _transformers()
    hidden, inter, layers, heads, kv, vocab = shape
    if family in ("llama", "mistral", "qwen2"):
        config_cls, model_cls = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        }[family]
        config = config_cls(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                            num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                            max_position_embeddings=max(4096, seq))  # fmt: skip
        return model_cls(config)
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=hidden, n_inner=inter, n_layer=layers, n_head=heads, vocab_size=vocab,
                               n_positions=max(1024, seq))  # fmt: skip
        return tf.GPT2LMHeadModel(config)
    if family == "bert":
        config = tf.BertConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, vocab_size=vocab,
                               max_position_embeddings=max(512, seq))  # fmt: skip
        return tf.BertForMaskedLM(config)
    raise ValueError(family)


def build(spec: Spec, device: torch.device):
    """(model, input tensor, output gradient g) with random weights, eval mode, parameters frozen."""
    torch.manual_seed(0)
    dtype = getattr(torch, spec.dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if spec.tokens:
                model = build_transformer(spec.family, spec.shape, spec.size)
                x = torch.randint(0, spec.shape[-1], (spec.batch, spec.size))
                out_shape = (spec.batch, spec.size, spec.shape[-1])
            else:
                model = getattr(import_torchvision().models, spec.family)()
                x = torch.randn(spec.batch, 3, spec.size, spec.size)
                out_shape = (spec.batch, 1000)
            g = torch.randn(out_shape, dtype=torch.float32)
            g = (g / g.norm(dim=-1, keepdim=True)).to(dtype)
    finally:
        torch.set_default_dtype(default)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), x, g


def plans_of(model, x, tokens: bool):
    small = {"input_ids": x[:2]} if tokens else x[:2]
    was = model.training
    model.eval()
    try:
        return plan_taps(model, run_probe(model, as_batch(small, 0)), None, molchanov=False)
    finally:
        model.train(was)


def accumulator_bytes(plans, examples: int, itemsize: int = 4) -> int:
    """What score() may hold beyond the floor by design: per scored unit spec, one batch's statistic
    ``s[N, C]`` plus at most five per-channel running sums (``RunningSums``), in float32."""
    return sum(p.channels * itemsize * (examples + 5) for p in plans)


def scorers(model, x, g, tokens: bool, scored, checkpointing: bool = False, gradient=None, free_grads=False) -> dict:
    """The four calls on one batch ``x`` and one output gradient ``g`` (``gradient``: what score()
    gets instead of ``g``, e.g. ``"random"``; ``free_grads``: weight-Taylor reduces each parameter's
    gradient as soon as it is accumulated and drops it, as under FSDP, where the full gradient of a
    layer exists only until it is reduce-scattered)."""
    call = (lambda inp: model(input_ids=inp)) if tokens else model
    data = {"input_ids": x} if tokens else x
    given = gradient if gradient is not None else (lambda out, batch: g)
    normalize = gradient is not None

    @contextlib.contextmanager
    def training():  # Hugging Face checkpoints only in training mode (the Llama family has no dropout)
        if checkpointing:
            model.train()
        try:
            yield
        finally:
            model.eval()

    def floor():
        with training():
            if checkpointing:  # HF makes the embedding output require grad: backward reaches it anyway
                torch.autograd.backward(logits_of(call(x)), g)
            else:
                floor_step(call, x, g, scored)

    def weight_taylor():
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        importance, handles = [], []

        def reduce_and_drop(p):
            importance.append((p.detach() * p.grad).abs().reshape(p.shape[0], -1).sum(1))
            p.grad = None

        if free_grads:
            handles = [p.register_post_accumulate_grad_hook(reduce_and_drop) for p in params]
        try:
            with training():
                logits_of(call(x)).backward(g)
            return importance + [(p.detach() * p.grad).abs().reshape(p.shape[0], -1).sum(1)
                                 for p in params if p.grad is not None]  # fmt: skip
        finally:
            for h in handles:
                h.remove()
            for p in params:
                p.requires_grad_(False)
                p.grad = None

    return {
        "floor": floor,
        "score": lambda: rg.score(model, data, gradient=given, normalize=normalize),
        "naive": lambda: naive.score(model, data, gradient=given, normalize=normalize),
        "weight_taylor": weight_taylor,
    }


def measure_spec(spec: Spec, device: torch.device, only: tuple = SCORERS) -> dict:
    context = fake_tensors() if spec.fake else contextlib.nullcontext()
    with context:
        model, x, g = build(spec, device)
        plans = plans_of(model, x, spec.tokens)
        fns = scorers(model, x, g, spec.tokens, [p.module for p in plans])
        row = {**asdict(spec), "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
               "g_bytes": g.numel() * g.element_size(), "accumulator_bytes": accumulator_bytes(plans, spec.batch),
               "scored_channels": sum(p.channels for p in plans)}  # fmt: skip
        for name in only:
            peak, seconds, extra = measure(fns[name], spec.fake, split=name in ("score", "naive"))
            row[f"{name}_peak"], row[f"{name}_s"] = peak, seconds
            row.update({f"{name}_{k}": v for k, v in extra.items()})
    for name in only[1:]:
        row[f"{name}/floor"] = row[f"{name}_peak"] / row["floor_peak"]
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | params MiB | floor MiB | score | of which set-up (probe) | naive | weight-Taylor | "
             "score / floor | (score − acc.) / floor | naive / floor | weight-Taylor / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        f = r["floor_peak"]
        lines.append(
            f"| {r['name']} | {r['params_bytes'] / MiB:.1f} | {f / MiB:.2f} | {r['score_peak'] / MiB:.2f} | "
            f"{r.get('score_setup_peak', 0) / MiB:.2f} | {r['naive_peak'] / MiB:.2f} | "
            f"{r['weight_taylor_peak'] / MiB:.2f} | **{r['score_peak'] / f:.3f}** | "
            f"{(r['score_peak'] - r['accumulator_bytes']) / f:.3f} | {r['naive_peak'] / f:.2f} | "
            f"{r['weight_taylor_peak'] / f:.2f} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------------ plan


def gradient_cost(vocab: int, tokens: int, dtype: torch.dtype) -> dict:
    """Extra peak of making the logits-sized output gradient (real tensors), beyond the output itself:
    the built-in ``"random"`` and ``"label"`` gradients, and a callable returning ``g`` in the output's
    dtype (normalize=False)."""
    logits = torch.zeros(1, tokens, vocab, dtype=dtype)
    targets = torch.randint(0, vocab, (1, tokens))
    given = torch.zeros_like(logits)
    out = {"vocab": vocab, "tokens": tokens, "dtype": str(dtype)[6:], "g_bytes": logits.numel() * logits.element_size()}
    cases = {
        "random": lambda: OutputGradient("random", True, 0, logits.device, shift=True)(logits, None, None),
        "label": lambda: OutputGradient("label", True, 0, logits.device, shift=True)(logits, targets, None),
        "callable": lambda: OutputGradient(lambda o, b: given, False, 0, logits.device)(logits, None, None),
    }
    for name, fn in cases.items():
        peak, seconds, _ = measure(fn, fake=False)
        out[f"{name}_peak"], out[f"{name}_s"] = peak, seconds
    return out


def plan_rows(shape: tuple, tag: str, seq: int = 2048, dtype: str = "bfloat16", depth_check: bool = True) -> list:
    """Fake-tensor peaks of floor / score / naive (default random gradient) / weight-Taylor for a Llama
    of ``shape``: 1 and 2 layers at batch 1 (per-layer bytes), the full depth at batch 4 and 8
    (per-example bytes at full depth), with and without activation checkpointing."""
    rows = []
    points = [(1, 1), (2, 1)] + ([(shape[2], 4), (shape[2], 8)] if depth_check else [])
    for checkpointing in (False, True):
        for layers, batch in points:
            spec = Spec(f"{tag} L{layers} B{batch}", "llama", (*shape[:2], layers, *shape[3:]), batch, seq,
                        fake=True, dtype=dtype)  # fmt: skip
            t0 = time.perf_counter()
            with fake_tensors():
                model, x, g = build(spec, torch.device("cpu"))
                if checkpointing:
                    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                plans = plans_of(model, x, True)
                fns = scorers(model, x, g, True, [p.module for p in plans], checkpointing, gradient="random")
                row = {"model": tag, "layers": layers, "batch": batch, "seq": seq, "dtype": dtype,
                       "checkpointing": checkpointing, "g_bytes": g.numel() * g.element_size(),
                       "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                       "layer_params_bytes": sum(p.numel() * p.element_size()
                                                 for p in model.model.layers[0].parameters())}  # fmt: skip
                for name in SCORERS:
                    split = name in ("score", "naive")
                    peak, _, extra = measure(fns[name], True, split=split)
                    row[f"{name}_peak"] = peak
                    if split:
                        row[f"{name}_setup_peak"], row[f"{name}_batches_peak"] = (
                            extra["setup_peak"],
                            extra["batches_peak"],
                        )
                del model, x, g, fns, plans
            row["seconds"] = time.perf_counter() - t0
            print(f"  {tag} layers {layers} batch {batch} checkpointing {checkpointing}: "
                  + ", ".join(f"{n} {row[f'{n}_peak'] / GiB:.2f} GiB" for n in SCORERS)
                  + f"; score set-up {row['score_setup_peak'] / GiB:.2f}, batches {row['score_batches_peak'] / GiB:.2f}"
                  + f" ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def activations(row: dict, name: str) -> int:
    """Bytes of one scorer's pass over the batch: score / naive from their first batch on (their
    set-up, the structure probe, is accounted separately); floor / weight-Taylor plus the output
    gradient they are handed (score / naive make theirs)."""
    if name in ("score", "naive"):
        return row[f"{name}_batches_peak"]
    return row[f"{name}_peak"] + row["g_bytes"]


def largest_batch(static: float, per_example: float, setup: float, budget: float) -> int:
    """Largest B with static + max(setup, B * per_example) <= budget (``static`` includes the intercept)."""
    if per_example <= 0 or static + setup > budget:
        return 0
    return max(0, math.floor((budget - static) / per_example))


def plan_table(rows: list[dict], budget: float, shards: dict[str, tuple]) -> tuple[list[str], list[dict]]:
    """Per-layer bytes, and the largest batch at the plan's sequence that fits ``budget`` bytes per GPU.

    Per layer (per example): ``A(L=2, B=1) - A(L=1, B=1)``; at full depth, ``A(B) = c + B * e`` from
    B = 4 and 8; the extrapolation ``fixed + L * per_layer`` is listed next to ``c + e`` (both batch 1).
    Memory per GPU at batch B = :func:`static_bytes` + max(set-up, c + B * e), where set-up is score /
    naive's structure probe (2 examples, full depth). The prediction is linear; :func:`verify_batch`
    measures around it (weight-Taylor / naive: their gradients dominate at small batches, so the line
    from B = 4 and 8 underestimates the slope)."""
    lines_layer = ["| model | checkpointing | scorer | per layer, per example MiB | fixed (embedding, logits, g) MiB "
                   "| full depth B=1: extrapolated GiB | full depth B=1: measured line GiB | per example at full "
                   "depth GiB | set-up (probe) GiB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines_batch = ["| model | GPUs (params sharded) | checkpointing | " + " | ".join(SCORERS) + " |",
                   "|---|---|---|" + "---|" * len(SCORERS)]  # fmt: skip
    summary = []
    by = {(r["model"], r["checkpointing"], r["layers"], r["batch"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        full = max(r["layers"] for r in rows if r["model"] == model)
        for ckpt in (False, True):
            r1, r2 = by[(model, ckpt, 1, 1)], by[(model, ckpt, 2, 1)]
            f4, f8 = by.get((model, ckpt, full, 4)), by.get((model, ckpt, full, 8))
            fits = {}
            for name in SCORERS:
                a1, a2 = activations(r1, name), activations(r2, name)
                per_layer, fixed = a2 - a1, 2 * a1 - a2
                extrapolated = fixed + full * per_layer
                if f4 is not None and f8 is not None:
                    e = (activations(f8, name) - activations(f4, name)) / 4
                    c = activations(f4, name) - 4 * e
                    setup = f4.get(f"{name}_setup_peak", 0)
                    params = f4["params_bytes"]
                else:
                    e, c, setup, params = extrapolated, 0, r1.get(f"{name}_setup_peak", 0), r1["params_bytes"]
                lines_layer.append(f"| {model} | {'yes' if ckpt else 'no'} | {name} | {per_layer / MiB:,.0f} | "
                                   f"{fixed / MiB:,.0f} | {extrapolated / GiB:.2f} | {(c + e) / GiB:.2f} | "
                                   f"{e / GiB:.2f} | {setup / GiB:.2f} |")  # fmt: skip
                summary.append({"model": model, "checkpointing": ckpt, "scorer": name, "per_layer": per_layer,
                                "fixed": fixed, "extrapolated_full_b1": extrapolated, "intercept": c,
                                "per_example_full": e, "setup": setup})  # fmt: skip
                layer = r1["layer_params_bytes"]
                for n in shards.get(model, (1,)):
                    static = static_bytes(params, layer, name, n) + c
                    fits[(n, name)] = largest_batch(static, e, max(0, setup - c), budget)
                    if n > 1 and name == "naive":
                        fits[(n, name)] = None  # not modelled under FSDP (see static_bytes)
            for n in shards.get(model, (1,)):
                cells = ["–" if fits[(n, s)] is None else str(fits[(n, s)]) or "0" for s in SCORERS]
                lines_batch.append(f"| {model} | {n} | {'yes' if ckpt else 'no'} | " + " | ".join(cells) + " |")
                summary.append({"model": model, "checkpointing": ckpt, "gpus": n,
                                **{f"largest_batch_{s}": fits[(n, s)] for s in SCORERS}})  # fmt: skip
    return lines_layer + [""] + lines_batch, summary


def call_bytes(shape: tuple, batch: int, seq: int, checkpointing: bool, name: str, free_grads: bool = False) -> int:
    """One scorer's whole-call peak at full depth (fake tensors, bf16; floor / weight-Taylor plus their ``g``)."""
    dtype = "bfloat16"
    spec = Spec("verify", "llama", shape, batch, seq, fake=True, dtype=dtype)
    with fake_tensors():
        model, x, g = build(spec, torch.device("cpu"))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        plans = plans_of(model, x, True)
        fns = scorers(model, x, g, True, [p.module for p in plans], checkpointing, "random", free_grads)
        fn = fns[name]
        g_bytes = g.numel() * g.element_size()
        peak = measure(fn, True)[0]
    return peak + (0 if name in ("score", "naive") else g_bytes)


def static_bytes(params: int, layer: int, name: str, gpus: int) -> float:
    """Bytes per GPU on top of a scorer's call peak: the parameters (bf16), sharded over ``gpus`` (FSDP)
    with two layers gathered at a time; weight-Taylor under FSDP also keeps its sharded gradients (its
    call then drops each full gradient once reduced, ``free_grads``). The naive scorer is not modelled
    under FSDP (it keeps every full gradient until the batch ends)."""
    static = params / gpus
    if gpus > 1:
        static += 2 * layer + (params / gpus if name == "weight_taylor" else 0)
    return static


def verify_batch(shape, seq, checkpointing, name, static, predicted, slope, budget, free_grads=False, max_evals=4):
    """Measure at the predicted largest batch and around it until B fits and B + 1 does not."""
    points: dict[int, float] = {}

    def total(b):
        if b not in points:
            points[b] = static + call_bytes(shape, b, seq, checkpointing, name, free_grads)
        return points[b]

    b = max(1, predicted)
    for _ in range(max_evals):  # secant steps from the prediction
        if total(b) <= budget:
            if b + 1 in points or total(b + 1) > budget:
                break
            b = b + 1 + max(0, math.floor((budget - points[b + 1]) / slope))
        else:
            if b == 1:
                break
            b = max(1, b - max(1, math.ceil((points[b] - budget) / slope)))
    while True:  # then bisect between the largest batch that fits and the smallest that does not
        fits = [k for k, v in points.items() if v <= budget]
        over = [k for k, v in points.items() if v > budget and (not fits or k > max(fits))]
        if not fits or not over or min(over) - max(fits) <= 1:
            break
        total((max(fits) + min(over)) // 2)
    fits = [k for k, v in points.items() if v <= budget]
    best = max(fits) if fits else 0
    return {"largest_batch": best, "verified": (best == 0 and 1 in points) or best + 1 in points,
            "points_gib": {k: round(v / GiB, 2) for k, v in sorted(points.items())}}  # fmt: skip


def run_plan(args) -> None:
    started = time.perf_counter()
    budget = args.budget_gib * GiB
    shapes = {"llama2-7b": LLAMA2_7B, "llama2-70b": LLAMA2_70B}
    rows = []
    if args.quick:  # smoke test: Llama-2-7B widths, 3 layers
        shapes = {"llama2-7b (3 layers)": (*LLAMA2_7B[:2], 3, *LLAMA2_7B[3:])}
    seq = args.seq or 2048
    if args.from_json:  # re-use the measured rows of an earlier run
        rows = json.loads(Path(args.from_json).read_text())["rows"]
    else:
        for tag, shape in shapes.items():
            rows += plan_rows(shape, tag, seq=seq, depth_check=not args.no_depth)
    grads = [gradient_cost(v, seq, d) for v in (32000, 128256) for d in (torch.bfloat16, torch.float32)]
    shards = {tag: ((1,) if shape[0] < 8192 else (1, 8)) for tag, shape in shapes.items()}
    lines, summary = plan_table(rows, budget, shards)
    verified = []
    if not args.no_verify and not args.no_depth:
        lines += ["", "Largest batch measured at full depth (fake tensors) around the prediction: B fits, B + 1 does "
                  "not (GiB per GPU at the batches measured):", "",
                  "| model | GPUs | checkpointing | scorer | predicted | measured largest batch | GiB at batches |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        by_model = {(r["model"], r["checkpointing"], r["scorer"]): r for r in summary if "scorer" in r}
        for cell in (r for r in summary if "gpus" in r):
            model, ckpt, gpus = cell["model"], cell["checkpointing"], cell["gpus"]
            first = next(r for r in rows if r["model"] == model)
            params = max(r["params_bytes"] for r in rows if r["model"] == model)
            full_layers = max(r["layers"] for r in rows if r["model"] == model)
            shape = (*shapes[model][:2], full_layers, *shapes[model][3:])
            for name in SCORERS:
                static = static_bytes(params, first["layer_params_bytes"], name, gpus)
                if params / gpus >= budget or (gpus > 1 and name == "naive"):
                    continue
                s = by_model[(model, ckpt, name)]
                t0 = time.perf_counter()
                v = verify_batch(shape, seq, ckpt, name, static, cell[f"largest_batch_{name}"],
                                 s["per_example_full"], budget, free_grads=gpus > 1)  # fmt: skip
                v.update(model=model, gpus=gpus, checkpointing=ckpt, scorer=name,
                         predicted=cell[f"largest_batch_{name}"])  # fmt: skip
                verified.append(v)
                pts = ", ".join(f"B={k}: {g:.1f}" for k, g in v["points_gib"].items())
                mark = "" if v["verified"] else " (unbracketed)"
                lines.append(f"| {model} | {gpus} | {'yes' if ckpt else 'no'} | {name} | {v['predicted']} | "
                             f"**{v['largest_batch']}**{mark} | {pts} |")  # fmt: skip
                print(lines[-1] + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta = environment(torch.device("cpu"))
    header = [f"# Memory plan: Llama-2-7B / 70B shapes, bf16, seq {args.seq or 2048}, fake tensors; "
              f"{meta['device']}; torch {meta['torch']}; commit {meta['commit']}", "",
              f"Budget per GPU: {args.budget_gib} GiB.", ""]  # fmt: skip
    glines = ["", "| vocab | tokens | dtype | g MiB | random: peak MiB | label: peak MiB | callable: peak MiB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for gr in grads:
        glines.append(f"| {gr['vocab']} | {gr['tokens']} | {gr['dtype']} | {gr['g_bytes'] / MiB:,.0f} | "
                      f"{gr['random_peak'] / MiB:,.0f} | {gr['label_peak'] / MiB:,.0f} | "
                      f"{gr['callable_peak'] / MiB:,.0f} |")  # fmt: skip
    text = "\n".join(header + lines + glines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    saved = {"rows": rows, "summary": summary, "verified": verified, "gradients": grads, "budget_bytes": budget}
    (args.out / "plan.json").write_text(json.dumps({**saved, **meta}, indent=1))
    (args.out / "plan.md").write_text(text)
    print(text)
    print(f"plan finished in {time.perf_counter() - started:.0f} s")


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/memory"))
    ap.add_argument("--quick", action="store_true", help="tiny models (CPU-friendly, about a minute)")
    ap.add_argument("--plan", action="store_true", help="the Llama-2-7B / 70B plan (fake tensors)")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names to keep")
    ap.add_argument("--seq", type=int, default=None, help="--plan: sequence length (default 2048)")
    ap.add_argument("--no-depth", action="store_true", help="--plan: skip the full-depth check")
    ap.add_argument("--no-verify", action="store_true", help="--plan: skip measuring at the predicted batches")
    ap.add_argument("--from-json", default="", help="--plan: take the measured rows from this plan.json")
    ap.add_argument("--budget-gib", type=float, default=76.0, help="--plan: usable GiB per 80 GB GPU")
    args = ap.parse_args(argv)
    if args.plan:
        run_plan(args)
        return []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = environment(device)
    specs = QUICK_SPECS if args.quick else FULL_SPECS
    wanted = [w for w in args.only.split(",") if w]
    rows = []
    started = time.perf_counter()
    for spec in specs:
        if wanted and not any(w in spec.name for w in wanted):
            continue
        row = measure_spec(spec, torch.device("cpu") if spec.fake else device)
        rows.append({**row, **meta})
        print(f"  {spec.name}: floor {row['floor_peak'] / MiB:.2f} MiB, " + ", ".join(
            f"{n} {row[f'{n}/floor']:.3f}" for n in SCORERS[1:]) + f" ({time.perf_counter() - started:.0f} s)",
            flush=True)  # fmt: skip
    title = f"# Peak memory of one call (MiB above parameters, inputs and g); {meta['device']}; torch {meta['torch']}"
    lines = [f"{title}; commit {meta['commit']}{' (quick)' if args.quick else ''}", ""] + table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
    (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"memory benchmark finished in {time.perf_counter() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()
