"""``MODEL`` on the command line: a saved model file, a torchvision classification model name, or a
timm model (``timm:NAME``, or a bare name when timm is installed and torchvision has no such model).

Named models get random weights drawn after ``torch.manual_seed(seed)`` (so ``score`` and ``prune``
see the same network) unless ``--weights FILE`` gives a state dict.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._torchvision import import_torchvision
from ..optional import require
from .errors import CliError


@dataclass
class LoadedModel:
    model: nn.Module
    description: str
    built_by_name: bool


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or Path(spec).suffix in (".pt", ".pth", ".bin", ".ckpt")


def _load_file(path: Path) -> nn.Module:
    with contextlib.suppress(ImportError):  # a pickled torchvision model imports torchvision: op schemas first
        import_torchvision()
    try:
        # A whole pickled model: only load files you trust (pickle runs code).
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CliError(f"cannot load model file {str(path)!r}: {e}") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise CliError(
            f"{str(path)!r} holds a state dict, not a model; pass the architecture's name as MODEL and "
            f"this file as --weights (e.g. `rgprune-fast score resnet18 DATA --weights {path}`)"
        )
    raise CliError(f"{str(path)!r} holds a {type(obj).__name__}, not a torch.nn.Module saved with torch.save(model)")


def _state_dict(path: Path) -> dict:
    if not path.is_file():
        raise CliError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CliError(f"cannot read weights file {str(path)!r} as a state dict: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CliError(f"weights file {str(path)!r} is not a state dict (a dict of tensors)")
    return obj


def torchvision_names() -> list[str]:
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _build_named(spec: str, num_classes: int) -> tuple[nn.Module, str]:
    if spec.startswith("timm:"):
        timm = require("timm", purpose=f"model {spec!r}")
        name = spec[len("timm:") :]
        if name not in timm.list_models():
            raise CliError(f"unknown timm model {name!r}")
        return timm.create_model(name, pretrained=False, num_classes=num_classes), f"timm {name}"
    tv = import_torchvision()
    if spec in tv.models.list_models():
        return tv.models.get_model(spec, weights=None, num_classes=num_classes), f"torchvision {spec}"
    if importlib.util.find_spec("timm") is not None:
        timm = require("timm")
        if spec in timm.list_models():
            return timm.create_model(spec, pretrained=False, num_classes=num_classes), f"timm {spec}"
    close = difflib.get_close_matches(spec, torchvision_names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CliError(
        f"unknown model {spec!r}: not a model file, not a torchvision classification model{hint} "
        "(`rgprune-fast models` lists them; timm models: timm:NAME with timm installed)"
    )


def load_model(spec: str, *, weights: str | None = None, num_classes: int = 1000, seed: int = 0) -> LoadedModel:
    """The model ``spec`` names, on CPU in eval mode."""
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise CliError("--weights is for model names; a saved model file already holds its weights")
        model, description, by_name = _load_file(path), f"model file {spec}", False
    elif _looks_like_path(spec):
        raise CliError(f"model file {spec!r} does not exist")
    else:
        torch.manual_seed(seed)
        model, description = _build_named(spec, num_classes)
        by_name = True
        if weights is not None:
            try:
                model.load_state_dict(_state_dict(Path(weights)))
            except RuntimeError as e:
                first = str(e).strip().splitlines()
                raise CliError(f"weights {weights!r} do not fit {description}: {' '.join(first[:3])}") from None
            description += f" with weights {weights}"
        else:
            description += f" (random weights, seed {seed}, {num_classes} classes)"
    return LoadedModel(model.eval(), description, by_name)


def input_channels(model: nn.Module) -> int | None:
    """Channels of the first convolution (what an image must have), ``None`` without one."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None
