"""benchmarks/gpu_session.sh --dry: every stage of the one-command GPU session runs on CPU (tiny sizes, the
Triton interpreter, the cpp backend standing in for cuda), writes its files and reports passed, or skipped
with its reason; so the script cannot break unnoticed between GPU sessions (docs/gpu_session.md)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = {  # stage -> what it writes under $OUT (besides <stage>.log)
    "env": ["env.txt"],
    "build": ["build.log"],
    "oracle_triton": ["oracle_triton/checks.md", "oracle_triton/checks.jsonl"],
    "oracle_cuda": ["oracle_cuda/checks.md", "oracle_cuda/checks.jsonl"],
    "kernels": ["kernels/kernels.md", "kernels/kernels.csv"],
    "suite": ["suite/results.json", "suite/results.md"],
    "llm": ["llm/llm.json", "llm/llm.md"],
}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_session(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env["RGPRUNE_GPU_TIME_SCALE"] = "2"  # every budget doubled: a loaded CI machine must not fail it by a second
    started = time.monotonic()
    run = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=480)  # fmt: skip
    seconds = time.monotonic() - started
    log = run.stdout[-6000:] + run.stderr[-3000:]
    rows = [line.split("\t") for line in (tmp_path / "status.tsv").read_text().splitlines()[1:]]
    status = {stage: (state, note) for stage, state, _, _, note in rows}
    assert list(status) == ["env", "oracle_triton", "build", "oracle_cuda", "kernels", "suite", "llm"], log
    for stage, (state, note) in status.items():
        assert state == "passed" or (state == "skipped" and note.strip()), f"{stage}: {state} ({note})\n{log}"
        assert stage in ("env", "build") or (tmp_path / f"{stage}.log").is_file(), stage
        if state == "passed":
            for name in FILES[stage]:
                assert (tmp_path / name).stat().st_size > 0, f"{stage} did not write {name}"
    assert run.returncode == 0, log
    for stage in ("oracle_triton", "oracle_cuda"):
        checks = [json.loads(line) for line in (tmp_path / stage / "checks.jsonl").read_text().splitlines()]
        assert checks and all(c["result"] == "PASS" or (c["result"] == "SKIP" and c["detail"]) for c in checks)
        assert "**PASS**" in (tmp_path / stage / "checks.md").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert summary.splitlines()[0].endswith(": all passed") and "Dry run" in summary
    assert "mode: dry run" in (tmp_path / "env.txt").read_text()
    print(f"dry GPU session: {seconds:.0f} s")


def test_oracle_checks_without_pytest_and_hypothesis(tmp_path):
    """The GPU image need not have the test extra: with pytest and hypothesis unimportable, the oracle checks
    import the test modules through stand-ins and still pass (the cpp backend, the dry run's list)."""
    code = (
        "import sys\n"
        "sys.modules['pytest'] = sys.modules['hypothesis'] = None  # import raises ImportError\n"
        "from benchmarks import gpu_oracle\n"
        f"sys.exit(gpu_oracle.main(['--backend', 'cpp', '--device', 'cpu', '--quick', '--out', {str(tmp_path)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "stand-in" in run.stdout
    checks = [json.loads(line) for line in (tmp_path / "checks.jsonl").read_text().splitlines()]
    assert len(checks) > 30 and all(c["result"] == "PASS" for c in checks)
