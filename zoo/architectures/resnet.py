"""Residual networks with BatchNorm: a CIFAR-style ResNet for images (`resnet`) and its 1-D twin (`resnet1d`).

    build({"name": "resnet", "in_channels": 3, "image_size": 32, "out_features": 10,
           "width": 64, "blocks": [2, 2, 2, 2]})          # ResNet-18's shape (11.2M parameters)

Structure (He et al. 2016, the CIFAR variant: 3x3 stem, stride 1, no max-pool):
stem conv 3x3 -> BN -> ReLU; stage s = 0..len(blocks)-1 of blocks[s] BasicBlocks
with width * 2**s channels, the first block of every stage after the first with
stride 2; global average pool; Linear head. A BasicBlock is conv3x3 -> BN ->
ReLU -> conv3x3 -> BN, plus the shortcut (identity, or conv1x1 -> BN when the
stride or width changes), then ReLU.

Parameter names follow torchvision's ResNet (conv1, bn1, layer{s+1}.{j}.conv1 /
bn1 / conv2 / bn2 / downsample.0 / downsample.1, fc), so code written against
torchvision checkpoints (and our alignment rule for residual streams) reads
these models as they are. `batchnorm = false` drops every BN and gives the
convolutions biases: a plain residual network, and the form `wsl.fold_batchnorm`
folds a BN ResNet into. Default init is torchvision's (Kaiming normal,
fan_out, on the convolutions; BN weight 1, bias 0); `init` overrides it.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import UserError
from zoo.architectures.common import apply_init, take as _take

_DIMS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d), 1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d)}


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU (BN replaced by nothing without batchnorm)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int, bn: bool, momentum: float, eps: float):
        super().__init__()
        conv, norm, _ = _DIMS[dims]

        def make_norm():
            return norm(cout, eps=eps, momentum=momentum) if bn else nn.Identity()

        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = make_norm()
        self.conv2 = conv(cout, cout, 3, stride=1, padding=1, bias=not bn)
        self.bn2 = make_norm()
        self.downsample = None
        if stride != 1 or cin != cout:
            layers = [conv(cin, cout, 1, stride=stride, bias=not bn)] + ([make_norm()] if bn else [])
            self.downsample = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Stem, stages of BasicBlocks, global average pool, Linear head (see the module docstring)."""

    def __init__(self, dims: int, in_channels: int, out_features: int, width: int, blocks: list[int], bn: bool,
                 momentum: float, eps: float):
        super().__init__()
        conv, norm, pool = _DIMS[dims]
        self.dims = dims
        self.conv1 = conv(in_channels, width, 3, stride=1, padding=1, bias=not bn)
        self.bn1 = norm(width, eps=eps, momentum=momentum) if bn else nn.Identity()
        cin = width
        for s, n in enumerate(blocks):
            cout = width * 2 ** s
            stage = [BasicBlock(dims, cin if j == 0 else cout, cout, 2 if (s > 0 and j == 0) else 1, bn, momentum, eps)
                     for j in range(n)]
            self.add_module(f"layer{s + 1}", nn.Sequential(*stage))
            cin = cout
        self.n_stages = len(blocks)
        self.pool = pool(1)
        self.fc = nn.Linear(cin, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads ([B, width * 2**(stages-1)])."""
        if self.dims == 1 and x.dim() == 2:
            x = x.unsqueeze(1)
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.n_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _torchvision_init(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def _check_blocks(name: str, blocks: Any) -> list[int]:
    if (not isinstance(blocks, (list, tuple)) or not blocks
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)):
        raise UserError(f"architecture {name!r} has blocks={blocks!r}",
                        "blocks must be a non-empty list of positive integers (blocks per stage, e.g. [2, 2, 2, 2])")
    return [int(b) for b in blocks]


_COMMON = {"width": 16, "blocks": [2, 2, 2, 2], "batchnorm": True, "bn_momentum": 0.1, "bn_eps": 1e-5,
           "init": "default", "in_channels": 1}


def _build(config: Mapping[str, Any], dims: int, size_key: str) -> nn.Module:
    c = _take(config, _COMMON, (size_key, "out_features"))
    c["blocks"] = _check_blocks(c["name"], c["blocks"])
    if not c["batchnorm"]:
        c.pop("bn_momentum", None)
        c.pop("bn_eps", None)
    m = ResNet(dims, c["in_channels"], c["out_features"], c["width"], c["blocks"], c["batchnorm"],
               c.get("bn_momentum", 0.1), c.get("bn_eps", 1e-5))
    if c["init"] == "default":
        _torchvision_init(m)
    else:
        apply_init(m, c["init"])
    m.arch_config = c
    return m


def build_resnet(config: Mapping[str, Any]) -> nn.Module:
    """2-D ResNet: needs in_channels, image_size (int, or [H, W]), out_features."""
    size = config.get("image_size")
    ok = (isinstance(size, int) and size >= 1) or (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size))
    if "image_size" in config and not ok:
        raise UserError(f"architecture 'resnet' has image_size={size!r}", "give an integer or [height, width]")
    return _build(config, 2, "image_size")


def build_resnet1d(config: Mapping[str, Any]) -> nn.Module:
    """1-D ResNet (MNIST-1D): needs in_channels, length, out_features."""
    return _build(config, 1, "length")
