"""The CUDA extension's kernels (rgprune_fast/backends/extension/csrc/stats_cuda.cu) checked ahead of time,
without a GPU: compiled per architecture with ``nvcc -cubin -Xptxas -v`` (the extension's own flags), then,
for every kernel instantiation, registers, spills, stack, shared memory and resident warps per SM
(occupancy), and the global loads in its SASS by width (``cuobjdump -sass``).

Which instantiation a shape runs and how wide its loads are is decided at run time on the host, by
``configure`` (group size, tile, splits) and ``load_width`` (16-, 8- or 4-byte pieces, or element by
element, from the alignment of the rows) in stats_cuda.cu. Rather than mirroring them in Python, a small
host program that #includes stats_cuda.cu asks them directly (``launch_plans``): the rows follow the C++.
Only the targets are computed here independently: the widest load every row's alignment allows.

``cuda_rows()`` gives one row per kernel x dtype x layout x shape x arch; ``cuda_misses(rows)`` lists the
targets they miss (spills, loads narrower than 128 bits where the rows allow 128, loads narrower than the
rows' alignment allows, a chosen width absent from the SASS). ``python -m benchmarks.aot_cuda`` prints both.
Needs nvcc (CUDA 12+) and cuobjdump (the CUDA toolkit's, or the copy that ships with Triton); no GPU, no torch.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "rgprune_fast" / "backends" / "extension"
CSRC = EXTENSION / "csrc"
SOURCE = CSRC / "stats_cuda.cu"

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
# Per SM: resident warps, registers, shared memory (bytes, the largest carve-out), resident blocks.
ARCH_LIMITS = {
    "sm_80": {"warps": 64, "regs": 65536, "smem": 164 * 1024, "blocks": 32},
    "sm_86": {"warps": 48, "regs": 65536, "smem": 100 * 1024, "blocks": 16},
    "sm_89": {"warps": 48, "regs": 65536, "smem": 100 * 1024, "blocks": 24},
    "sm_90": {"warps": 64, "regs": 65536, "smem": 228 * 1024, "blocks": 32},
}
REG_GRANULARITY = 256  # registers are allocated per warp in units of 256
SMEM_RESERVED = 1024  # shared memory the driver reserves per block (sm_80 and later)
SMEM_GRANULARITY = 128

DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}  # element bytes
OPS = ("channel", "batchnorm", "relu", "relu6")  # the kernels' Op template argument, in stats_cuda.cu's order
ACC_BYTES = {"bf16": 4, "fp16": 4, "fp32": 4, "fp64": 8}
POINTER_ALIGN = 256  # torch's CUDA allocations (dense tensors: no storage offset)

# Tensor layouts (the names benchmarks/aot.py uses) and the plan the extension makes for a dense tensor
# (csrc/layout.cpp): nchw: [N, C, *positions] contiguous -> channels-first; channels_last: [N, C, H, W] in
# the channels_last memory format, tokens: [B, T, C] or [N, C] contiguous, channel dim -1 -> channels-last.
LAYOUTS = ("nchw", "channels_last", "tokens")

# ResNet-50 (torchvision, stride on the 3x3 conv) at 224 x 224: (C, H = W) of the stem and of every stage's
# activations (bottleneck widths, block outputs, each stage's first conv1 at the previous size).
RESNET50 = [(64, 112), (64, 56), (256, 56), (128, 56), (128, 28), (512, 28), (256, 28), (256, 14), (1024, 14),
            (512, 14), (512, 7), (2048, 7)]  # fmt: skip


def benchmark_shapes() -> list[dict]:
    """The default shapes (those of benchmarks/aot.py and more): ResNet-50 at batch 128 in NCHW and
    channels_last, Llama-2-7B's MLP and attention activations [4, 2048, 11008 / 4096], VGG-19's classifier
    [64, 4096], and odd ones: C = 3, P = 1, P = 13, 13 x 13 and 7 x 7 maps, rows 8-byte aligned (C = 100)."""
    shapes = []
    for layout in ("nchw", "channels_last"):
        shapes += [{"model": "resnet50", "shape": (128, c, hw, hw), "layout": layout} for c, hw in RESNET50]
        shapes += [{"model": "odd", "shape": (8, c, hw, hw), "layout": layout} for c, hw in ((3, 7), (24, 13))]
        shapes.append({"model": "odd", "shape": (128, 3, 224, 224), "layout": layout})  # the image, C = 3
    shapes += [
        {"model": "odd", "shape": (64, 96, 13), "layout": "nchw"},  # [N, C, L], P = 13
        {"model": "llama-2-7b", "shape": (4, 2048, 11008), "layout": "tokens"},
        {"model": "llama-2-7b", "shape": (4, 2048, 4096), "layout": "tokens"},
        {"model": "vgg19_bn", "shape": (64, 4096), "layout": "tokens"},  # classifier [N, C]: P = 1
        {"model": "odd", "shape": (8, 77, 768), "layout": "tokens"},
        {"model": "odd", "shape": (8, 1000), "layout": "tokens"},
        {"model": "odd", "shape": (64, 13, 96), "layout": "tokens"},  # P = 13
        {"model": "odd", "shape": (32, 49, 100), "layout": "tokens"},  # rows of 100 channels: 8-byte aligned
    ]
    return shapes


# ---- geometry of a dense tensor as the extension sees it (layout.cpp: make_plan, fits) ----


def geometry(shape: tuple[int, ...], layout: str) -> dict:
    """N, C, P, the plan's kind and element strides (n, c, p) of a dense tensor: layout.cpp's make_plan/fits."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    dims = list(shape)
    cd = len(dims) - 1 if layout == "tokens" else 1
    if layout == "channels_last":  # memory order N, H, W, C
        order = [0, *range(2, len(dims)), 1]
    else:
        order = list(range(len(dims)))
    strides = [0] * len(dims)
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= dims[d]
    N, C = dims[0], dims[cd]
    pos = [d for d in range(1, len(dims)) if d != cd]
    P = math.prod(dims[d] for d in pos)
    inner = [d for d in sorted(pos, key=lambda d: -strides[d]) if dims[d] > 1]
    sp = strides[inner[-1]] if inner else 1
    cf_ok = P == 1 or sp == 1
    cl_ok = C == 1 or strides[cd] == 1
    if cf_ok and cl_ok:
        last = P == 1 and C > 1
    else:
        last = cl_ok and not cf_ok
    if last:
        return {"N": N, "C": C, "P": P, "channels_last": True, "n": strides[0], "c": 1, "p": sp}
    return {"N": N, "C": C, "P": P, "channels_last": False, "n": strides[0], "c": strides[cd], "p": 1}


