"""The test model zoo: small nets plus torchvision models at 32x32, with non-trivial BN statistics."""

from __future__ import annotations

import torch
from torch import nn

from rgprune_fast._torchvision import import_torchvision


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def conv_bn_relu(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )


def vgg_no_bn(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(inplace=True),
        nn.Linear(32, classes),
    )


def mlp(classes: int = 5) -> nn.Module:
    """[N, C] MLP: a ReLU-fed Linear, a GELU-fed Linear (generic tap) and the head."""
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, classes))


class TokenMLP(nn.Module):
    """[N, T, C] model: per-token MLP with a LayerNorm; output [N, T, classes]."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.up = nn.Linear(6, 16)
        self.act = nn.ReLU(inplace=True)
        self.mix = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act(self.up(x))
        h = self.norm(self.mix(h) + h)
        return self.head(h)


def torchvision_model(name: str, classes: int = 10) -> nn.Module:
    tv = import_torchvision()
    return getattr(tv.models, name)(num_classes=classes)


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    builders = {"conv_bn_relu": conv_bn_relu, "vgg_no_bn": vgg_no_bn, "mlp": mlp, "token_mlp": TokenMLP}
    model = builders[name]() if name in builders else torchvision_model(name)
    return randomize(model, seed).eval()


def batches(name: str, sizes=(3, 2), seed: int = 0, channels_last: bool = False):
    """Batches ``(inputs, targets)`` of different sizes fitting model ``name``."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for n in sizes:
        if name == "mlp":
            x, t = torch.randn(n, 10, generator=g), torch.randint(0, 5, (n,), generator=g)
        elif name == "token_mlp":
            x, t = torch.randn(n, 4, 6, generator=g), torch.randint(0, 7, (n, 4), generator=g)
        else:
            size = 16 if name in ("conv_bn_relu", "vgg_no_bn") else 32
            classes = 5 if name in ("conv_bn_relu", "vgg_no_bn") else 10
            x = torch.randn(n, 3, size, size, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t = torch.randint(0, classes, (n,), generator=g)
        out.append((x, t))
    return out
