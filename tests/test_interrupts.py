"""Ctrl-C at any moment of a scoring call leaves the model exactly as found.

A KeyboardInterrupt is delivered the way CPython delivers SIGINT (the installed handler, called with the
interrupted frame), once per run, at the first time each distinct source line runs during a call
(``sys.settrace``: every line of rgprune_fast, torch and the model that the call executes); the model must
then be bit-identical to before (state, flags, ``.grad``, hooks, instance attributes), the SIGINT handler
and the package's global state back as they were, and the model must score as before.
``RGPRUNE_INTERRUPT_FUZZ=every`` interrupts at every line event instead (slow: hours on a 2-core CPU).
"""

from __future__ import annotations

import copy
import os
import random
import signal
import sys
import threading
import time

import models
import pytest
import torch
from torch import nn
from untouched import assert_same, snapshot

import rgprune_fast as rg
from rgprune_fast.engine import experts, interrupts, model_state
from rgprune_fast.pruning import bake_masks, masks


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny calls: one intra-op thread is several times faster (no thread wake-ups)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _deliver_sigint(frame) -> None:
    """What CPython does when SIGINT arrives while ``frame`` runs: call the installed handler."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)


def _line_events(call) -> list[tuple]:
    """Every line event of ``call()``: ``(code, line)`` in order."""
    events = []

    def tracer(frame, event, arg):
        if event == "line" and "/hypothesis/" not in frame.f_code.co_filename:  # (its gc callback: not the call)
            events.append((frame.f_code, frame.f_lineno))
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return events


def _interrupted(call, target: tuple, occurrence: int) -> bool:
    """Run ``call()`` with one interrupt at the ``occurrence``-th line event at ``target``; whether the
    call ended with KeyboardInterrupt. Only frames of the target's code are traced line by line."""
    code, line = target
    seen = 0

    def on_line(frame, event, arg):
        nonlocal seen
        if event == "line" and frame.f_lineno == line:
            seen += 1
            if seen == occurrence:
                sys.settrace(None)
                _deliver_sigint(frame)
                return None
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code is code else None

    sys.settrace(on_call)
    try:
        call()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


def _targets(events: list[tuple]) -> list[tuple[tuple, int]]:
    """``(location, occurrence)`` to interrupt at: the first run of every distinct line (every line event
    with RGPRUNE_INTERRUPT_FUZZ=every)."""
    every = os.environ.get("RGPRUNE_INTERRUPT_FUZZ") == "every"
    counts: dict[tuple, int] = {}
    targets = []
    for location in events:
        counts[location] = counts.get(location, 0) + 1
        if every or counts[location] == 1:
            targets.append((location, counts[location]))
    return targets


def _globals_clean(handler) -> None:
    assert signal.getsignal(signal.SIGINT) is handler
    assert interrupts._state.depth == 0  # (its pending flag means nothing outside a call)
    assert len(experts._STATES) == 0
    assert len(model_state._IN_USE) == 0


def _fuzz(model, call, check_equal):
    """Interrupt ``call(model)`` once at each target; after each, everything is as before."""
    handler = signal.getsignal(signal.SIGINT)
    reference = call(model)  # warm: lazy imports and first-call caches are not part of the fuzz
    before = snapshot(model, copy_state=False)
    grad_mode = torch.is_grad_enabled()
    targets = _targets(_line_events(lambda: call(model)))
    assert len(targets) > 300  # the trace saw the whole call
    interrupted = 0
    for location, occurrence in targets:
        interrupted += _interrupted(lambda: call(model), location, occurrence)
        where = f"{location[0].co_filename}:{location[1]} ({location[0].co_name}) #{occurrence}"
        try:
            assert_same(before, snapshot(model, copy_state=False))
            _globals_clean(handler)
            assert torch.is_grad_enabled() == grad_mode
        except AssertionError as e:
            raise AssertionError(f"interrupted at {where}: {e}") from e
    assert interrupted >= 0.9 * len(targets)  # (a few lines run only on the first calls)
    check_equal(reference, call(model))  # and it still scores the same


def _same_scores(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same_scores(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k]), k


def small_resnet():
    """torchvision's ResNet with one BasicBlock per stage: every code path of ResNet-18, a quarter of the
    line events (the fuzz reruns the call once per distinct line)."""
    from rgprune_fast._torchvision import import_torchvision

    resnet = import_torchvision().models.resnet
    torch.manual_seed(0)
    return models.randomize(resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=10), 0).eval()


def test_resnet_every_line():
    model = small_resnet()
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([1, 7]))]
    _fuzz(model, lambda m: rg.score(m, data, method=["taylorfo_sq", "molchanov_bn"]), _same_scores)
    with torch.no_grad():
        assert torch.isfinite(model(data[0][0])).all()


def test_transformer_every_line():
    if models.import_transformers() is None:
        pytest.skip("transformers is not installed")
    model, _ = models.hf_model("llama")
    ((inputs, labels),) = models.hf_batches("llama", sizes=(2,), seq=5)
    data = [(inputs, labels)]
    _fuzz(model, lambda m: rg.score(m, data, gradient="label"), _same_scores)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def _run_call(call):
    return call()


def _inside_call(frame) -> bool:
    while frame is not None:
        if frame.f_code is _run_call.__code__:
            return True
        frame = frame.f_back
    return False


