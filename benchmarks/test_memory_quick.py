"""The memory benchmark runs end to end in quick mode: the comparison table and the 7B / 70B plan
(fake tensors; a 3-layer Llama-2-7B-wide model at a short sequence)."""

import json

import pytest

from . import memory


def test_memory_quick(tmp_path):
    pytest.importorskip("transformers")
    rows = memory.main(["--quick", "--out", str(tmp_path), "--only", "resnet18 8x64²,llama tiny"])
    assert {r["name"] for r in rows} == {
        "resnet18 8x64²",
        "llama tiny 8x64",
        "llama tiny 8x64 (fake)",
        "resnet18 8x64² (fake)",
    }
    for r in rows:
        assert all(r[f"{s}_peak"] > 0 for s in memory.SCORERS)
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert len(saved) == len(rows)
    assert "score / floor" in (tmp_path / "memory.md").read_text()


def test_memory_plan_quick(tmp_path):
    pytest.importorskip("transformers")
    memory.main(["--plan", "--quick", "--seq", "64", "--no-depth", "--out", str(tmp_path)])
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {r["checkpointing"] for r in plan["rows"]} == {False, True}
    assert all(g["random_peak"] < 2 * g["g_bytes"] + 2**29 for g in plan["gradients"])
    assert "| floor | score | naive | weight_taylor |" in (tmp_path / "plan.md").read_text()
