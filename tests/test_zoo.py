"""The default selection on public models (tests/zoo.py) against the by-example float64 oracle: every
criterion, a given random gradient and the label gradient, the model left untouched, heads / neurons /
experts found where the model has them, nothing left out silently.

``RGPRUNE_ZOO_REPORT=path.jsonl`` appends one line per model (units, worst error, time against one
forward + backward) for the table in the README.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import weakref

import pytest
import torch
import zoo
from oracle_by_example import Spec, oracle_by_example
from reference import rel_err
from untouched import assert_same, snapshot

import rgprune_fast as rg

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
# Parameters. Larger models: untouched is checked by identity and version (not by value), and only the
# given random gradient is used (the label gradient's code does not depend on the model; CI time)
LARGE = 50_000_000
# A float32 result further than 1e-5 from the float32-model oracle (deep nets: the scorer's backward rounds
# along another path than PyTorch's own, whose error is itself ~1e-5 there) must be within 2e-5 or this
# many times PyTorch's own float32 error of the exact (float64) value, and the model is then checked in
# float64 (1e-10), which shows exactness.
ROUNDING_FACTOR = 10
DEEP_FLOAT32 = 2e-5


def _cases():
    tv = [zoo._tv(n) for n in zoo.torchvision_names()] if _available("torchvision") else []
    timm = zoo.TIMM if _available("timm") else []
    hf = zoo.HF if _available("transformers") else []
    return [pytest.param(c, id=c.id) for c in [*timm, *tv, *hf]]


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def fixed_gradient(output, batch):
    """The same N(0, 1) gradient for every call with this output shape (scorer and oracle alike)."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(output.shape, generator=g, dtype=torch.float64).to(output.dtype)


def _called(model, inputs) -> set[str]:
    if model in _CALLED:
        return _CALLED[model]
    called, handles = set(), []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: called.add(n)))
    with torch.no_grad():
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    for h in handles:
        h.remove()
    _CALLED[model] = called
    return called


_CALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the modules its forward calls


def _specs(model, scores, inputs) -> list[Spec]:
    """Oracle specs for the keys the scorer returned; an input unit of a module its parent applies
    through its weights (never called) is recovered from the parent's output."""
    called = _called(model, inputs)
    specs = []
    for key, values in scores.items():
        name, _, side = key.partition(":")
        via = name.rpartition(".")[0] if side == "input" and name not in called else None
        specs.append(Spec(key, name, side or "output", len(values), via))
    return specs


def _found(model, scores):
    """(head counts of the head units in order, number of neuron units, number of experts units)."""
    heads, neurons, experts = [], 0, 0
    for key, values in scores.items():
        name, _, side = key.partition(":")
        if side == "experts":
            experts += 1
        elif side == "input":
            module = model.get_submodule(name)
            width = module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.in_features
            if len(values) < width:
                heads.append(len(values))
            else:
                neurons += 1
    return heads, neurons, experts


def _check(case, model, inputs, targets, gradient, dtype):
    batch = [(inputs, targets) if targets is not None else inputs]  # a list of one batch
    large = sum(p.numel() for p in model.parameters()) > LARGE
    before = snapshot(model, copy_state=not large)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rg.SkippedUnitsWarning)  # nothing left out on these models
        start = time.perf_counter()
        ours = rg.score(model, batch, method=list(rg.METHODS), gradient=gradient)
        elapsed = time.perf_counter() - start
    assert_same(before, snapshot(model, copy_state=not large))
    first = ours[rg.METHODS[0]]
    assert first, "no units"
    specs = _specs(model, first, inputs)
    recovered = {s.key for s in specs if s.via}
    ref, scale = oracle_by_example(model, inputs, targets, specs, rg.METHODS, gradient, shift=case.causal,
                                   with_scale=True)  # fmt: skip
    worst, exact, check_float64 = 0.0, None, False
    for method in rg.METHODS:
        assert ours[method].keys() == ref[method].keys()
        for key, value in ours[method].items():
            assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            if dtype == torch.float32 and key in recovered:
                check_float64 = True  # recovered from float32 outputs by a solve: checked in float64 instead
                continue
            err = _error(value, ref[method][key], scale.get(method, {}).get(key))
            if err > TOLERANCE[dtype]:
                # Deep float32 nets: the model's own float32 backward is itself ~1e-5 from the exact value, and
                # the scorer's (frozen weights, out-of-place activations, fused taps) rounds along another
                # path. Then: within ROUNDING_FACTOR x PyTorch's own float32 error, and exact in float64.
                exact = exact or oracle_by_example(model, inputs, targets, specs, rg.METHODS, gradient,
                                                   dtype=torch.float64, shift=case.causal)  # fmt: skip
                own = _error(ref[method][key], exact[method][key], scale.get(method, {}).get(key))
                err = _error(value, exact[method][key], scale.get(method, {}).get(key))
                bar = max(DEEP_FLOAT32, ROUNDING_FACTOR * own)
                assert err <= bar, (getattr(gradient, "__name__", gradient), method, key, err, own)
                check_float64 = True
            worst = max(worst, err)
    return first, worst, elapsed, check_float64


