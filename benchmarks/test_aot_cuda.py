"""benchmarks/aot_cuda.py: its pure parts (layouts, targets, occupancy, parsing) always; the compile of the CUDA
kernels (one arch, a few shapes) where nvcc and cuobjdump are found."""

import pytest

from . import aot_cuda as aot


def test_geometry_follows_the_extensions_plans():
    g = aot.geometry((128, 256, 14, 14), "nchw")
    assert (g["channels_last"], g["N"], g["C"], g["P"], g["n"], g["c"]) == (False, 128, 256, 196, 256 * 196, 196)
    g = aot.geometry((128, 256, 14, 14), "channels_last")
    assert (g["channels_last"], g["P"], g["n"], g["p"]) == (True, 196, 196 * 256, 256)
    g = aot.geometry((4, 2048, 4096), "tokens")
    assert (g["channels_last"], g["N"], g["C"], g["P"], g["p"]) == (True, 4, 4096, 2048, 4096)
    g = aot.geometry((64, 4096), "tokens")  # P = 1: channels-last, the position stride unused
    assert (g["channels_last"], g["P"], g["n"]) == (True, 1, 4096)
    assert not aot.geometry((8, 1, 7, 7), "channels_last")["channels_last"]  # C = 1: channels-first


def test_allowed_widths():
    def allowed(shape, layout, dtype):
        return aot.allowed_bytes(aot.geometry(shape, layout), aot.DTYPES[dtype])

    assert allowed((128, 256, 56, 56), "nchw", "bf16") == 16
    assert allowed((128, 256, 14, 14), "nchw", "bf16") == 8  # rows of 392 bytes
    assert allowed((128, 256, 7, 7), "nchw", "bf16") == 2  # 98 bytes
    assert allowed((128, 256, 7, 7), "nchw", "fp32") == 4  # 196 bytes
    assert allowed((128, 256, 7, 7), "channels_last", "bf16") == 16
    assert allowed((64, 4096), "tokens", "bf16") == 16
    assert allowed((8, 3, 7, 7), "channels_last", "fp32") == 4


def test_occupancy():
    assert aot.occupancy_warps("sm_80", 32, 256, 0) == 64
    assert aot.occupancy_warps("sm_80", 48, 256, 0) == 40  # 1536 registers per warp: 42 warps, 5 blocks
    assert aot.occupancy_warps("sm_86", 32, 256, 0) == 48
    assert aot.occupancy_warps("sm_90", 78, 256, 16384) == 24  # 2560 registers per warp: 25 warps, 3 blocks
    assert aot.occupancy_warps("sm_86", 32, 256, 40 * 1024) == 16  # shared memory: 2 blocks of 41 KB
    assert aot.occupancy_warps("sm_86", 32, 32, 0) == 16  # 16 blocks at most


def test_parsing():
    ns = "_ZN12rgprune_fast4cuda46_GLOBAL__N__0c795976_13_stats_cuda_cu_de263c3c"
    cf = ns + "21channels_first_kernelI13__nv_bfloat16NS1_11BatchNormOpELi32EEEvNS0_8GeometryET0_NS1_4PtrsIT_EElli"
    cl = ns + "20channels_last_kernelI6__halfNS1_6ReluOpILb1EEEEEvNS0_8GeometryET0_NS1_4PtrsIT_EEiillli"
    fin = ns + "15finalize_kernelINS1_6ReluOpILb0EEEdEEvlllbPKT0_S7_S7_PS5_"
    assert aot._kernel_key(cf) == ("channels_first_kernel", "bf16", "batchnorm", 32)
    assert aot._kernel_key(cl) == ("channels_last_kernel", "fp16", "relu6", None)
    assert aot._kernel_key(fin) == ("finalize_kernel", "fp64", "relu", None)
    ptxas = f"""ptxas info    : Compiling entry function '{cf}' for 'sm_90'
ptxas info    : Function properties for {cf}
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 32 bytes smem, 545 bytes cmem[0]"""
    info = aot._parse_ptxas(ptxas)[cf]
    assert (info["regs"], info["spill_stores"], info["spill_loads"], info["smem"]) == (48, 8, 4, 32)
    sass = f"""\t\tFunction : {cf}
        /*0b10*/                   LDG.E.U16 R19, [R16.64] ;
        /*1030*/              @!P0 LDG.E.64 R30, [R16.64+0x8] ;
        /*1050*/               @P0 LDG.E.128 R16, [R16.64] ;
        /*1060*/                   STG.E.128 [R2.64], R16 ;"""
    code = aot._parse_sass(sass)[cf]
    assert dict(code["loads"]) == {"LDG.E.U16": 1, "LDG.E.64": 1, "LDG.E.128": 1}
    assert dict(code["stores"]) == {"STG.E.128": 1}
    assert [aot.access_bits(o) for o in ("LDG.E", "LDG.E.64", "LDG.E.128", "LDG.E.U16", "LDG.E.CONSTANT")] == [
        32, 64, 128, 16, 32,
    ]  # fmt: skip


