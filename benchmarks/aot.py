"""Ahead-of-time checks of the GPU kernels, without a GPU.

    PYTHONPATH=. python -m benchmarks.aot --out DIR                     # Triton kernels, installed Triton
    PYTHONPATH=. python -m benchmarks.aot --out DIR --also-triton PATH  # and a second Triton found at PATH
    PYTHONPATH=. python -m benchmarks.aot --out DIR --cuda              # and the CUDA extension's kernels

Every Triton kernel is compiled the way its JIT would compile it on a GPU: the ops run on CPU tensors of
the benchmark models' real shapes (ResNet-50 stages at batch 128 in NCHW and channels_last, Llama-2-7B
MLP and attention tensors, odd shapes) with the launch recorded instead of run; the recorded arguments
get the JIT's own specialisation (``native_specialize_impl``: integers divisible by 16 and 16-byte
aligned pointers are marked, integers equal to 1 become constants) and the launch heuristics see the
multiprocessor count of a representative device of the architecture. Each unique specialisation is
compiled for sm_80, sm_86, sm_89 and sm_90 (``triton.compile`` with a ``GPUTarget``; Triton's wheel
ships ``ptxas``), and measured:

* ``regs``, ``spills`` (local memory bytes per thread: Triton kernels have no local arrays, so local
  memory is spilled registers), ``shared_bytes``, from ``cuobjdump --dump-resource-usage``;
* ``occupancy_warps``: resident warps per multiprocessor from registers, shared memory and the
  architecture's limits;
* ``global_loads`` / ``vector_loads_128b``: ``ld.global`` instructions in the PTX and how many are
  16 bytes wide; ``load_bits`` / ``store_bits``: the narrowest access to a *streamed* tensor (the
  activations and gradients, found through the PTX line table: per-channel parameters do not count);
* ``allowed_bits``: the widest access the tensors' layout allows, and ``reason`` when it is below 128.

Targets (``misses``; the command exits 1 when one is missed, so CI fails): no spills; streamed tensors
read and written with ``allowed_bits`` everywhere (128 unless the layout forbids it: then the reason
says why). Writes ``DIR/aot.json`` (rows) and ``DIR/aot.md`` (summary and misses).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from .aot_cuda import RESNET50, occupancy_warps

# Multiprocessors of a representative device per architecture (the launch heuristics size grids by them):
# A100, RTX 3090, RTX 4090, H100 SXM / H200. The architectures' limits and the occupancy rules are
# aot_cuda's, shared by both reports.
MULTIPROCESSORS = {"sm_80": 108, "sm_86": 82, "sm_89": 128, "sm_90": 132}
ARCHS = tuple(MULTIPROCESSORS)
# the tensors streamed through a kernel (read: activations, gradients and, by fold_criteria, s; written:
# the gradients a fused backward produces) as the kernels name them in tl.load / tl.store
STREAMED = {"ld": {"x_ptr", "dx_ptr", "z_ptr", "dy_ptr", "r_ptr", "dr_ptr", "s_ptr"}, "st": {"dz_ptr", "dx_ptr", "out"}}
# per-channel parameters, statistics and running sums: accessed, not streamed
OTHERS = {"mean_ptr", "scale_ptr", "shift_ptr", "s_ptr", "partial_ptr", "first_bad_ptr", "sum_s_ptr", "sum_abs_ptr",
          "sum_sq_ptr", "sum_batch_sq_ptr"}  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    """One tensor the taps reduce: ``shape`` is ``[N, C, H, W]`` (``layout`` nchw / channels_last) or
    ``[B, T, C]`` / ``[N, C]`` (``tokens``: channel dim last)."""

    model: str
    shape: tuple
    dtype: str
    layout: str

    @property
    def channel_dim(self) -> int:
        return -1 if self.layout == "tokens" else 1

    def tensor(self) -> torch.Tensor:
        # torch.empty leaves the pages untouched: a 400 MB activation costs address space, not memory
        layout = torch.channels_last if self.layout == "channels_last" else torch.contiguous_format
        return torch.empty(self.shape, dtype=DTYPES[self.dtype], memory_format=layout)


ODD = [(3, 7), (24, 13), (32, 13, 1)]  # (C, H[, W]): the last, rows of 13: groups of 16 rows, 1 warp


def cases(quick: bool = False) -> list[Case]:
    """Every benchmark shape: ResNet-50 at batch 128 (bf16 and fp32, NCHW and channels_last), the
    Llama-2-7B MLP and attention tensors at batch 4 x 2048 tokens (bf16), and odd shapes."""
    out = []
    resnet = RESNET50[-4:] if quick else RESNET50
    for dtype in ("bf16", "fp32"):
        for layout in ("nchw", "channels_last"):
            out += [Case("resnet50", (128, c, hw, hw), dtype, layout) for c, hw in resnet]
            out += [Case("odd", (8, c, hw, w[0] if w else hw), dtype, layout) for c, hw, *w in ODD]
    for width in (11008, 4096):
        out.append(Case("llama-2-7b", (4, 2048, width), "bf16", "tokens"))
    out += [Case("vgg19_bn", (64, 4096), dtype, "tokens") for dtype in ("bf16", "fp32")]  # classifier [N, C]
    out += [Case("odd", (8, 77, 768), "bf16", "tokens"), Case("odd", (8, 1000), "fp32", "tokens")]
    return out


@dataclass
class Launch:
    op: str
    kernel: object  # the JITFunction
    args: tuple
    kwargs: dict
    allowed_bits: int
    reason: str


def allowed(view: torch.Tensor) -> tuple[int, str]:
    """The target access width (bits) for a tensor seen as ``view`` (``[N, C, P]``) and, below 128, why.
    From the layout alone, not from the kernel the launcher picks: runs of the contiguous dim that are
    16-byte aligned allow 128; so does a contiguous tensor whose rows are not, when whole runs of the
    fewest rows that make 16 bytes fill a warp's 16-byte accesses, fit a program (``common.ROW_GROUP_CELLS``)
    and do not leave an example (they divide C); elsewhere the rows' own alignment."""
    from rgprune_fast.backends.triton import common

    itemsize = view.element_size()
    n, c, p = view.shape
    contiguous_c = common.channels_contiguous(view)
    run = c if contiguous_c else p  # elements of one contiguous run
    align = 16 if run * itemsize % 16 == 0 else (run * itemsize) & -(run * itemsize)  # bytes; not the launcher's
    if align == 16:
        return 128, ""
    dim = "channels" if contiguous_c else "positions"
    why = f"runs of {run} {dim} ({run * itemsize} B) are {align}-byte aligned"
    if not contiguous_c and view.is_contiguous() and p > 1:
        r = 16 // align  # the fewest rows whose run is a multiple of 16 bytes
        group = r * p * itemsize
        if c % r == 0 and group >= 512 and (1 << (r * p - 1).bit_length()) * r <= common.ROW_GROUP_CELLS:
            return 128, ""
        if c % r:
            why += f"; {r} rows do not divide C={c}"
        elif group < 512:
            why += f"; {r} rows ({group} B) are less than one warp's 16-byte accesses (512 B)"
        else:
            why += f"; {r} rows of {p} do not fit a program"
    return min(128, 8 * align), why


