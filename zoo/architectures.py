"""Architectures built from plain config dicts.

Every config is a dict with a "name" and the knobs of that family; `width` is
a parameter of every family (it is the "load" axis of phase diagrams). No
BatchNorm: it keeps running statistics that do not vmap cleanly and would make
a weight vector depend on more than its parameters.

    build({"name": "mlp", "in_features": 64, "out_features": 10, "width": 32, "depth": 2})

`config_for(dataset, {"name": "cnn2d", "width": 8})` fills in the input and
output sizes from a dataset. `REGISTRY` is exposed through the
`wsl.architectures` entry point so `ParamLayout.build_module()` finds it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import UserError
from wsl.data import Dataset
from wsl.functional import activation as _act  # one activation table for modules and the batched forward

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "normal")


def _take(config: Mapping[str, Any], defaults: Mapping[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    """Merge defaults, check required and unknown keys: configs are user input."""
    name = config.get("name")
    unknown = sorted(set(config) - set(defaults) - set(required) - {"name"})
    if unknown:
        allowed = sorted(set(defaults) | set(required))
        raise UserError(f"architecture {name!r} has unknown keys {unknown}", f"allowed keys: {', '.join(allowed)}")
    missing = [k for k in required if k not in config]
    if missing:
        raise UserError(f"architecture {name!r} is missing {missing}",
                        "give them, or build the config with zoo.architectures.config_for(dataset, ...)")
    out = {**defaults, **config}
    for key in ("width", "depth"):
        if key in out and (not isinstance(out[key], int) or out[key] < (1 if key == "width" else 0)):
            raise UserError(f"architecture {name!r} has {key}={out[key]!r}", f"{key} must be a positive integer")
    if "dropout" in out and not (0.0 <= float(out["dropout"]) < 1.0):
        raise UserError(f"architecture {name!r} has dropout={out['dropout']!r}", "dropout must be in [0, 1)")
    if out.get("init", "default") not in INITS:
        raise UserError(f"architecture {name!r} has init={out['init']!r}", f"use one of: {', '.join(INITS)}")
    return out


def apply_init(module: nn.Module, init: str) -> None:
    """Re-initialise weight matrices / kernels; biases to zero (except 'default')."""
    if init == "default":
        return
    fn = {
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
        "normal": lambda w: nn.init.normal_(w, std=0.02),
    }[init]
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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


class CNN2d(nn.Module):
    """Model-Zoos-style small CNN: [Conv -> act -> pool] per channel entry, then a hidden Linear and the head.

    Params: convs.{i}.weight/bias, fc.weight/bias (when hidden > 0), head.weight/bias.
    """

    def __init__(self, in_channels: int, image_size: int, out_features: int, channels: list[int], kernel: int,
                 pooling: str, hidden: int, activation: str, dropout: float):
        super().__init__()
        if pooling not in ("max", "avg", "none"):
            raise UserError(f"cnn2d pooling {pooling!r}", "use 'max', 'avg' or 'none'")
        chans = [in_channels] + list(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, padding=kernel // 2) for a, b in zip(chans[:-1], chans[1:]))
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
        for conv in self.convs:
            x = self._pool(self.act(conv(x)))
        x = F.dropout(x.flatten(1), self.dropout, self.training)
        if self.fc is not None:
            x = F.dropout(self.act(self.fc(x)), self.dropout, self.training)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_cnn2d(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 8, "depth": 2, "channels": None, "kernel": 3, "pooling": "max", "hidden": None,
                       "activation": "relu", "dropout": 0.0, "init": "default", "in_channels": 1},
              ("image_size", "out_features"))
    channels = c["channels"] or [c["width"] * (2 ** i) for i in range(c["depth"])]
    hidden = 2 * c["width"] if c["hidden"] is None else int(c["hidden"])
    c["channels"], c["hidden"] = list(channels), hidden
    m = CNN2d(c["in_channels"], c["image_size"], c["out_features"], channels, c["kernel"], c["pooling"], hidden,
              c["activation"], c["dropout"])
    apply_init(m, c["init"])
    m.arch_config = c
    return m


class CNN1d(nn.Module):
    """1-D CNN in the style of the MNIST-1D paper's: strided convs, then a Linear head.

    Params: convs.{i}.weight/bias, head.weight/bias.
    """

    def __init__(self, in_channels: int, length: int, out_features: int, width: int, depth: int, kernel: int,
                 stride: int, activation: str, dropout: float):
        super().__init__()
        chans = [in_channels] + [width] * depth
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, stride=stride, padding=1) for a, b in zip(chans[:-1], chans[1:]))
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
        for conv in self.convs:
            x = self.act(conv(x))
        return F.dropout(x.flatten(1), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_cnn1d(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 25, "depth": 3, "kernel": 5, "stride": 2, "activation": "relu", "dropout": 0.0,
                       "init": "default", "in_channels": 1}, ("length", "out_features"))
    m = CNN1d(c["in_channels"], c["length"], c["out_features"], c["width"], c["depth"], c["kernel"], c["stride"],
              c["activation"], c["dropout"])
    apply_init(m, c["init"])
    m.arch_config = c
    return m


class EncoderBlock(nn.Module):
    """Pre-norm transformer block written out (no nn.MultiheadAttention, so torch.func can batch it)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, activation: str, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)
        self.act = _act(activation)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + F.dropout(self.proj(y), self.dropout, self.training)
        h = self.fc2(F.dropout(self.act(self.fc1(self.norm2(x))), self.dropout, self.training))
        return x + h


