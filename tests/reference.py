"""The float64 brute force of the three reductions, PyTorch's own in-dtype yardstick, and the one
(dtype -> tolerance) table every kernel test uses.

A backend's ``s`` must be within the table's relative error of the float64 value: 1e-12 for float64,
1e-5 for float32, and for bfloat16 / float16 within twice the error PyTorch itself makes computing the
same quantity in that dtype (plus 1e-6).
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}  # relative; low precision: 2x PyTorch's own


def positions(t: torch.Tensor, channel_dim: int) -> list[int]:
    """Every dim but the example (0) and the channel dim: what ``s`` sums over."""
    return [d for d in range(1, t.dim()) if d != channel_dim % t.dim()]


def _reduce(prod: torch.Tensor, channel_dim: int) -> torch.Tensor:
    dims = positions(prod, channel_dim)
    return prod.sum(dims) if dims else prod


def channel_stats(x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``s[n, c] = sum_p x * dx`` in float64."""
    return _reduce(x.double().cpu() * dx.double().cpu(), channel_dim)


def batchnorm_stats(z, dy, mean, scale, shift) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, dz)`` of an eval BatchNorm ``x = (z - mean) * scale + shift`` in float64."""
    view = [1, -1] + [1] * (z.dim() - 2)
    mean, scale, shift = (v.double().cpu().view(view) for v in (mean, scale, shift))
    x = (z.double().cpu() - mean) * scale + shift
    return channel_stats(x, dy, 1), dy.double().cpu() * scale


def relu_stats(r, dr, upper, channel_dim) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, s)`` of ReLU / ReLU6 from its output ``r``: ``dx`` exact in ``dr``'s dtype, ``s`` in float64."""
    r, dr = r.cpu(), dr.cpu()
    keep = (r > 0) if upper is None else (r > 0) & (r < upper)
    dx = torch.where(keep, dr, torch.zeros((), dtype=dr.dtype))
    return dx, channel_stats(r, dx, channel_dim)


def native_channel_stats(x: torch.Tensor, dx: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """What plain PyTorch computes in the inputs' own dtype: the yardstick for bfloat16 / float16."""
    return _reduce(x.cpu() * dx.cpu(), channel_dim)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of a whole vector / matrix: ||a - b|| / ||b||."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float((a - b).norm())


def assert_stats_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, native: torch.Tensor | None = None,
                       magnitude: torch.Tensor | None = None) -> None:  # fmt: skip
    """``ours`` against the float64 ``ref`` under the tolerance table. ``native``: PyTorch's own result in
    ``dtype`` (required for low precision). ``magnitude``: ``sum_p |x * dx|``, for float sums that cancel
    to almost nothing (random data, few positions), where rounding scales with it rather than with s."""
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    err = rel_err(ours, ref)
    if dtype in LOW_PRECISION:
        yardstick = rel_err(native, ref)
        assert err <= 2 * yardstick + 1e-6, (err, yardstick)
        return
    tol = TOLERANCE[dtype]
    if magnitude is not None and err > tol:
        err = min(err, float((ours.double().cpu() - ref).norm() / magnitude.double().norm()))
    assert err <= tol, err
