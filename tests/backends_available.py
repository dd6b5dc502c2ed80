"""Which reduction backends the CPU test matrix runs (each must pass the same tests)."""

import torch

from rgprune_fast.backends import why_unavailable

CPU_BACKENDS = [name for name in ("torch", "cpp", "triton") if why_unavailable(name, torch.device("cpu")) is None]
