"""Raw reduction kernels: achieved GB/s of every backend's three ops vs the device's copy bandwidth.

Bytes moved: ``channel_stats`` reads x and dx; ``batchnorm_stats`` and ``relu_stats`` read two
tensors and write one. The copy bandwidth is ``dst.copy_(src)`` on a tensor of the same size
(read + write), measured in the same run.
"""

from __future__ import annotations

import torch

from rgprune_fast.backends import load_backend, why_unavailable

from .common import interleaved_medians

# (shape, channel dim, layout): [256, 256, 56, 56] conv activations and [8, 2048, 4096] LLM hidden states
GPU_SHAPES = [
    ((256, 256, 56, 56), 1, "nchw"),
    ((256, 256, 56, 56), 1, "channels_last"),
    ((8, 2048, 4096), 2, "tokens"),
    ((64, 256, 28, 28), 1, "nchw"),
    ((64, 256, 28, 28), 1, "channels_last"),
    ((16, 64, 112, 112), 1, "channels_last"),
    ((4, 512, 4096), 2, "tokens"),
]
QUICK_SHAPES = [((8, 32, 16, 16), 1, "nchw"), ((8, 32, 16, 16), 1, "channels_last"), ((2, 64, 128), 2, "tokens")]
LARGE_BYTES = 512 * 2**20  # kernels moving at least this much count for the >= 85 % target


def _tensor(shape, layout, dtype, device):
    x = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _timed_calls(backends, x, dx, cdim, device) -> dict:
    """The copy and every backend's ops on ``x`` / ``dx`` (as closures for interleaved timing)."""
    r = torch.relu(x)
    vec = torch.rand(x.shape[cdim], device=device) + 0.5
    copy_dst = torch.empty_like(x)
    fns = {"copy": lambda: copy_dst.copy_(x)}
    for name in backends:
        be = load_backend(name, device)
        fns[f"{name}:channel_stats"] = lambda be=be: be.channel_stats(x, dx, cdim)
        fns[f"{name}:relu_stats"] = lambda be=be: be.relu_stats(r, dx, None, cdim, True)
        if cdim == 1:
            fns[f"{name}:batchnorm_stats"] = lambda be=be: be.batchnorm_stats(x, dx, vec, vec, vec, True)
    return fns


def kernel_rows(device: torch.device, quick: bool, meta: dict, repeats: int = 5) -> list[dict]:
    backends = [b for b in ("triton", "cuda", "cpp", "torch") if why_unavailable(b, device) is None]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is no performance path
    rows = []
    for shape, cdim, layout in QUICK_SHAPES if quick else GPU_SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            x = _tensor(shape, layout, dtype, device)
            dx = torch.randn_like(x)
            t = interleaved_medians(_timed_calls(backends, x, dx, cdim, device), repeats, 2, device)
            size = x.numel() * x.element_size()
            copy_gbps = 2 * size / t["copy"] / 1e9
            for key, seconds in t.items():
                if key == "copy":
                    continue
                backend, kernel = key.split(":")
                moved = (2 if kernel == "channel_stats" else 3) * size
                rows.append({
                    "config": f"kernel:{kernel}:{'x'.join(map(str, shape))}:{str(dtype)[6:]}:{layout}",
                    "kind": "kernel", "kernel": kernel, "shape": list(shape), "bytes": moved,
                    "dtype": str(dtype)[6:], "layout": layout, "backend": backend,
                    "ms": seconds * 1e3, "gbps": moved / seconds / 1e9, "copy_gbps": copy_gbps,
                    "large": moved >= LARGE_BYTES, **meta,
                })  # fmt: skip
            print(f"  kernels {shape} {dtype} {layout}: copy {copy_gbps:.0f} GB/s; "
                  + ", ".join(f"{r['backend']}:{r['kernel']} {r['gbps']:.0f}" for r in rows[-len(t) + 1:]),
                  flush=True)  # fmt: skip
            del x, dx
    return rows