def record(case: Case, sms: int) -> list[Launch]:
    """The launches the ops make for ``case`` on a device with ``sms`` multiprocessors."""
    from rgprune_fast.backends.contract import RunningSums
    from rgprune_fast.backends.triton import batchnorm_stats, channel_stats, common, fold_criteria, relu_stats

    launches: list[Launch] = []
    current = {}

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(Launch(current["op"], self.kernel, args, kwargs, *current["allowed"]))

            return launch

    x = case.tensor()
    view = common.as_ncp(x, case.channel_dim)
    c = view.shape[1]
    s = torch.empty(view.shape[:2], dtype=torch.float32)
    sums = RunningSums(torch.empty(c), torch.empty(c, dtype=torch.int64), torch.empty(c), torch.empty(c), None)
    ops = [("channel_stats", lambda: channel_stats.channel_stats_op(x, x, case.channel_dim, 0))]
    if case.channel_dim == 1:
        p = torch.empty(c)
        ops += [(f"batchnorm_stats need_dz={need}", lambda need=need: batchnorm_stats.batchnorm_stats_op(
            x, x, p, p, p, need, 0)) for need in (True, False)]  # fmt: skip
    ops += [(f"relu_stats need_dx={need}", lambda need=need: relu_stats.relu_stats_op(
        x, x, 0.0, False, case.channel_dim, need, 0)) for need in (True, False)]  # fmt: skip
    ops.append(("fold_criteria", lambda: fold_criteria.fold_criteria(s, 0, sums)))
    with mock.patch.object(common, "launcher", Recorder), mock.patch.object(common, "multiprocessors", lambda d: sms):
        for op, run in ops:
            current["op"] = op
            current["allowed"] = allowed(view)
            run()
    return launches


