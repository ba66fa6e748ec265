"""Dense networks: the MLP and SIREN (an implicit neural representation)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wsl.functional import activation as _act  # one activation table for modules and the batched forward
from zoo.architectures.common import apply_init, take as _take


class MLP(nn.Module):
    """Flatten -> [Linear -> act -> dropout] x depth -> Linear. Params: layers.{i}.weight/bias."""

    def __init__(self, in_features: int, out_features: int, width: int, depth: int, activation: str, dropout: float):
        super().__init__()
        dims = [in_features] + [width] * depth + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = _act(activation)
        self.dropout = float(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden layer (the representation CKA compares)."""
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = F.dropout(self.act(layer(x)), self.dropout, self.training)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.features(x))


def build_mlp(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 32, "depth": 2, "activation": "relu", "dropout": 0.0, "init": "default"},
              ("in_features", "out_features"))
    m = MLP(c["in_features"], c["out_features"], c["width"], c["depth"], c["activation"], c["dropout"])
    apply_init(m, c["init"])
    m.arch_config = c
    return m


class Sine(nn.Module):
    def __init__(self, w0: float):
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


class Siren(nn.Module):
    """INR / SIREN MLP (Sitzmann et al. 2020): sin(w0 * Wx + b) layers with their init, linear output.

    Params: layers.{i}.weight/bias.
    """

    def __init__(self, in_features: int, out_features: int, width: int, depth: int, w0: float):
        super().__init__()
        dims = [in_features] + [width] * depth + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.w0 = float(w0)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                bound = 1.0 / layer.in_features if i == 0 else math.sqrt(6.0 / layer.in_features) / self.w0
                layer.weight.uniform_(-bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.sin(self.w0 * layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.features(x))


def build_siren(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 32, "depth": 3, "w0": 30.0}, ("in_features", "out_features"))
    m = Siren(c["in_features"], c["out_features"], c["width"], c["depth"], c["w0"])
    m.arch_config = c
    return m
