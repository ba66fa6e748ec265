"""Mode connectivity along a quadratic Bezier curve between two models, for many pairs at once.

The curve (Garipov et al. 2018) with fixed endpoints w0, w1 and a trained control point theta:

    phi(t) = (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1,   t in [0, 1]

theta starts at the midpoint (the straight line) and is trained on the training
split: each step draws one t ~ U(0, 1) per pair and lowers L(phi(t)). The curve
is then evaluated at `points` values of t (endpoints included) and, as in Yang
et al. (2021),

    mc = (L0 + L1) / 2 - L(t*),   t* = argmax_t |L(t) - (L0 + L1) / 2|

mc < 0: a barrier the curve could not get around (poorly connected); mc > 0: the
curve found lower loss than its endpoints (they are not minima, typical of
poorly trained models); mc ~ 0: a flat valley joins them.

t* is taken over the interior points: at an endpoint the deviation is
+-(L0 - L1) / 2, whose sign only says which of the two seeds trained better.

Pairs are batched: M curves are M "models" of one population, so each training
step and each L(t) is one `population_forward` call over all pairs.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from store.layout import ParamLayout
from wsl.functional import population_forward
from zoo.landscape.recipe import param_views, per_model_loss

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def bezier(w0: torch.Tensor, theta: torch.Tensor, w1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """phi(t) for every pair: w0, theta, w1 [M, ...]; t a float or [M] -> [M, ...]."""
    t = torch.as_tensor(t, dtype=w0.dtype)
    if t.dim() == 1:
        t = t.reshape(-1, *([1] * (w0.dim() - 1)))
    return (1 - t) ** 2 * w0 + 2 * t * (1 - t) * theta + t ** 2 * w1


def mc_from_losses(losses: torch.Tensor) -> torch.Tensor:
    """losses [..., T] along the curve (first and last at the endpoints) -> mc [...]."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if losses.shape[-1] < 3:
        raise ValueError("need the two endpoints and at least one interior point")
    mid = (losses[..., 0] + losses[..., -1]) / 2
    interior = losses[..., 1:-1]
    idx = (interior - mid.unsqueeze(-1)).abs().argmax(-1, keepdim=True)
    return mid - interior.gather(-1, idx).squeeze(-1)


def lr_factor(progress: float) -> float:
    """Garipov et al.'s curve schedule: constant for the first half, linear decay to 1% at 90%, then 1%."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


def fit_curves(layout: ParamLayout, w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
               task: str = "classification", epochs: int = 20, lr: float = 0.01, batch_size: int = 128,
               seed: int = 0, pair_seeds: Sequence[int] | None = None,
               progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """Train every pair's control point on (x, y); returns theta [M, P] (the midpoints when epochs=0).

    Minibatches come from `seed` (shared by all pairs: one input batch per
    step); pair i's curve positions t from `pair_seeds[i]` when given, so its
    curve does not depend on which other pairs were trained with it.
    """
    M = w0.shape[0]
    names = layout.names
    a = list(param_views(layout, w0).values())
    b = list(param_views(layout, w1).values())
    # buffers (BatchNorm statistics) are not trained: their control point stays at the endpoints' midpoint
    theta = [((p + q) / 2).detach().clone().requires_grad_(not e.buffer) for e, p, q in zip(layout.entries, a, b)]
    n = len(x)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = int(epochs) * steps_per_epoch
    if total > 0:
        opt = torch.optim.Adam(theta, lr=lr)
        g = torch.Generator().manual_seed(int(seed))
        pair_gens = None if pair_seeds is None else [torch.Generator().manual_seed(int(s)) for s in pair_seeds]
        if pair_gens is not None and len(pair_gens) != M:
            raise ValueError(f"{len(pair_gens)} pair seeds for {M} pairs")
        step = 0
        for _ in range(int(epochs)):
            for idx in torch.randperm(n, generator=g).split(batch_size):
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(step / total)
                if pair_gens is None:
                    t = torch.rand(M, generator=g, dtype=w0.dtype)
                else:
                    t = torch.cat([torch.rand(1, generator=pg, dtype=w0.dtype) for pg in pair_gens])
                params = {nm: bezier(p, th, q, t) for nm, p, th, q in zip(names, a, theta, b)}
                loss = per_model_loss(population_forward(layout, params, x[idx]), y[idx], task).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if progress is not None:
                progress(1.0 / max(1, int(epochs)))
    return torch.cat([t.detach().reshape(M, -1) for t in theta], 1)


@torch.no_grad()
def curve_losses(layout: ParamLayout, w0: torch.Tensor, theta: torch.Tensor, w1: torch.Tensor,
                 ts: torch.Tensor, batches: Batches, task: str = "classification") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and accuracy of phi(t) for every pair and t on `batches` -> ([M, T], [M, T]) float64.

    All M x T points of all curves are one population, scored by the fused
    evaluator (wsl.evaluate) on the recipe's samples.
    """
    from wsl.data import Dataset
    from wsl.evaluate import evaluate

    M, T = w0.shape[0], len(ts)
    x = torch.cat([bx for bx, _ in batches])
    y = torch.cat([by for _, by in batches])
    n_out = population_forward(layout, param_views(layout, w0[:1]), x[:1]).shape[-1]
    sample = Dataset("landscape-sample", x, y, x, y, task=task, num_classes=n_out if task == "classification" else 0)
    points = torch.stack([bezier(w0, theta, w1, t) for t in ts.tolist()], 1)  # [M, T, P]
    res = evaluate(points.reshape(M * T, -1), layout, sample, split="train")
    return res.loss.double().reshape(M, T), res.accuracy.double().reshape(M, T)


def mode_connectivity(layout: ParamLayout, w0: torch.Tensor, w1: torch.Tensor, fit_data: tuple[torch.Tensor, torch.Tensor],
                      eval_batches: Batches, *, task: str = "classification", points: int = 9, epochs: int = 20,
                      lr: float = 0.01, batch_size: int = 128, seed: int = 0, pair_seeds: Sequence[int] | None = None,
                      progress: Callable[[float], None] | None = None) -> dict[str, torch.Tensor]:
    """Fit and evaluate M curves (pairs w0[i] -- w1[i]); returns mc [M], losses [M, T], ts [T], theta [M, P]."""
    if points < 5:
        raise ValueError("evaluate the curve at 5 points or more")
    layout.check_flat(w0, "first endpoints")
    layout.check_flat(w1, "second endpoints")
    x, y = fit_data
    theta = fit_curves(layout, w0, w1, x, y, task=task, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       pair_seeds=pair_seeds, progress=progress)
    bad = ~torch.isfinite(theta).all(1)  # a curve whose training blew up: no value, not an abort
    theta[bad] = ((w0[bad] + w1[bad]) / 2).to(theta.dtype)
    ts = torch.linspace(0, 1, int(points), dtype=torch.float64)
    losses, accs = curve_losses(layout, w0, theta, w1, ts, eval_batches, task)
    mc = mc_from_losses(losses)
    mc[bad] = float("nan")
    return {"mc": mc, "losses": losses, "accuracy": accs, "ts": ts, "theta": theta}
