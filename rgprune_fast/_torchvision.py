"""Import torchvision on any torch build.

The registry's torchvision is a CUDA build; on CPU torch its ``import`` fails with "operator
torchvision::nms does not exist". Registering the two op schemas it looks up at
import time (``torchvision::nms``, ``torchvision::qnms``) is enough for models, datasets and transforms.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

_TV_LIB = None  # the Library that owns the registered schemas; kept alive for the process


def import_torchvision() -> ModuleType:
    """``import torchvision``, registering the missing op schemas first when the build needs them.

    Raises ``ImportError`` (with the pip command) when torchvision is not installed.
    """
    global _TV_LIB
    try:
        import torchvision
    except ModuleNotFoundError as e:
        raise ImportError(
            "torchvision is not installed; install it next to your torch, e.g. "
            "`pip install -c .ci/constraints.txt torchvision`"
        ) from e
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        _TV_LIB = torch.library.Library("torchvision", "DEF")
        _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision
