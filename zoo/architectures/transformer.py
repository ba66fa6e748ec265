"""A small transformer encoder, written out so the batched forward can mirror it op for op."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import UserError
from wsl.functional import activation as _act  # one activation table for modules and the batched forward
from zoo.architectures.common import apply_init, take as _take


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
