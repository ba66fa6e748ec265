"""Latent denoiser: predicts the noise in a latent, given the timestep and a condition vector.

A residual MLP with FiLM conditioning (scale and shift from timestep +
condition embedding), the vector analogue of a diffusion U-Net's ResBlock. Our
latents are one short vector per model (no spatial axis), where a 1-D U-Net
(diffusers' `UNet1DModel`, p-diff's conv denoiser) spends most of its time on
convolutions over a length that carries no locality; an MLP is faster on a CPU
and as accurate here.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps [B] -> [B, dim] (as in DDPM / diffusers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        u = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.dropout(self.act(self.fc1(self.act(u)))))


class LatentDenoiser(nn.Module):
    """`forward(z_t [B, d], t [B], cond [B, cond_dim]) -> prediction [B, d]` (noise, sample or v)."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        self.time_dim = int(time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(latent_dim, hidden)
        self.blocks = nn.ModuleList(ResBlock(hidden, hidden, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, latent_dim)
        self.cond_out = nn.Linear(cond_dim, latent_dim)  # linear path from the condition to the prediction
        nn.init.zeros_(self.cond_out.weight)
        nn.init.zeros_(self.cond_out.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(len(z))
        emb = nn.functional.silu(self.time_mlp(timestep_embedding(t, self.time_dim)) + self.cond_mlp(cond))
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h)) + self.cond_out(cond)
