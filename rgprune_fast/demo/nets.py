"""The demo's two small networks with BatchNorm, shaped like the paper's (CIFAR-style ResNet, VGG).

Both take ``[N, 1, H, W]`` digits of any size >= 8x8 and have three stages of width ``w``, ``2w``,
``4w``. Their scored units (``rg.score``'s default) are the BatchNorm outputs.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, ``out += identity`` and in-place ReLU included."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet-8: 3x3 stem, one basic block per stage (strides 1, 2, 2), global pooling, linear head."""

    def __init__(self, width: int = 8, classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGG(nn.Module):
    """A VGG-6 with BatchNorm: two 3x3 Conv-BN-ReLU per stage, max-pooling between stages."""

    def __init__(self, width: int = 8, classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w),
            *_conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w),
            *_conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


ARCHITECTURES = {"resnet": ResNet, "vgg": VGG}


def build(arch: str, width: int, classes: int, in_channels: int = 1) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown demo architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](width, classes, in_channels)
