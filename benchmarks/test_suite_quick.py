"""The benchmark suite runs end to end in quick mode and writes its results, tables and plots."""

import json

from . import suite

MODEL_FIELDS = {
    "config", "model", "device", "dtype", "layout", "batch", "floor_ms", "score_ms", "naive_ms", "train_step_ms",
    "floor_peak_mb", "score_peak_mb", "naive_peak_mb", "backend", "torch", "triton", "commit",
}  # fmt: skip
KERNEL_FIELDS = {"config", "device", "dtype", "layout", "backend", "gbps", "copy_gbps", "torch", "triton", "commit"}


def test_quick_suite(tmp_path):
    suite.main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0", "--batches-per-call", "2",
                "--configs", "resnet56"])  # fmt: skip
    rows = json.loads((tmp_path / "results.json").read_text())
    models = [r for r in rows if r.get("kind") != "kernel"]
    kernels = [r for r in rows if r.get("kind") == "kernel"]
    assert models and kernels
    for r in models:
        assert set(r) >= MODEL_FIELDS, MODEL_FIELDS - set(r)
        assert r["floor_ms"] > 0 and r["score_ms"] > 0 and r["naive_ms"] > 0
    for r in kernels:
        assert set(r) >= KERNEL_FIELDS
        assert r["gbps"] > 0 and r["copy_gbps"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "score/floor" in text and ("PASS" in text or "MISS" in text)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("time.png", "kernels.png"):
        assert (tmp_path / name).stat().st_size > 1000
