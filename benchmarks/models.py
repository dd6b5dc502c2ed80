"""Models of the benchmark suite: torchvision nets, a CIFAR-style ResNet-56 (the paper's setting) and,
when ``transformers`` is installed, a Llama-style decoder with random weights."""

from __future__ import annotations

import torch
from torch import nn

from .common import import_torchvision


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2: 20, 56, 110), 16/32/64 channels, 32x32 inputs."""

    def __init__(self, depth: int = 56, classes: int = 100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def llama(hidden: int, layers: int, vocab: int = 32000):
    """A Llama-style decoder with random weights (needs ``transformers``; ``None`` without it)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=int(hidden * 8 / 3 / 64) * 64, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 128), vocab_size=vocab,
        max_position_embeddings=4096,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def build(name: str) -> nn.Module | None:
    """A model by suite name, random weights, eval mode."""
    torch.manual_seed(0)
    if name == "resnet56":
        model = CifarResNet(56)
    elif name.startswith("llama"):
        model = llama(*(int(v) for v in name.split("-")[1:])) if "-" in name else llama(2048, 16)
    else:
        model = getattr(import_torchvision().models, name)()
    return None if model is None else model.eval()
