"""Peak memory without a GPU: the dispatch-mode tracker (benchmarks/memory_tracker.py) on cases whose
bytes are known, and score()'s peak against the floor on every configuration of the quick memory
benchmark (benchmarks/memory.py; docs/memory.md)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

from rgprune_fast.engine import gradients

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is part of the source tree only
from benchmarks import memory  # noqa: E402
from benchmarks.memory_tracker import MemoryTracker, peak_bytes  # noqa: E402

F32 = 4


def test_known_allocation_and_its_release():
    def fn():
        a = torch.empty(1000)  # 4000 bytes
        del a
        b = torch.empty(2, 1000)  # 8000 bytes, after a was freed
        return b

    r = peak_bytes(fn)
    assert r["peak"] == 8000 and r["allocated"] == 12000 and r["count"] == 2
    assert r["live_after"] == 0  # the result was dropped
    assert peak_bytes(fn, keep_result=True)["live_after"] == 8000


def test_what_existed_before_is_not_counted():
    x = torch.ones(1000)
    with MemoryTracker() as t:
        x.add_(1)  # in place
        v = x.view(10, 100).t()  # views share the storage
        v.mul_(2)
        d = x.detach()
        y = x + 1  # new: 4000 bytes
    assert t.peak == 4000 and t.count == 1
    assert t.live == 4000  # y is alive
    del v, d, y


def test_out_resize_is_counted():
    with MemoryTracker() as t:
        out = torch.empty(0)
        torch.add(torch.ones(10), 1, out=out)  # ones: 40 bytes (freed after); out resized from 0 to 40 bytes
        assert t.live == 40
        del out
    assert t.peak == 80 and t.live == 0


def test_saved_tensors_of_a_known_graph():
    """exp saves its output, sin saves its input (the same tensor), sum saves nothing: after the forward
    only exp's output and the scalar are alive; backward frees the graph and leaves x.grad."""
    n = 4096
    x = torch.randn(n, requires_grad=True)
    with MemoryTracker() as t:
        s = torch.exp(x).sin().sum()
        gc.collect()
        assert t.live == n * F32 + F32  # exp's output (saved), the scalar; sin's output is freed
        assert t.peak == 2 * n * F32 + F32  # exp and sin outputs both alive right after sin
        s.backward()
        assert t.live == n * F32 + F32  # x.grad and the scalar; the saved tensor is gone
    assert x.grad is not None and x.grad.shape == (n,)


def test_matmul_backward_peak():
    """tanh(x @ w) with w frozen: forward peak = mm and tanh outputs; backward: tanh's output (kept by y),
    its gradient and the gradient of x (stolen by AccumulateGrad into x.grad) at once."""
    n, d, h = 64, 32, 128
    x = torch.randn(n, d, requires_grad=True)
    w = torch.randn(d, h)
    g = torch.randn(n, h)

    def fn():
        y = torch.tanh(x @ w)
        y.backward(g)
        return y

    r = peak_bytes(fn)
    assert r["peak"] == (2 * n * h + n * d) * F32
    assert x.grad.shape == (n, d)


def test_fake_tensors_measure_like_real_ones():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))

    def step(model, x):
        model(x).square().sum().backward()

    real = peak_bytes(lambda: step(net, torch.randn(32, 64)))["peak"]
    with memory.fake_tensors():
        fake_net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
        with MemoryTracker() as t:
            step(fake_net, torch.randn(32, 64))
    assert t.peak == real > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_is_reported():
    r = peak_bytes(lambda: torch.empty(1 << 20, device="cuda"))
    assert r["peak"] == 4 << 20 and r["cuda_peak"] >= 4 << 20


def test_output_gradient_is_made_once(monkeypatch):
    """The logits-sized gradient exists once: the extra peak of making it is g plus a few chunks of
    float32 scratch (labels: float64, half the rows, five temporaries), never a second output-sized tensor."""
    monkeypatch.setattr(gradients, "CHUNK_ELEMENTS", 1 << 14)
    rows, vocab = 512, 1000  # ~31 chunks of 16 rows
    chunk = (gradients.CHUNK_ELEMENTS // vocab) * vocab * F32
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.randn(1, rows, vocab, dtype=dtype)
        g_bytes = out.numel() * out.element_size()
        targets = torch.randint(0, vocab, (1, rows))
        for kind, fn in {
            "random": lambda o=out: gradients.OutputGradient("random", True, 0, o.device)(o, None, None),
            "label": lambda o=out, t=targets: gradients.OutputGradient("label", True, 0, o.device, shift=True)(
                o, t, None
            ),
        }.items():
            extra = peak_bytes(fn)["peak"] - g_bytes
            assert 0 <= extra <= 6 * chunk < g_bytes / 2, (kind, dtype, extra, chunk)


@pytest.fixture(scope="module")
def quick_rows():
    pytest.importorskip("transformers")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return {spec.name: memory.measure_spec(spec, torch.device("cpu")) for spec in memory.QUICK_SPECS}


@pytest.mark.parametrize("name", [s.name for s in memory.QUICK_SPECS])
def test_score_peak_within_floor(quick_rows, name):
    """score() holds nothing the floor does not, beyond its accumulators: <= 1.02 x floor + accumulators
    on the transformers, <= 1.05 x floor on the CNNs (whole call, structure probe included)."""
    r = quick_rows[name]
    floor, score = r["floor_peak"], r["score_peak"]
    if r["family"].startswith("resnet"):
        assert score <= 1.05 * floor, f"{name}: score {score} B = {score / floor:.4f} x floor {floor} B"
    else:
        limit = 1.02 * floor + r["accumulator_bytes"]
        assert score <= limit, (
            f"{name}: score {score} B = {score / floor:.4f} x floor {floor} B; limit 1.02 x floor + "
            f"{r['accumulator_bytes']} B accumulators = {limit:.0f} B"
        )
    # the baselines the benchmark compares against hold more than the floor
    assert r["naive_peak"] > floor and r["weight_taylor_peak"] > floor


@pytest.mark.parametrize("family", ["llama", "resnet18"])
def test_fake_rows_equal_real_rows(quick_rows, family):
    real = next(r for n, r in quick_rows.items() if r["family"] == family and not r["fake"])
    fake = next(r for n, r in quick_rows.items() if r["family"] == family and r["fake"] and r["batch"] == real["batch"])
    for scorer in memory.SCORERS:
        assert fake[f"{scorer}_peak"] == real[f"{scorer}_peak"], scorer
