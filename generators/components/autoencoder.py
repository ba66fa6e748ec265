"""Weight autoencoder: standardized flat weights [N, P] <-> latents [N, latent_dim].

p-diff's recipe: the autoencoder sees its input with a little Gaussian noise
(~0.001) and its latent with more (~0.1) while training. The latent noise is
what makes nearby latents decode to working weights, so the diffusion model's
samples (never exactly a training latent) still decode to good models. We add a
small KL term (a VAE) on top, which keeps the latent scale bounded; with
`kl_weight=0` it is p-diff's noise-augmented autoencoder.

MLP encoder and decoder: the targets are small networks (P up to a few
thousand), where a dense layer over the whole vector is cheap and sees every
parameter at once.
"""
from __future__ import annotations

import torch
from torch import nn


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.LayerNorm(b), nn.SiLU()]
    return nn.Sequential(*layers)


class WeightVAE(nn.Module):
    """`encode(x) -> (mu, logvar)`, `decode(z) -> x`, `loss(x) -> (total, parts)`."""

    def __init__(self, num_params: int, latent_dim: int = 64, hidden: int = 512, depth: int = 2,
                 input_noise: float = 1e-3, latent_noise: float = 0.1, kl_weight: float = 1e-4):
        super().__init__()
        self.num_params, self.latent_dim = int(num_params), int(latent_dim)
        self.input_noise, self.latent_noise, self.kl_weight = float(input_noise), float(latent_noise), float(kl_weight)
        self.encoder = _mlp([self.num_params] + [hidden] * depth + [2 * self.latent_dim])
        self.encoder_linear = nn.Linear(self.num_params, self.latent_dim)  # linear path for the latent means
        self.decoder = _mlp([self.latent_dim] + [hidden] * depth + [self.num_params])
        self.decoder_linear = nn.Linear(self.latent_dim, self.num_params)  # linear path: latents keep linear structure

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu + self.encoder_linear(x), logvar.clamp(-12.0, 6.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) + self.decoder_linear(z)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction MSE (of the clean input) + kl_weight * KL, with p-diff's noise augmentation."""
        mu, logvar = self.encode(x + self.input_noise * torch.randn_like(x))
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        z = z + self.latent_noise * torch.randn_like(z)
        recon = self.decode(z)
        mse = (recon - x).pow(2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        total = mse + self.kl_weight * kl
        return total, {"mse": float(mse.detach()), "kl": float(kl.detach())}
