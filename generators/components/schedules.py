"""Learning-rate schedules the generators' training loops share.

Our own formula rather than diffusers' `get_cosine_schedule_with_warmup`: that one decays
to zero, and ours ends at a floor (`final` x the base rate), which the denoiser and the
autoencoder of the diffusion method were tuned with (docs/generators.md).
"""
from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warmup: float = 0.05, final: float = 0.05):
    """Linear warm-up over `warmup` of the steps, then cosine decay to `final` times the base learning rate."""
    w = max(1, int(round(warmup * total)))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total - w))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
