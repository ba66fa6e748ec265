"""Convolutional networks: the Model-Zoos-style 2-D CNN and the MNIST-1D 1-D CNN, optionally with BatchNorm.

`batchnorm = true` puts a BatchNorm after every convolution (conv -> BN -> act
-> pool; the conv then has no bias, which BN's shift makes redundant), with
`bn_momentum` / `bn_eps` as torch's `momentum` / `eps`. Without it the
configs are exactly what they were before BatchNorm existed here (same
layout_id).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import UserError
from wsl.functional import activation as _act  # one activation table for modules and the batched forward
from zoo.architectures.common import BN_DEFAULTS, apply_init, take as _take


def _norms(kind, channels: list[int], bn: bool, momentum: float, eps: float) -> nn.ModuleList | None:
    return nn.ModuleList(kind(c, eps=eps, momentum=momentum) for c in channels) if bn else None


class CNN2d(nn.Module):
    """Model-Zoos-style small CNN: [Conv -> (BN) -> act -> pool] per channel entry, then a hidden Linear and the head.

    Params: convs.{i}.weight/bias (no bias with BN), norms.{i}.weight/bias (+ buffers running_mean,
    running_var, num_batches_tracked) with BN, fc.weight/bias (when hidden > 0), head.weight/bias.
    """

    def __init__(self, in_channels: int, image_size: int, out_features: int, channels: list[int], kernel: int,
                 pooling: str, hidden: int, activation: str, dropout: float, batchnorm: bool = False,
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        if pooling not in ("max", "avg", "none"):
            raise UserError(f"cnn2d pooling {pooling!r}", "use 'max', 'avg' or 'none'")
        chans = [in_channels] + list(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, padding=kernel // 2, bias=not batchnorm)
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.norms = _norms(nn.BatchNorm2d, list(channels), batchnorm, bn_momentum, bn_eps)
        self.pooling = pooling
        self.act = _act(activation)
        self.dropout = float(dropout)
        size = image_size
        for _ in channels:
            if pooling != "none" and size >= 2:
                size //= 2
        flat = chans[-1] * size * size
        self.fc = nn.Linear(flat, hidden) if hidden > 0 else None
        self.head = nn.Linear(hidden if hidden > 0 else flat, out_features)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "none" or x.shape[-1] < 2:
            return x
        return F.max_pool2d(x, 2) if self.pooling == "max" else F.avg_pool2d(x, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self._pool(self.act(x))
        x = F.dropout(x.flatten(1), self.dropout, self.training)
        if self.fc is not None:
            x = F.dropout(self.act(self.fc(x)), self.dropout, self.training)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_cnn2d(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 8, "depth": 2, "channels": None, "kernel": 3, "pooling": "max", "hidden": None,
                       "activation": "relu", "dropout": 0.0, "init": "default", "in_channels": 1},
              ("image_size", "out_features"), optional=BN_DEFAULTS)
    channels = c["channels"] or [c["width"] * (2 ** i) for i in range(c["depth"])]
    hidden = 2 * c["width"] if c["hidden"] is None else int(c["hidden"])
    c["channels"], c["hidden"] = list(channels), hidden
    m = CNN2d(c["in_channels"], c["image_size"], c["out_features"], channels, c["kernel"], c["pooling"], hidden,
              c["activation"], c["dropout"], c.get("batchnorm", False), c.get("bn_momentum", 0.1), c.get("bn_eps", 1e-5))
    apply_init(m, c["init"])
    m.arch_config = c
    return m


class CNN1d(nn.Module):
    """1-D CNN in the style of the MNIST-1D paper's: strided convs (-> BN) -> act, then a Linear head.

    Params: convs.{i}.weight/bias (no bias with BN), norms.{i}.* with BN, head.weight/bias.
    """

    def __init__(self, in_channels: int, length: int, out_features: int, width: int, depth: int, kernel: int,
                 stride: int, activation: str, dropout: float, batchnorm: bool = False, bn_momentum: float = 0.1,
                 bn_eps: float = 1e-5):
        super().__init__()
        chans = [in_channels] + [width] * depth
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, stride=stride, padding=1, bias=not batchnorm)
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.norms = _norms(nn.BatchNorm1d, [width] * depth, batchnorm, bn_momentum, bn_eps)
        size = length
        for _ in range(depth):
            size = (size + 2 - kernel) // stride + 1
        if size < 1:
            raise UserError(f"cnn1d with depth={depth}, kernel={kernel}, stride={stride} shrinks length {length} to nothing",
                            "use fewer layers, a smaller kernel or stride 1")
        self.act = _act(activation)
        self.dropout = float(dropout)
        self.head = nn.Linear(width * size, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.act(x)
        return F.dropout(x.flatten(1), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_cnn1d(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 25, "depth": 3, "kernel": 5, "stride": 2, "activation": "relu", "dropout": 0.0,
                       "init": "default", "in_channels": 1}, ("length", "out_features"), optional=BN_DEFAULTS)
    m = CNN1d(c["in_channels"], c["length"], c["out_features"], c["width"], c["depth"], c["kernel"], c["stride"],
              c["activation"], c["dropout"], c.get("batchnorm", False), c.get("bn_momentum", 0.1), c.get("bn_eps", 1e-5))
    apply_init(m, c["init"])
    m.arch_config = c
    return m
