"""The latent diffusion method (`--method diffusion`): p-diff's recipe with D2NWG's dataset conditioning.

    from generators.diffusion import LatentDiffusion

model.py holds the method (fit: standardize -> ridge mean -> weight VAE -> latent DDPM;
sample: DDIM), denoiser.py the latent denoiser; the shared pieces are in
generators/components/.
"""
from generators.diffusion.model import LatentDiffusion

__all__ = ["LatentDiffusion"]
