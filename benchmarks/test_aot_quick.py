"""benchmarks/aot.py can fail: with the alignment declarations or the row-group kernels switched off, the
rows of the shapes they serve miss their targets (CI runs the full check, which must pass)."""

from unittest import mock

import pytest

pytest.importorskip("triton")

from benchmarks import aot  # noqa: E402
from rgprune_fast.backends.triton import common  # noqa: E402

FP32_14 = aot.Case("resnet50", (128, 256, 14, 14), "fp32", "nchw")  # 784-byte rows: ALIGN 4, tiled
BF16_7 = aot.Case("resnet50", (128, 512, 7, 7), "bf16", "nchw")  # 98-byte rows: row groups


def rows(case, **patches):
    with mock.patch.multiple(common, **patches) if patches else mock.patch.object(common, "MAX_ALIGN", 16):
        return aot.triton_rows(["sm_90"], only=[case], progress=lambda *a, **k: None)


def test_the_kernels_meet_their_targets_on_two_shapes():
    got = rows(FP32_14) + rows(BF16_7)
    assert not aot.misses(got)
    streamed = [r for r in got if r["kernel"] != "fold_criteria_kernel"]
    assert {r["load_bits"] for r in streamed} == {128} and {r["spills"] for r in got} == {0}
    assert {r["kernel"] for r in rows(BF16_7)} >= {"channel_stats_rows_kernel", "batchnorm_stats_rows_kernel"}


def test_without_the_alignment_declarations_the_check_fails():
    missed = aot.misses(rows(FP32_14, alignment=lambda *values: 1))
    assert any("load_bits 32 < 128" in m for m in missed), missed


def test_without_row_groups_the_check_fails():
    missed = aot.misses(rows(BF16_7, row_groups=lambda views: None))
    assert any("load_bits 16 < 128" in m for m in missed), missed
