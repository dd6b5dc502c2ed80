"""The traffic model (benchmarks/traffic.py): an exact hand-computed case, its layout rule against the
Triton backend's, and ``suite --model`` end to end on the quick configurations."""

import contextlib
import importlib.util
import json

import pytest
import torch
from torch import nn

from . import report, suite, traffic
from .memory import fake_tensors


class ConvBnRelu(nn.Module):
    """conv-BN-ReLU twice (batchnorm taps), a conv into a ReLU (a relu tap), a Linear into Tanh (a generic
    tap: Tanh is no fused activation) and the output Linear (not scored)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(6, 5, 3, padding=1), nn.ReLU()
        self.fc1, self.act, self.fc2 = nn.Linear(5 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("fake", [False, True])
def test_hand_computed_conv_bn_relu(fake):
    n, f = 12, 4  # examples; float32 bytes
    with fake_tensors() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        model = ConvBnRelu().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        row = traffic.measure(model, torch.randn(n, 3, 8, 8))
    z1, z2, r3, h = n * 4 * 64 * f, n * 6 * 64 * f, n * 5 * 64 * f, n * 16 * f  # activations
    s1, s2, s3, s4 = n * 4 * f, n * 6 * f, n * 5 * f, n * 16 * f  # s[N, C], float32
    assert row["taps"] == {"batchnorm": 2, "relu": 1, "generic": 1}
    by = {(r["key"], r["op"]): r for r in row["kernel_records"]}
    # bn1: z does not require grad (the image's conv): the kernel reads z and dy, writes no dz; the floor's BN
    # backward reads dy and writes dz (the floor reaches bn1's input): extra = s only
    assert (by["bn1", "batchnorm_stats"]["raw"], by["bn1", "batchnorm_stats"]["native"]) == (2 * z1 + s1, 2 * z1)
    # bn2: reads z, dy, writes dz; the native kernel reads dy, writes dz: extra = z + s
    assert (by["bn2", "batchnorm_stats"]["raw"], by["bn2", "batchnorm_stats"]["extra"]) == (3 * z2 + s2, z2 + s2)
    # conv3 -> ReLU: relu_stats reads r, dr, writes dx, as threshold_backward does: extra = s
    assert (by["conv3", "relu_stats"]["raw"], by["conv3", "relu_stats"]["extra"]) == (3 * r3 + s3, s3)
    # fc1 -> Tanh: generic channel_stats reads x and dx (and writes s), nothing replaced
    assert by["fc1", "channel_stats"]["tap"] == "GenericTap"
    assert by["fc1", "channel_stats"]["extra"] == 2 * h + s4
    for key, s in (("bn1", s1), ("bn2", s2), ("conv3", s3), ("fc1", s4)):
        assert by[key, "fold_criteria"]["extra"] == s  # reads s once
    taps = s1 + (z2 + s2) + s3 + (2 * h + s4) + (s1 + s2 + s3 + s4)
    assert taps == 1912 * n and row["taps_bytes"] == taps
    assert row["kernel_bytes"] == (2 * z1 + s1) + (3 * z2 + s2) + (3 * r3 + s3) + (2 * h + s4) + (s1 + s2 + s3 + s4)
    # the output gradient [N, 10]: drawn (write), its norms (read), divided in place (read + write), ...
    out = n * 10 * f
    assert 4 * out <= row["g_bytes"] <= 5 * out
    assert row["extra_bytes"] == taps + row["g_bytes"]
    assert row["predicted_ratio"] == pytest.approx((row["floor_bytes"] + row["extra_bytes"]) / row["floor_bytes"])
    assert row["predicted_extra_ms"]["H100 SXM"] == pytest.approx(row["extra_bytes"] / 3.35e12 * 1e3)
    # Tanh keeps its output, not its input: the generic tap keeps fc1's output, which the floor frees
    assert row["kept_bytes"] == h


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_needs_copy_is_as_ncp():
    from rgprune_fast.backends.triton.common import as_ncp

    x = torch.randn(2, 6, 5, 7)
    t = torch.randn(2, 9, 8)
    cases = [(x, 1), (x.contiguous(memory_format=torch.channels_last), 1), (x.transpose(2, 3), 1), (x[:, :3], 1),
             (x[..., :4], 1), (x[:, :, :1], 1), (t, -1), (t.transpose(1, 2), -1), (torch.randn(4, 8), 1),
             (torch.randn(2, 4, 3, 8)[:, :, 1:], -1), (torch.randn(2, 3, 4, 8).permute(0, 2, 1, 3), -1)]  # fmt: skip
    copies = []
    for tensor, dim in cases:
        copied = as_ncp(tensor, dim).untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr()
        assert traffic.needs_copy(tensor, dim) == copied, (tuple(tensor.shape), tensor.stride(), dim)
        copies.append(copied)
    assert any(copies) and not all(copies)


def test_suite_model_quick(tmp_path):
    rows = suite.main(["--model", "--quick", "--out", str(tmp_path)])
    names = {c.name for c in suite.QUICK_CONFIGS}
    if importlib.util.find_spec("transformers") is None:
        names = {n for n in names if "llama" not in n}
    assert {r["config"] for r in rows} == names
    for r in rows:
        assert r["floor_bytes"] > 0 and r["kernels"] > 0 and r["kernel_bytes"] > 0 and r["g_bytes"] > 0
        assert r["extra_bytes"] == r["taps_bytes"] + r["g_bytes"] > 0
        assert r["predicted_ratio"] == pytest.approx(1 + r["extra_bytes"] / r["floor_bytes"])
        assert set(r["predicted_extra_ms"]) == set(r["predicted_kernel_ms"]) == set(traffic.BANDWIDTH_TBPS)
        assert r["kernels"] == 2 * r["scored"]  # one statistics kernel and one criteria update per scored module
        if "resnet" in r["model"]:
            assert set(r["taps"]) == {"batchnorm"}
        if "llama" in r["model"]:
            assert r["taps"] == {"input": 2, "input (product)": 2}  # attention heads; gated-MLP neurons
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["title"] == traffic.TITLE and len(saved["rows"]) == len(rows)
    text = (tmp_path / "model.md").read_text()
    assert traffic.TITLE in text and all(f"| {r['model']} | {r['dtype']} | {r['layout']} |" in text for r in rows)


def test_predicted_column_in_results():
    """What a CUDA run of the suite adds to its rows (join_predictions) and to results.md."""
    cfg = suite.QUICK_CONFIGS[0]
    rows = [{"config": cfg.name, "batch": 4, "backend": b} for b in ("triton", "cuda")] + [{"kind": "kernel"}]
    suite.join_predictions(rows, suite.QUICK_CONFIGS)
    assert rows[0]["predicted_ratio"] == rows[1]["predicted_ratio"] > 1 and "predicted_ratio" not in rows[2]
    row = {"config": "c", "model": "m", "dtype": "bf16", "layout": "nchw", "batch": 2, "floor_ms": 10.0,
           "score_ms": 10.4, "naive_ms": 30.0, "train_step_ms": 20.0, "floor_peak_mb": None, "score_peak_mb": None,
           "naive_peak_mb": None, "backend": "triton", "predicted_ratio": 1.0375}  # fmt: skip
    meta = {"device": "d", "torch": "t", "triton": "t", "commit": "c"}
    text = report.markdown([row], meta, "today", quick=False)
    assert "| score/floor | predicted score/floor |" in text and "| 1.040 | 1.038 |" in text
    plain = {k: v for k, v in row.items() if k != "predicted_ratio"}  # CPU runs: no prediction, no column
    assert "predicted" not in report.markdown([plain], meta, "today", quick=True)