def specialise(launch: Launch):
    """``(signature, constexprs, attrs, options)`` exactly as the JIT derives them from the arguments."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    kernel = launch.kernel
    options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs}
    values = dict(zip(kernel.arg_names, launch.args))
    values.update({k: v for k, v in launch.kwargs.items() if k not in options})
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = values[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)[:2]
        if kind == "constexpr":
            signature[name], constexprs[name] = "constexpr", key
            continue
        signature[name] = kind
        if key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def triton_bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")
LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")
FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')
NAMED = re.compile(r"tl\.(load|store)\((\w+)")


def access_bits(suffixes: str) -> int:
    parts = suffixes.split(".")
    vec = 4 if "v4" in parts else 2 if "v2" in parts else 1
    bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bufs]\d+", p)), 32)
    return vec * bits


def ptx_accesses(ptx: str) -> list[tuple[str, str | None, int]]:
    """``(ld|st, pointer name or None, bits)`` per global access, the pointer named through the line
    table (the ``tl.load(name ...`` / ``tl.store(name ...`` on the kernel's source line)."""
    files = {m.group(1): m.group(2) for line in ptx.splitlines() if (m := FILE.match(line))}  # listed last
    loc, out, sources = None, [], {}
    for line in ptx.splitlines():
        if m := LOC.match(line):
            loc = (m.group(1), int(m.group(2)))
        elif m := ACCESS.search(line):
            name = None
            if loc and loc[0] in files:
                path = files[loc[0]]
                if path not in sources:
                    sources[path] = Path(path).read_text().splitlines() if Path(path).exists() else []
                text = sources[path][loc[1] - 1] if loc[1] <= len(sources[path]) else ""
                if named := NAMED.search(text):
                    name = named.group(2)
            out.append((m.group(1), name, access_bits(m.group(2))))
    return out


def resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([triton_bin("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    lines = [line for line in text.splitlines() if "REG:" in line]
    if len(lines) != 1:
        raise RuntimeError(f"cuobjdump --dump-resource-usage: expected one kernel's REG line, got:\n{text}")
    fields = dict(re.findall(r"(\w+):(\d+)", lines[0]))
    return {k: int(fields[k]) for k in ("REG", "SHARED", "LOCAL", "STACK")}


class Compiler:
    """Compiles each unique specialisation once per architecture and measures it."""

    def __init__(self):
        self.cache: dict = {}

    def measure(self, launch: Launch, arch: str) -> dict:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        signature, constexprs, attrs, options = specialise(launch)
        key = (launch.kernel.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items(), key=str)),
               repr(sorted(attrs)), repr(sorted(options.items())), arch)  # fmt: skip
        if key not in self.cache:
            src = ASTSource(launch.kernel, signature, constexprs, attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", int(arch[3:]), 32), options=options)
            usage = resource_usage(compiled.asm["cubin"])
            num_warps = compiled.metadata.num_warps
            shared = compiled.metadata.shared + usage["SHARED"]
            accesses = ptx_accesses(compiled.asm["ptx"])
            loads = [bits for kind, _, bits in accesses if kind == "ld"]
            streamed = [(kind, bits) for kind, name, bits in accesses if name in STREAMED[kind]]
            unknown = sorted({f"{kind} {name}" for kind, name, _ in accesses if name not in STREAMED[kind] | OTHERS})
            self.cache[key] = {
                "config": f"num_warps={num_warps} "
                + " ".join(f"{k}={v}" for k, v in constexprs.items() if k.isupper() and k != "ACC"),
                "regs": usage["REG"],
                "spills": usage["LOCAL"] + usage["STACK"],
                "shared_bytes": shared,
                "occupancy_warps": occupancy_warps(arch, usage["REG"], 32 * num_warps, shared),
                "global_loads": len(loads),
                "vector_loads_128b": sum(bits == 128 for bits in loads),
                "load_bits": min((b for k, b in streamed if k == "ld"), default=None),
                "store_bits": min((b for k, b in streamed if k == "st"), default=None),
                "unattributed": unknown,  # accesses the line table does not tie to a known pointer
            }
        return self.cache[key]


def triton_rows(archs: list[str], quick: bool = False, progress=print, only: list[Case] | None = None) -> list[dict]:
    """The rows of every case (``only``: these cases) on every architecture."""
    import triton

    compiler = Compiler()
    rows = []
    for arch in archs:
        started = time.monotonic()
        for case in only if only is not None else cases(quick):
            for launch in record(case, MULTIPROCESSORS[arch]):
                m = compiler.measure(launch, arch)
                kernel = launch.kernel.__name__
                allowed_bits, reason = launch.allowed_bits, launch.reason
                if kernel == "fold_criteria_kernel":  # reads s[N, C] one fp32 per channel per thread: not a target
                    allowed_bits, reason = 32, "one fp32 per channel per example"
                rows.append({
                    "backend": "triton", "triton": triton.__version__, "kernel": kernel, "op": launch.op,
                    "model": case.model, "dtype": case.dtype, "layout": case.layout, "shape": list(case.shape),
                    "arch": arch, **m, "allowed_bits": allowed_bits, "reason": reason,
                })  # fmt: skip
        progress(f"  triton {triton.__version__} {arch}: {len(compiler.cache)} compiled so far, "
                 f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    return rows


def misses(rows: list[dict]) -> list[str]:
    """The targets a row misses, one line each."""
    out = []
    for r in (r for r in rows if r["backend"] == "triton"):  # the CUDA rows: aot_cuda.cuda_misses
        where = " ".join(
            str(r.get(k, "")) for k in ("backend", "triton", "kernel", "op", "dtype", "layout", "shape", "arch")
        )
        if r["spills"]:
            out.append(f"{where}: {r['spills']} bytes of spills")
        for what in ("load_bits", "store_bits"):
            bits = r.get(what)
            if bits is not None and bits < r["allowed_bits"]:
                out.append(f"{where}: {what} {bits} < {r['allowed_bits']} the layout allows")
        if r.get("load_bits") is None and r["kernel"] != "fold_criteria_kernel":
            out.append(f"{where}: no streamed load found in the PTX line table")
        if r.get("store_bits") is None and ("need_dz=True" in r["op"] or "need_dx=True" in r["op"]):
            out.append(f"{where}: no streamed store found in the PTX line table")
        if r.get("unattributed"):
            out.append(f"{where}: accesses not tied to a known pointer: {', '.join(r['unattributed'])}")
    return out


def provenance(argv: list[str]) -> str:
    """Commit, command and versions, for the report's head."""
    import platform

    import triton

    from .common import commit

    where = platform.processor() or "cpu"
    command = f"python -m benchmarks.aot {' '.join(argv)}"
    return f"Commit {commit()}; `{command}`; on {where}; torch {torch.__version__}, triton {triton.__version__}."


def markdown(rows: list[dict], missed: list[str], head: str = "") -> str:
    lines = ["# Ahead-of-time kernel report", "", head, "", f"{len(rows)} rows; targets missed: {len(missed)}", ""]
    lines += ["| backend | kernel | dtype | layout | shape | arch | regs | spills | occupancy (warps) | "
              "load / store bits | allowed | reason |", "|" + "---|" * 12]  # fmt: skip
    seen = set()
    for r in rows:
        key = (r["backend"], r.get("triton"), r["kernel"], r.get("op"), r["dtype"], r["layout"], r["arch"],
               r.get("load_bits"), r.get("store_bits"), r["regs"])  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        shape = "x".join(map(str, r["shape"]))
        name = f"{r['kernel']} ({r.get('op', r.get('config', ''))})" + (
            f" triton {r['triton']}" if r.get("triton") else ""
        )
        lines.append(f"| {r['backend']} | {name} | {r['dtype']} | {r['layout']} | {shape} | {r['arch']} | "
                     f"{r['regs']} | {r['spills']} | {r['occupancy_warps']} | {r.get('load_bits')} / "
                     f"{r.get('store_bits')} | {r['allowed_bits']} | {r['reason']} |")  # fmt: skip
    lines += ["", "Rows with the same kernel, dtype, layout, arch and result are shown once (aot.json has all).", ""]
    if missed:
        lines += ["## Missed targets", ""] + [f"- {m}" for m in missed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, from " + ", ".join(ARCHS))
    ap.add_argument("--quick", action="store_true", help="the last four ResNet-50 stages only")
    ap.add_argument("--also-triton", type=Path, help="a folder holding a second triton package (pip --target)")
    ap.add_argument("--cuda", action="store_true", help="also the CUDA extension's kernels (needs nvcc)")
    ap.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # the second-Triton subprocess
    args = ap.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        ap.error(f"unknown arch {', '.join(unknown)}; known: {', '.join(ARCHS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        second = None
        if args.also_triton:  # compiled by a second process at the same time (compiling is single-threaded)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            path = os.pathsep.join([str(args.also_triton.resolve()), os.getcwd(), os.environ.get("PYTHONPATH", "")])
            cmd = [sys.executable, "-m", "benchmarks.aot", "--out", str(tmp), "--archs", args.archs, "--rows-only"]
            second = subprocess.Popen(cmd + (["--quick"] if args.quick else []), env={**os.environ, "PYTHONPATH": path})
        rows = triton_rows(archs, args.quick)
        if args.rows_only:
            (args.out / "rows.json").write_text(json.dumps(rows))
            return 0
        if second is not None:
            if second.wait() != 0:
                raise SystemExit(f"aot: the run with the Triton at {args.also_triton} failed ({second.returncode})")
            rows += json.loads((tmp / "rows.json").read_text())
    if args.cuda:
        from .aot_cuda import cuda_rows

        rows += cuda_rows(archs)
    missed = misses(rows)
    if args.cuda:
        from .aot_cuda import cuda_misses

        missed += cuda_misses([r for r in rows if r["backend"] == "cuda"])
    (args.out / "aot.json").write_text(json.dumps(rows, indent=1))
    (args.out / "aot.md").write_text(markdown(rows, missed, provenance(sys.argv[1:] if argv is None else argv)))
    versions = sorted({r.get("triton") for r in rows if r.get("triton")})
    print(f"aot: {len(rows)} rows (triton {', '.join(versions)}{', cuda' if args.cuda else ''}) for "
          f"{', '.join(archs)} in {time.monotonic() - started:.0f} s; {len(missed)} targets missed; "
          f"wrote {args.out}/aot.json, aot.md")  # fmt: skip
    for m in missed[:50]:
        print("MISSED:", m)
    return 1 if missed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