def _error(ours, ref, scale) -> float:
    """Relative error; for sums that cancel to ~0, relative to the scale float rounding has (sum |x * dx|)."""
    err = rel_err(ours, ref)
    if scale is not None and scale.norm() > 0:
        err = min(err, float((ours.double() - ref).norm() / scale.norm()))
    return err


def _timings(model, inputs, targets) -> tuple[float, float]:
    """Seconds (best of 3) of one default ``score`` call (probe included) and of the floor: one forward +
    backward of the same output gradient with the parameters frozen, no taps."""
    batch = [(inputs, targets) if targets is not None else inputs]

    def floor():
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        # the backward must reach the first layer: from the image, or from the token embeddings
        hooks = [m.register_forward_hook(lambda m, a, out: out.requires_grad_()) for m in model.modules()
                 if isinstance(m, torch.nn.Embedding)]  # fmt: skip
        try:
            if isinstance(inputs, dict):
                out = model(**{k: v.requires_grad_() if v.is_floating_point() else v for k, v in inputs.items()})
            else:
                out = model(inputs.detach().requires_grad_())
            if not isinstance(out, torch.Tensor):
                out = out.logits if getattr(out, "logits", None) is not None else out[0]
            out.backward(fixed_gradient(out, None))
        finally:
            for hook in hooks:
                hook.remove()
            for p, flag in flags:
                p.requires_grad_(flag)

    def best(fn):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(lambda: rg.score(model, batch, gradient=fixed_gradient)), best(floor)


def test_every_family_is_installed_where_required():
    """CI sets ``RGPRUNE_ZOO_REQUIRE=1``: a missing model family fails instead of skipping its models."""
    missing = [m for m in ("timm", "torchvision", "transformers") if not _available(m)]
    if missing and os.environ.get("RGPRUNE_ZOO_REQUIRE") == "1":
        pytest.fail(f"the model zoo needs {missing} (the test extra)")
    if missing:
        pytest.skip(f"{missing} not installed: their models are not checked")


@pytest.mark.parametrize("case", _cases())
def test_zoo_model_scores_exactly(case):
    model = case.build()
    g = torch.Generator().manual_seed(0)
    inputs, targets = case.inputs(g), case.targets(g) if case.targets else None
    first, worst, elapsed, check_float64 = _check(case, model, inputs, targets, fixed_gradient, torch.float32)
    if targets is not None and sum(p.numel() for p in model.parameters()) <= LARGE:
        _, label_worst, _, label_check_float64 = _check(case, model, inputs, targets, "label", torch.float32)
        worst, check_float64 = max(worst, label_worst), check_float64 or label_check_float64
    heads, neurons, experts = _found(model, first)
    assert heads == case.heads
    assert neurons == case.neurons
    assert experts == case.experts
    if case.float64 or check_float64:
        model64 = model.double()
        cast = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()} if isinstance(inputs, dict) \
            else inputs.double()  # fmt: skip
        _, worst64, _, _ = _check(case, model64, cast, targets, fixed_gradient, torch.float64)
    else:
        worst64 = None
    report = os.environ.get("RGPRUNE_ZOO_REPORT")
    if report:
        model.float()
        seconds, floor = _timings(model, inputs, targets)
        row = {"model": case.id, "units": sum(len(v) for v in first.values()), "specs": len(first),
               "worst_rel_err": worst, "worst_rel_err_float64": worst64, "score_s": seconds,
               "floor_s": floor}  # fmt: skip
        with open(report, "a") as f:
            f.write(json.dumps(row) + "\n")
