"""The CUDA kernels (rgprune_fast/backends/extension/csrc/stats_cuda.cu) run on the CPU under a small
emulation of the CUDA features they use (tests/cuda_emu/emu.h), against a float64 reference: both
layouts, padded strides, every dtype and op, split and unsplit reductions, and the 16-byte-load, 8- and
4-byte-piece and element-wise paths (rows or pointers aligned to 16, 8, 4 or 2 bytes) agreeing bit for
bit. This checks their logic where there is no GPU; speed and the real compiler are checked on a GPU
(test_backends.py's cuda pairs, test_cuda_ext.py), by `nvcc` in CI, and by benchmarks/aot_cuda.py."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "tests" / "cuda_emu"
CSRC = ROOT / "rgprune_fast" / "backends" / "extension" / "csrc"
CXX = shutil.which("g++")


def emulated_source() -> str:
    """stats_cuda.cu with the two pieces of CUDA syntax plain C++ lacks rewritten for emu.h."""
    src = (CSRC / "stats_cuda.cu").read_text()
    src, launches = re.subn(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(", r"::emu::launch(\1, \2)(", src)
    assert launches >= 4, "expected the kernel launches of stats_cuda.cu"
    decl = "extern __shared__ unsigned char smem_raw[];"
    assert decl in src
    return src.replace(decl, "unsigned char* smem_raw = ::emu::dynamic_smem();")


@pytest.mark.skipif(CXX is None, reason="needs g++ (C++20)")
def test_cuda_kernels_emulated(tmp_path):
    source = tmp_path / "stats_cuda_emulated.cpp"
    source.write_text(emulated_source())
    exe = tmp_path / "driver"
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", f"-I{EMU}", f"-I{CSRC}"]
    subprocess.run([*cmd, str(source), str(EMU / "driver.cpp"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and " 0 failures" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]
