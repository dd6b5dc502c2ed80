import os

import torch

# Without a GPU, the Triton kernels are tested under the Triton interpreter; it must be switched on
# before any kernel is defined (i.e. before rgprune_fast.backends.triton's ops are imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import matrix  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=matrix.params())
def backend(request) -> matrix.Case:
    """Every (backend, device) pair of the matrix (tests/matrix.py)."""
    return matrix.load_case(request.param)
