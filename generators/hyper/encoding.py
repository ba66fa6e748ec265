"""The MIP parametrization's two halves (Ortiz et al. 2023): constant-norm inputs and theta_0 + delta outputs.

    u = mip_encode(x)                      # x in [0, 1]^d -> [cos(pi x / 2), sin(pi x / 2)]  ([.., 2d], norm sqrt(d))
    theta0 = kaiming_theta0(layout, seed)  # the architecture's own (Kaiming-style) initialisation, flat [P]
    theta0 = checkpoint_theta0(layout, "model.safetensors")   # or an existing checkpoint (hyperlight: from_existing)

Why constant norm: a plain hypernetwork's first layer sees inputs whose magnitude
varies with the condition, so the scale of the generated weights does too, and training
has to undo that first; with every input on the unit circle per coordinate the output
scale is set by theta_0 and the (small, fan-out initialised) delta head alone.

Embeddings and metrics are not born in [0, 1]: `to_unit` squashes an embedding with a
sigmoid, `MetricRange` maps a metric by the training population's min/max (clamped).

Why not hyperlight's `encode_input`: hyperlight (0.0.5) imports and runs under our torch,
but its hypernetwork generates one named-parameter dict per call through module
re-parametrization, not the [N, P] flat rows our ParamLayout and batched functional
forward take; for a three-line encoding we keep no dependency (docs/generators.md "hyper").
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from store.errors import UserError
from store.layout import ParamLayout


def mip_encode(x: torch.Tensor) -> torch.Tensor:
    """[..., d] values in [0, 1] -> [..., 2d]: [cos(pi x / 2), sin(pi x / 2)]; every row has norm sqrt(d)."""
    a = x * (math.pi / 2)
    return torch.cat([torch.cos(a), torch.sin(a)], -1)


def to_unit(e: torch.Tensor) -> torch.Tensor:
    """An unbounded embedding squashed into (0, 1) (what MIP's encoding expects)."""
    return torch.sigmoid(e)


class MetricRange(nn.Module):
    """A target metric mapped to [0, 1] by the training population's range (saved as buffers)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("low", torch.zeros(n))
        self.register_buffer("high", torch.ones(n))

    def set(self, values: torch.Tensor) -> "MetricRange":
        lo, hi = values.min(0).values, values.max(0).values
        self.low.copy_(lo)
        self.high.copy_(torch.where(hi - lo > 1e-6, hi, lo + 1.0))
        return self

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return ((m - self.low) / (self.high - self.low)).clamp(0.0, 1.0)


def kaiming_theta0(layout: ParamLayout, seed: int) -> torch.Tensor:
    """[P] the layout's module as its architecture initialises it (Kaiming-style) after torch.manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = layout.build_module()
    return layout.flatten(module).reshape(-1).to(torch.float32)


def checkpoint_theta0(layout: ParamLayout, path: str | Path) -> torch.Tensor:
    """[P] theta_0 read from a .safetensors file: the layout's state dict, or one flat tensor of P values."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        raise UserError(f"theta0 {str(path)!r} is not an existing .safetensors file",
                        "give theta0=kaiming, theta0=zoo-mean, or the path of a checkpoint saved as safetensors "
                        "(`wsl export --format safetensors`)")
    from safetensors.torch import load_file

    tensors = load_file(str(p))
    if len(tensors) == 1:
        t = next(iter(tensors.values()))
        if t.numel() == layout.num_params and set(tensors) != set(layout.names):
            return t.reshape(-1).to(torch.float32)
    missing = sorted(set(layout.names) - set(tensors))
    if missing:
        raise UserError(f"theta0 checkpoint {p} lacks tensors {missing[:4]} of layout {layout.layout_id}",
                        "give a checkpoint of the same architecture and width as the generated models")
    flat = layout.flatten({k: tensors[k] for k in layout.names})
    return flat.reshape(-1).to(torch.float32)


def tensor_scales(layout: ParamLayout, theta0: torch.Tensor) -> torch.Tensor:
    """[P_train] per-coordinate scale: each tensor's std in theta_0 (1e-2 floor: zero-initialised biases).

    Distances and regressions are measured in these units, so a bias and a weight matrix count alike.
    """
    out = torch.empty(layout.num_trainable)
    for e in layout.param_entries:
        seg = theta0[e.offset:e.offset + e.numel]
        out[e.offset:e.offset + e.numel] = float(seg.std()) if e.numel > 1 else 1.0
    return out.clamp_min(1e-2)