def allowed_bytes(g: dict, elem: int) -> int:
    """The target, from first principles: the widest access (16, 8 or 4 bytes, at least one element) at
    which every row of every tensor starts aligned (a stride of a dim of size 1 is never used)."""
    bits = POINTER_ALIGN
    rows = g["P"] if g["channels_last"] else g["C"]
    if g["N"] > 1:
        bits |= g["n"] * elem
    if rows > 1:
        bits |= (g["p"] if g["channels_last"] else g["c"]) * elem
    for w in (16, 8, 4):
        if w >= elem and bits % w == 0:
            return w
    return elem


# ---- tools ----


def _tool(name: str, env: str) -> str:
    candidates = [os.environ.get(env), shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", name))
    spec = importlib.util.find_spec("triton")  # locates Triton without importing it
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise RuntimeError(f"{name} not found (set {env}, CUDA_HOME, or put it on PATH)")


def _build_config():
    path = EXTENSION / "build_config.py"
    spec = importlib.util.spec_from_file_location("_rgprune_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# torch.utils.cpp_extension.COMMON_NVCC_FLAGS (torch 2.x), added to every extension's nvcc command.
_TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]


def compile_flags() -> list[str]:
    """The extension build's nvcc flags (build_config.nvcc_flags() plus torch's common ones), C++17 as in CI's
    compile check. Architecture flags are added per compile."""
    cpp_extension = sys.modules.get("torch.utils.cpp_extension")  # torch's own list, when already imported
    common = list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", _TORCH_NVCC_FLAGS))
    return ["-std=c++17", *_build_config().nvcc_flags(), *common]


# ---- compiling and reading the kernels ----

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()
_workdir: Path | None = None


def _work() -> Path:
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="rgprune_aot_cuda_"))
        atexit.register(shutil.rmtree, _workdir, ignore_errors=True)
    return _workdir


