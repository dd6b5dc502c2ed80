"""The LLM benchmark runs end to end on a tiny Llama (needs transformers)."""

import json

import pytest

from . import llm


def test_llm_quick(tmp_path):
    pytest.importorskip("transformers")
    llm.main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--max-batch", "1"])
    result = json.loads((tmp_path / "llm.json").read_text())
    assert {r["method"] for r in result["rows"]} == {"floor", "score", "weight_taylor"}
    assert all(r["ms_per_token"] > 0 for r in result["rows"])
    assert "Largest batch" in (tmp_path / "llm.md").read_text()