def _held_down(call, delay: float):
    """``call()`` while another thread sends real SIGINTs (``os.kill``) as fast as it can from ``delay``
    seconds on until the call ends (a user leaning on Ctrl-C: more arrive during the clean-up after the
    first); they raise KeyboardInterrupt only inside the call. Returns the call's result, or
    ``KeyboardInterrupt``."""
    stop = threading.Event()

    def storm():
        if not stop.wait(delay):
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    def swallowed(unraisable):
        # CPython cannot raise from a finalizer or gc callback: a SIGINT whose handler runs there ends up
        # here (a real Ctrl-C lost the same way). Only those are dropped; pytest sees everything else.
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            hook(unraisable)

    def raise_inside(signum, frame):
        if frame is not None and frame.f_code is swallowed.__code__:
            return  # never inside the unraisable hook itself
        if _inside_call(frame):
            raise KeyboardInterrupt

    hook = sys.unraisablehook
    sys.unraisablehook = swallowed
    previous = signal.signal(signal.SIGINT, raise_inside)
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the sender gets the GIL often: a signal every few microseconds
    sender = threading.Thread(target=storm)
    sender.start()
    try:
        return _run_call(call)
    except KeyboardInterrupt:
        return KeyboardInterrupt
    finally:
        stop.set()
        sender.join()
        sys.setswitchinterval(switching)
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


def _timed_resnet_call():
    """A scoring call of two batches on :func:`small_resnet`: the model, the call, its scores, the model's
    snapshot and the call's duration."""
    model = small_resnet()
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([1, 7]))] * 2
    call = lambda: rg.score(model, data)  # noqa: E731
    reference, before = call(), snapshot(model, copy_state=False)
    started = time.perf_counter()
    call()
    return model, call, reference, before, time.perf_counter() - started


def test_ctrl_c_held_down():
    """SIGINT after SIGINT from a random moment on: the clean-up after the first still completes."""
    model, call, reference, before, duration = _timed_resnet_call()
    handler = signal.getsignal(signal.SIGINT)
    rng = random.Random(0)
    outcomes = []
    for _ in range(100):
        outcomes.append(_held_down(call, rng.uniform(0, duration)))
        assert_same(before, snapshot(model, copy_state=False))
        _globals_clean(handler)
    assert KeyboardInterrupt in outcomes
    _same_scores(reference, call())


def test_a_users_own_sigint_handler_is_called_and_restored():
    """A handler that does not raise (a training loop's "stop after this step"): called for every SIGINT,
    the call completes with the same scores, and the handler is in place afterwards."""
    model = small_resnet()
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([1, 7]))]
    call = lambda: rg.score(model, data)  # noqa: E731
    reference, before = call(), snapshot(model, copy_state=False)
    targets = _targets(_line_events(call))
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        own = signal.getsignal(signal.SIGINT)
        for location, occurrence in targets[:: max(1, len(targets) // 20)]:
            results = []
            assert not _interrupted(lambda results=results: results.append(call()), location, occurrence)
            _same_scores(reference, results[0])
            assert signal.getsignal(signal.SIGINT) is own
        assert len(received) >= 10 and set(received) == {signal.SIGINT}
    finally:
        signal.signal(signal.SIGINT, previous)
    assert_same(before, snapshot(model, copy_state=False))


def test_real_sigint_at_random_moments():
    """The signal itself (``os.kill``) from a timer, at random moments of a call."""
    model, call, reference, before, duration = _timed_resnet_call()
    handler = signal.getsignal(signal.SIGINT)
    rng = random.Random(0)
    interrupted = 0
    for _ in range(20):
        timer = threading.Timer(rng.uniform(0, duration), os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            call()
            timer.join()
            time.sleep(0.02)  # the handler runs on the main thread's next bytecode
        except KeyboardInterrupt:
            interrupted += 1
        timer.join()
        assert_same(before, snapshot(model, copy_state=False))
        _globals_clean(handler)
    assert interrupted > 0
    _same_scores(reference, call())


def test_bake_masks_is_all_or_nothing_under_ctrl_c():
    """Interrupted at any line event (every one: a loop's later rounds too), ``bake_masks`` has zeroed
    every masked channel or none."""
    model = models.make("conv_bn_relu")
    scores = rg.score(model, models.batches("conv_bn_relu"), modules=[nn.Conv2d, nn.BatchNorm2d])
    keep = masks(scores, ratio=0.3)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    trial = copy.deepcopy(model)
    bake_masks(trial, keep)
    baked = {k: v.clone() for k, v in trial.state_dict().items()}
    assert any(not torch.equal(v, original[k]) for k, v in baked.items())
    trial = copy.deepcopy(model)
    events = _line_events(lambda: bake_masks(trial, keep))
    targets = [(loc, events[: i + 1].count(loc)) for i, loc in enumerate(events)]  # every line event
    assert len(targets) > 100
    for location, occurrence in targets:
        trial = copy.deepcopy(model)
        _interrupted(lambda trial=trial: bake_masks(trial, keep), location, occurrence)
        state = trial.state_dict()
        assert all(torch.equal(v, baked[k]) for k, v in state.items()) or all(
            torch.equal(v, original[k]) for k, v in state.items()
        ), location


def test_mc_gradient_every_line():
    model = models.make("conv_bn_relu")
    data = models.batches("conv_bn_relu", sizes=(2,))
    steps = []
    call = lambda m: rg.mc_gradient(m, data, steps=2, samples=2, on_step=lambda s, theta: steps.append(s))  # noqa: E731
    _fuzz(model, call, _same_scores)
    assert steps