def _row(**kw):
    row = {"arch": "sm_90", "kernel": "k", "layout": "nchw", "shape": [2, 3, 4], "dtype": "bf16", "spills": 0,
           "stack": 0, "load_bits": 128, "allowed_bits": 128, "reason": "", "streamed": True,
           "global_loads_by_bits": {128: 2, 16: 4}}  # fmt: skip
    return {**row, **kw}


def test_misses():
    assert aot.cuda_misses([_row()]) == []
    assert len(aot.cuda_misses([_row(spills=8), _row(spills=8)])) == 1  # one line per kernel
    assert "128 bits possible" in aot.cuda_misses([_row(load_bits=16)])[0]
    assert "64 (the rows' alignment)" in aot.cuda_misses([_row(load_bits=16, allowed_bits=64)])[0]
    assert "no 64-bit global loads" in aot.cuda_misses([_row(load_bits=64, allowed_bits=64)])[0]
    assert aot.cuda_misses([_row(load_bits=32, allowed_bits=128, streamed=False, global_loads_by_bits={32: 1})]) == []


def _tools() -> str | None:
    try:
        aot._tool("nvcc", "NVCC"), aot._tool("cuobjdump", "CUOBJDUMP")
    except RuntimeError as e:
        return str(e)
    return None


@pytest.mark.skipif(_tools() is not None, reason=f"{_tools()}")
def test_compiled_rows_meet_the_targets():
    shapes = [
        ("resnet50", (128, 256, 14, 14), "nchw"),  # 8-byte rows in 16-bit types
        ("resnet50", (128, 512, 7, 7), "nchw"),  # 2-byte rows (bf16), 4-byte (fp32)
        ("resnet50", (128, 256, 56, 56), "channels_last"),
        ("llama-2-7b", (4, 2048, 11008), "tokens"),
        ("vgg19_bn", (64, 4096), "tokens"),
    ]
    rows = aot.cuda_rows(archs=("sm_90",), shapes=shapes)
    assert aot.cuda_misses(rows) == []
    streamed = [r for r in rows if r["streamed"]]
    assert len(streamed) == len(shapes) * 3 * len(aot.OPS)
    bits = {(tuple(r["shape"]), r["dtype"]): r["load_bits"] for r in streamed}
    assert bits[(128, 256, 14, 14), "bf16"] == 64 and bits[(128, 256, 14, 14), "fp32"] == 128
    assert bits[(128, 512, 7, 7), "bf16"] == 16 and bits[(128, 512, 7, 7), "fp32"] == 32
    assert all(bits[s[1], d] == 128 for s in shapes[2:] for d in ("bf16", "fp16", "fp32"))
    for r in streamed:
        assert r["spills"] == 0 and r["vector_loads_128b"] >= 2 and 64 in r["global_loads_by_bits"], r["kernel"]
