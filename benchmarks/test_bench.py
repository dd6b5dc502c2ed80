"""pytest-benchmark: floor vs score (every available backend) vs naive on ResNet-18.

pytest benchmarks/ --benchmark-only                              # timings (GPU sizes on CUDA)
RGPRUNE_BENCH_QUICK=1 pytest benchmarks/ --benchmark-disable     # each once, tiny (CI)
"""

import os

import pytest
import torch

import rgprune_fast as rg
from rgprune_fast.backends import why_unavailable
from rgprune_fast.scorers import naive

from .common import default_modules, floor_step, frozen, import_torchvision, sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("RGPRUNE_BENCH_QUICK") == "1"
BATCH, SIZE = (4, 32) if QUICK else ((128, 224) if DEVICE.type == "cuda" else (32, 64))
BACKENDS = [b for b in ("triton", "cuda", "cpp", "torch") if why_unavailable(b, DEVICE) is None]
if DEVICE.type == "cpu" and not QUICK:
    BACKENDS = [b for b in BACKENDS if b != "triton"]  # the interpreter is no performance path


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = frozen(import_torchvision().models.resnet18()).to(DEVICE)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=DEVICE)
    return model, x


def synced(fn, *args, **kwargs):
    def call():
        out = fn(*args, **kwargs)
        sync(DEVICE)
        return out

    return call


def test_floor(benchmark, resnet18):
    model, x = resnet18
    g = torch.randn(BATCH, 1000, device=DEVICE)
    benchmark(synced(floor_step, model, x, g, default_modules(model, x)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_score(benchmark, resnet18, backend):
    model, x = resnet18
    scores = benchmark(synced(rg.score, model, x, backend=backend))
    assert set(scores) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_naive(benchmark, resnet18):
    model, x = resnet18
    scores = benchmark(synced(naive.score, model, x))
    assert len(scores) == 20
