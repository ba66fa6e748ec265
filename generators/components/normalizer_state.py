"""Per-tensor standardization statistics that save with a generator's other tensors.

Every method standardizes weights per named tensor (`wsl.normalize.Normalizer`: a bias and
a weight matrix then count equally) and must invert that exactly after decoding. Keeping
the statistics as buffers of an nn.Module puts them into model.safetensors with the rest,
so a loaded generator decodes to the same weights bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

from store.layout import ParamLayout
from wsl.normalize import Normalizer


class NormalizerState(nn.Module):
    """A `wsl.normalize.Normalizer`'s per-tensor statistics as buffers (so they save with the other tensors)."""

    def __init__(self, n_tensors: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_tensors, dtype=torch.float64))
        self.register_buffer("std", torch.ones(n_tensors, dtype=torch.float64))
        self._norm: Normalizer | None = None

    def set(self, norm: Normalizer) -> Normalizer:
        self.mean.copy_(norm.mean)
        self.std.copy_(norm.std)
        self._norm = norm
        return norm

    def normalizer(self, layout: ParamLayout) -> Normalizer:
        if self._norm is None or self._norm.layout != layout:
            self._norm = Normalizer(layout, self.mean, self.std)
        return self._norm
