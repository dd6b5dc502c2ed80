"""pytest-benchmark: floor vs score vs naive on a small torchvision ResNet-18 (CPU-sized).

pytest benchmarks/ --benchmark-only          # timings
RGPRUNE_BENCH_QUICK=1 pytest benchmarks/ --benchmark-disable   # each once (CI)
"""

import os

import pytest
import torch

import rgprune_fast as rg
from rgprune_fast import naive

from .common import default_modules, floor_step, frozen, import_torchvision

QUICK = os.environ.get("RGPRUNE_BENCH_QUICK") == "1"
BATCH, SIZE = (4, 32) if QUICK else (32, 64)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = frozen(import_torchvision().models.resnet18())
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    return model, x


def test_floor(benchmark, resnet18):
    model, x = resnet18
    g = torch.randn(BATCH, 1000)
    scored = default_modules(model, x)
    benchmark(floor_step, model, x, g, scored)


def test_score(benchmark, resnet18):
    model, x = resnet18
    scores = benchmark(rg.score, model, x, backend="torch")
    assert set(scores) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_naive(benchmark, resnet18):
    model, x = resnet18
    scores = benchmark(naive.score, model, x)
    assert len(scores) == 20
