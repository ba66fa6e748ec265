"""A test-local ResNet-18 with torchvision's structure and parameter names, for CI machines without torchvision.

Written from the architecture's description (He et al. 2016, ImageNet variant): conv1 7x7 stride 2 ->
bn1 -> relu -> maxpool 3x3 stride 2 -> layer1..layer4 of two BasicBlocks (conv1/bn1/relu/conv2/bn2,
downsample.0 = conv1x1, downsample.1 = BN where the stride or width changes) -> avgpool -> fc. Its
state_dict keys and shapes equal torchvision.models.resnet18's (`widths` scales the channels for speed;
the default is ResNet-18's).
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
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
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, widths: tuple = (64, 128, 256, 512), in_channels: int = 3):
        super().__init__()
        w = list(widths)
        self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = w[0]
        for i, cout in enumerate(w):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> ResNet18:
    """torchvision.models.resnet18's structure; `width` is the first stage's channels (64 in ResNet-18)."""
    return ResNet18(num_classes, tuple(width * 2 ** i for i in range(4)), in_channels)


class TinyBNNet(nn.Module):
    """A user's own small class with BatchNorm (what a spec names with architecture.path)."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 16, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(nn.functional.max_pool2d(h, 2).flatten(1))


def not_a_module(**kw):
    return {"weights": 1}