class Transformer(nn.Module):
    """Small sequence encoder: token embedding + learned positions, blocks, mean pool, head.

    Inputs of any shape are reshaped to [batch, seq_len, token_dim].
    Params: pos, embed.*, blocks.{i}.*, norm.*, head.*.
    """

    def __init__(self, seq_len: int, token_dim: int, out_features: int, width: int, depth: int, heads: int,
                 mlp_ratio: int, activation: str, dropout: float):
        super().__init__()
        if width % heads:
            raise UserError(f"transformer width {width} is not divisible by heads {heads}", "pick width = k * heads")
        self.seq_len, self.token_dim = seq_len, token_dim
        self.embed = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_ratio, activation, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.seq_len, self.token_dim)
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.norm(h).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_transformer(config: Mapping[str, Any]) -> nn.Module:
    c = _take(config, {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2, "activation": "gelu", "dropout": 0.0,
                       "init": "default"}, ("seq_len", "token_dim", "out_features"))
    m = Transformer(c["seq_len"], c["token_dim"], c["out_features"], c["width"], c["depth"], c["heads"],
                    c["mlp_ratio"], c["activation"], c["dropout"])
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


REGISTRY: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "mlp": build_mlp,
    "cnn2d": build_cnn2d,
    "cnn1d": build_cnn1d,
    "transformer": build_transformer,
    "siren": build_siren,
}


def build(config: Mapping[str, Any]) -> nn.Module:
    """Build a module from its config (same as ParamLayout.from_config(config).build_module())."""
    name = config.get("name") if isinstance(config, Mapping) else None
    if name not in REGISTRY:
        raise UserError(f"unknown architecture {name!r}", f"use one of: {', '.join(REGISTRY)}")
    return REGISTRY[name](config)


def config_for(dataset: Dataset, arch: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in the input/output sizes an architecture needs from a dataset; returns the full config."""
    c = dict(arch)
    name = c.get("name")
    shape = dataset.input_shape
    numel = math.prod(shape)
    c.setdefault("out_features", dataset.output_dim)
    if name in ("mlp", "siren"):
        c.setdefault("in_features", numel)
    elif name == "cnn2d":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise UserError(f"cnn2d needs square images [C, H, W], dataset {dataset.name!r} has inputs {list(shape)}",
                            "use mlp, cnn1d or transformer for this dataset")
        c.setdefault("in_channels", shape[0])
        c.setdefault("image_size", shape[1])
    elif name == "cnn1d":
        if len(shape) not in (1, 2):
            raise UserError(f"cnn1d needs sequences [C, L], dataset {dataset.name!r} has inputs {list(shape)}",
                            "use cnn2d or mlp for images")
        c.setdefault("in_channels", 1 if len(shape) == 1 else shape[0])
        c.setdefault("length", shape[-1])
    elif name == "transformer":
        if len(shape) >= 2:
            seq, tok = math.prod(shape[:-1]), shape[-1]
            if len(shape) == 2 and shape[0] == 1:  # [1, L] sequences: patches of 4
                seq, tok = (shape[1] // 4, 4) if shape[1] % 4 == 0 else (shape[1], 1)
        else:
            seq, tok = shape[0], 1
        c.setdefault("seq_len", seq)
        c.setdefault("token_dim", tok)
    else:
        raise UserError(f"unknown architecture {name!r}", f"use one of: {', '.join(REGISTRY)}")
    return c


def build_for(dataset: Dataset, arch: Mapping[str, Any]) -> nn.Module:
    return build(config_for(dataset, arch))