def _key(source: Path, flags: list[str]) -> str:
    h = hashlib.sha256()
    for p in [source, *sorted(source.parent.glob("*.h"))]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SASS_FUNC = re.compile(r"Function : (\S+)")
_SASS_OP = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?((?:LDG|STG)\S*)")


def _parse_ptxas(text: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(m[1], {"regs": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = int(m[1]), int(m[2]), int(m[3])
        m = _USED.search(line)
        if m:
            cur["regs"] = int(m[1])
            s = _SMEM.search(line)
            cur["smem"] = int(s[1]) if s else 0
    return out


def _parse_sass(text: str) -> dict[str, dict[str, Counter]]:
    out: dict[str, dict[str, Counter]] = {}
    cur = None
    for line in text.splitlines():
        m = _SASS_FUNC.search(line)
        if m:
            cur = out.setdefault(m[1], {"loads": Counter(), "stores": Counter()})
            continue
        m = _SASS_OP.match(line)
        if m and cur is not None:
            op = m[1].rstrip(";")
            cur["loads" if op.startswith("LDG") else "stores"][op] += 1
    return out


def access_bits(opcode: str) -> int:
    """Bits per thread of an LDG/STG opcode: LDG.E.128 -> 128, LDG.E.64 -> 64, LDG.E.U16 -> 16, LDG.E -> 32."""
    parts = opcode.split(".")
    for p in parts:
        if p in ("128", "64"):
            return int(p)
        if p in ("U16", "S16"):
            return 16
        if p in ("U8", "S8"):
            return 8
    return 32


_TYPES = {"13__nv_bfloat16": "bf16", "6__half": "fp16", "f": "fp32", "d": "fp64"}


def _kernel_key(mangled: str) -> tuple | None:
    """(kind, dtype, op, group) of a kernel's mangled name (dtype: the accumulator's for finalize_kernel)."""
    m = re.search(r"(channels_first_kernel|channels_last_kernel|finalize_kernel)I(.*)$", mangled)
    if not m:
        return None
    kind, rest = m[1], m[2]
    o = re.search(r"\d+(ChannelOp|BatchNormOp|ReluOp)(?:ILb([01])E)?", rest)
    op = {"ChannelOp": "channel", "BatchNormOp": "batchnorm"}.get(o[1]) or ("relu6" if o[2] == "1" else "relu")
    if kind == "finalize_kernel":
        dtype = {"f": "fp32", "d": "fp64"}[rest[o.end() :].lstrip("E")[0]]
        return (kind, dtype, op, None)
    dtype = next(v for k, v in _TYPES.items() if rest.startswith(k))
    g = re.search(r"ELi(\d+)EE", rest)
    return (kind, dtype, op, int(g[1]) if kind == "channels_first_kernel" else None)


def kernel_name(key: tuple) -> str:
    kind, dtype, op, group = key
    if kind == "channels_first_kernel":
        return f"{kind}<{dtype},{op},G={group}>"
    return f"{kind}<{dtype},{op}>"


def compile_arch(arch: str, source: Path = SOURCE, flags: list[str] | None = None) -> dict[tuple, dict]:
    """Every kernel instantiation of `source` compiled for `arch`: {key: {regs, stack, spills, smem, loads,
    stores}} (loads / stores: SASS opcode counts). Cached per source, flags and arch for the process."""
    flags = compile_flags() if flags is None else flags
    ck = ("cubin", arch, _key(source, flags))
    with _cache_lock:
        if ck in _cache:
            return _cache[ck]
    nvcc, cuobjdump = _tool("nvcc", "NVCC"), _tool("cuobjdump", "CUOBJDUMP")
    cubin = _work() / f"{source.stem}_{ck[2]}_{arch}.cubin"
    cmd = [nvcc, *flags, f"-arch={arch}", "-cubin", "-Xptxas", "-v", f"-I{source.parent}", str(source)]
    cmd += ["-o", str(cubin)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"nvcc failed for {arch}:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    ptxas = _parse_ptxas(r.stderr)
    s = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True)
    sass = _parse_sass(s.stdout)
    kernels = {}
    for mangled, info in ptxas.items():
        key = _kernel_key(mangled)
        if key is None:
            continue
        code = sass.get(mangled, {"loads": Counter(), "stores": Counter()})
        kernels[key] = {**info, "spills": info["spill_stores"] + info["spill_loads"], "mangled": mangled, **code}
    with _cache_lock:
        _cache[ck] = kernels
    return kernels


_PROBE = r"""
#include "%(source)s"
#include <cstdio>
// Asks stats_cuda.cu's own host code how it launches each geometry (benchmarks/aot_cuda.py).
int main() {
  using namespace rgprune_fast::cuda;
  long long N, C, P, sn, sc, sp, elem;
  int last, out;
  while (std::scanf("%%lld %%lld %%lld %%d %%lld %%lld %%lld %%lld %%d", &N, &C, &P, &last, &sn, &sc, &sp, &elem,
                    &out) == 9) {
    Geometry g;
    g.N = N, g.C = C, g.P = P, g.channels_last = last != 0;
    g.a_n = g.b_n = sn, g.a_c = g.b_c = sc, g.a_p = g.b_p = sp;
    if (out) g.o_n = sn, g.o_c = sc, g.o_p = sp;
    Args args;
    args.a = args.b = reinterpret_cast<const void*>(uintptr_t{%(align)d});
    args.out = out ? reinterpret_cast<void*>(uintptr_t{2 * %(align)d}) : nullptr;
    const Config k = configure(g, 16 / elem);
    const int width = %(width)s;
    std::printf("%%d %%d %%d %%lld %%lld %%lld %%lld %%d\n", k.group, k.cx, k.py, (long long)k.tiles,
                (long long)k.chunk, (long long)k.splits, (long long)k.blocks, width);
  }
}
"""


def _probe_binary(source: Path, flags: list[str]) -> Path:
    ck = ("probe", _key(source, flags))
    with _cache_lock:
        if ck in _cache:
            return _cache[ck]
    text = source.read_text()
    if "load_width(" in text:
        width = "load_width(g, args, elem)"
    else:  # the kernels before load_width: 16-byte loads or element by element
        width = "vector_ok(g, args, 16 / elem) ? 16 : 0"
    src = _work() / f"probe_{ck[1]}.cu"
    src.write_text(_PROBE % {"source": source.resolve(), "align": POINTER_ALIGN, "width": width})
    exe = _work() / f"probe_{ck[1]}"
    # Host code is what counts; the kernels compile too (for one arch, unoptimised: quicker).
    cmd = [_tool("nvcc", "NVCC"), *[f for f in flags if f != "-O3"], "-O0", "-arch=sm_80", "-Xcicc", "-O0"]
    cmd += ["-Xptxas", "-O0", f"-I{source.parent}", str(src), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"the launch-configuration probe did not build:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    with _cache_lock:
        _cache[ck] = exe
    return exe


def launch_plans(queries: list[tuple[dict, int, bool]], source: Path = SOURCE, flags: list[str] | None = None):
    """stats_cuda.cu's own answer for each (geometry, element bytes, writes an output): configure's group, cx,
    py, tiles, chunk, splits, blocks and load_width's bytes per access (0: element by element)."""
    exe = _probe_binary(source, compile_flags() if flags is None else flags)
    lines = [
        f"{g['N']} {g['C']} {g['P']} {int(g['channels_last'])} {g['n']} {g['c']} {g['p']} {elem} {int(out)}"
        for g, elem, out in queries
    ]
    r = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    names = ("group", "cx", "py", "tiles", "chunk", "splits", "blocks", "width")
    return [dict(zip(names, map(int, line.split()), strict=True)) for line in r.stdout.splitlines()]


# ---- occupancy ----


def occupancy_warps(arch: str, regs: int, threads: int, smem: int) -> int:
    """Resident warps per SM for blocks of `threads` threads using `regs` registers per thread and `smem`
    bytes of shared memory (static + dynamic) per block."""
    lim = ARCH_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // REG_GRANULARITY) * REG_GRANULARITY
    by_regs = (lim["regs"] // regs_per_warp) // warps
    block_smem = -(-(smem + SMEM_RESERVED) // SMEM_GRANULARITY) * SMEM_GRANULARITY
    by_smem = lim["smem"] // block_smem
    blocks = min(lim["blocks"], lim["warps"] // warps, by_regs, by_smem)
    return blocks * warps


# ---- rows ----


def _shape_spec(s) -> dict:
    if isinstance(s, dict):
        return {"model": s.get("model", ""), "shape": tuple(s["shape"]), "layout": s["layout"]}
    model, shape, layout = s
    return {"model": model, "shape": tuple(shape), "layout": layout}


def _reason(g: dict, dtype: str, plan: dict, load_bytes: int, full_packs: bool) -> str:
    elem = DTYPES[dtype]
    if load_bytes >= 16:
        return ""
    if not full_packs:
        what = f"C={g['C']}" if g["channels_last"] else f"P={g['P']}"
        return f"{what} is shorter than a 16-byte pack ({16 // elem} {dtype}): element by element"
    row = g["p"] if g["channels_last"] else g["c"]
    rows = g["P"] if g["channels_last"] else g["C"]
    parts = []
    if rows > 1:
        parts.append((row * elem, f"rows every {row * elem} B"))
    if g["N"] > 1:
        parts.append((g["n"] * elem, f"examples every {g['n'] * elem} B"))
    worst = min(parts, key=lambda p: p[0] & -p[0]) if parts else (0, "")
    align = worst[0] & -worst[0]
    how = f"{load_bytes * 8}-bit pieces" if plan["width"] else "element by element"
    return f"{worst[1]} ({align}-byte aligned): {how}"


def cuda_rows(
    archs: tuple[str, ...] = ARCHS,
    shapes: list | None = None,
    dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32"),
    ops: tuple[str, ...] = OPS,
    source: Path | str = SOURCE,
) -> list[dict]:
    """One row per kernel x dtype x layout x shape x arch (x op: the Op template argument), for the launches
    the extension makes on `shapes` (default: benchmark_shapes(); items are {"model", "shape", "layout"} or
    (model, shape, layout) tuples, layout one of LAYOUTS). A shape whose reduction is split also gets a row
    for finalize_kernel (streamed False: it reads the float workspace, not the tensors).

    Row fields: backend, kernel, config, dtype, op, layout, kind (channels_first / channels_last), shape,
    model, arch, regs, spills (bytes stored + loaded), stack, shared_bytes (static + dynamic per block),
    threads, occupancy_warps (resident per SM), global_loads (LDG instructions in the instantiation's SASS),
    global_loads_by_bits ({access bits: count}), global_loads_by_opcode ({"LDG.E.64": count, ...}),
    vector_loads_128b, load_bits (width of the streamed loads on this shape), store_bits (of dz / dx, None
    for channel_stats), allowed_bits (the widest the rows' alignment allows), reason (why load_bits < 128,
    if so), streamed."""
    source = Path(source)
    flags = compile_flags()
    specs = [_shape_spec(s) for s in (benchmark_shapes() if shapes is None else shapes)]
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtype {d!r}: expected one of {tuple(DTYPES)}")
    with ThreadPoolExecutor(max_workers=max(1, min(len(archs) + 1, os.cpu_count() or 1))) as pool:
        probe = pool.submit(_probe_binary, source, flags)
        compiled = {a: pool.submit(compile_arch, a, source, flags) for a in archs}
        probe.result()
        kernels = {a: f.result() for a, f in compiled.items()}

    queries, index = [], []
    for spec in specs:
        g = geometry(spec["shape"], spec["layout"])
        for dtype in dtypes:
            for op in ops:
                queries.append((g, DTYPES[dtype], op != "channel"))
                index.append((spec, g, dtype, op))
    plans = launch_plans(queries, source, flags)

    rows = []
    for arch in archs:
        for (spec, g, dtype, op), plan in zip(index, plans, strict=True):
            elem = DTYPES[dtype]
            V = 16 // elem
            na = 2 if op == "batchnorm" else 1
            last = g["channels_last"]
            if last:
                key = ("channels_last_kernel", dtype, op, None)
                threads = plan["cx"] * plan["py"]
                dyn = threads * V * na * ACC_BYTES[dtype]
                config = f"cx={plan['cx']} py={plan['py']} threads={threads} dyn_smem={dyn}"
                full_packs = g["C"] >= V
            else:
                key = ("channels_first_kernel", dtype, op, plan["group"])
                threads, dyn = 256, 0
                config = f"G={plan['group']} threads=256 chunk={plan['chunk']}"
                full_packs = g["P"] >= V
            config += f" grid={plan['blocks']}x{plan['splits']}"
            k = kernels[arch][key]
            load_bytes = plan["width"] if plan["width"] and full_packs else elem
            base = {
                "backend": "cuda",
                "dtype": dtype,
                "op": op,
                "layout": spec["layout"],
                "kind": "channels_last" if last else "channels_first",
                "shape": list(spec["shape"]),
                "model": spec["model"],
                "arch": arch,
            }
            rows.append(
                {
                    **base,
                    "kernel": kernel_name(key),
                    "config": config,
                    **_kernel_fields(arch, k, threads, k["smem"] + dyn),
                    "load_bits": load_bytes * 8,
                    "store_bits": load_bytes * 8 if op != "channel" else None,  # same pieces as the loads
                    "allowed_bits": allowed_bytes(g, elem) * 8,
                    "reason": _reason(g, dtype, plan, load_bytes, full_packs),
                    "streamed": True,
                }
            )
            if plan["splits"] > 1:
                acc = "fp64" if dtype == "fp64" else "fp32"
                fkey = ("finalize_kernel", acc, op, None)
                fk = kernels[arch][fkey]
                outputs = g["N"] * g["C"]
                rows.append(
                    {
                        **base,
                        "kernel": kernel_name(fkey),
                        "config": f"threads=256 grid={-(-outputs // 256)} splits={plan['splits']}",
                        **_kernel_fields(arch, fk, 256, fk["smem"]),
                        "load_bits": ACC_BYTES[dtype] * 8,
                        "store_bits": None,
                        "allowed_bits": ACC_BYTES[dtype] * 8,
                        "reason": "reads the split workspace (accumulator dtype), not the streamed tensors",
                        "streamed": False,
                    }
                )
    return rows


def _kernel_fields(arch: str, k: dict, threads: int, smem: int) -> dict:
    by_bits = Counter()
    for op, n in k["loads"].items():
        by_bits[access_bits(op)] += n
    return {
        "regs": k["regs"],
        "spills": k["spills"],
        "stack": k["stack"],
        "shared_bytes": smem,
        "threads": threads,
        "occupancy_warps": occupancy_warps(arch, k["regs"], threads, smem),
        "global_loads": sum(k["loads"].values()),
        "global_loads_by_bits": dict(sorted(by_bits.items())),
        "global_loads_by_opcode": dict(sorted(k["loads"].items())),
        "vector_loads_128b": sum(n for op, n in k["loads"].items() if access_bits(op) == 128),
    }


def _where(r: dict) -> str:
    shape = "x".join(map(str, r["shape"]))
    return f"{r['arch']} {r['kernel']} {r['layout']} [{shape}]"


def cuda_misses(rows: list[dict]) -> list[str]:
    """The targets `rows` miss, one line each (empty: all met): no spills in any kernel; 128-bit loads of the
    streamed tensors wherever the rows' alignment allows 128 bits; elsewhere loads as wide as it allows; and
    the width a shape uses present among the instantiation's SASS loads."""
    out: list[str] = []
    seen: set[str] = set()

    def add(msg: str) -> None:
        if msg not in seen:
            seen.add(msg)
            out.append(msg)

    for r in rows:
        if r["spills"] > 0:
            add(f"{r['arch']} {r['kernel']}: spills {r['spills']} bytes (stack frame {r['stack']} bytes)")
        if not r.get("streamed", True):
            continue
        if r["load_bits"] < r["allowed_bits"]:
            target = "128" if r["allowed_bits"] == 128 else f"{r['allowed_bits']} (the rows' alignment)"
            add(f"{_where(r)} {r['dtype']}: {r['load_bits']}-bit loads, {target} bits possible ({r['reason']})")
        if r["load_bits"] not in r["global_loads_by_bits"]:
            add(f"{r['arch']} {r['kernel']}: no {r['load_bits']}-bit global loads in its SASS ({_where(r)} needs them)")
    return out


def _summary(rows: list[dict]) -> str:
    lines = []
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    per_kernel: dict[str, dict[str, tuple]] = {}
    for r in rows:
        occ = per_kernel.setdefault(r["kernel"], {}).get(r["arch"])
        o = r["occupancy_warps"]
        lo, hi = (min(occ[2], o), max(occ[3], o)) if occ else (o, o)
        per_kernel[r["kernel"]][r["arch"]] = (r["regs"], r["spills"], lo, hi)
    width = max(len(k) for k in per_kernel)
    lines.append("kernel x arch: regs / spill bytes / resident warps per SM (range over the shapes' block sizes)")
    lines.append(f"{'kernel':{width}}  " + "  ".join(f"{a:>14}" for a in archs))
    for k in sorted(per_kernel):
        cells = []
        for a in archs:
            v = per_kernel[k].get(a)
            cells.append(f"{v[0]}/{v[1]}/{v[2] if v[2] == v[3] else f'{v[2]}-{v[3]}'}" if v else "-")
        lines.append(f"{k:{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    lines.append("")
    lines.append("shape -> load bits (streamed tensors; the same on every arch and op)")
    table: dict[tuple, dict[str, tuple]] = {}
    for r in rows:
        if r["streamed"] and r["arch"] == archs[0]:
            key = (r["model"], "x".join(map(str, r["shape"])), r["layout"])
            table.setdefault(key, {})[r["dtype"]] = (r["load_bits"], r["reason"])
    dts = list(dict.fromkeys(r["dtype"] for r in rows))
    for (name, shape, layout), by in table.items():
        cells = "  ".join(f"{d} {by[d][0]:>3}" for d in dts if d in by)
        why = "; ".join(sorted({f"{d}: {by[d][1]}" for d in dts if d in by and by[d][1]}))
        lines.append(f"  {name:38} {layout:5} {shape:18} {cells}" + (f"   ({why})" if why else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows to this file (JSON lines)")
    ap.add_argument("--source", default=str(SOURCE), help="the .cu file (default: the extension's)")
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = cuda_rows(archs=tuple(args.archs.split(",")), source=args.source)
    elapsed = time.perf_counter() - t0
    print(_summary(rows))
    misses = cuda_misses(rows)
    print(f"\n{len(rows)} rows in {elapsed:.1f} s; {len(misses)} target misses")
    for m in misses:
        print(f"  MISS {m}")
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
