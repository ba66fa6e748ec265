"""The linear part of "weights for a dataset": a ridge regression from dataset statistics to weights.

Why: on the digits-pairs zoo, models that share an initialisation are close to
a linear function of their task. A ridge regression from the per-class mean
inputs of a task to the (aligned, standardized) weights reaches ~94% test
accuracy on held-out pairs on its own, while a diffusion model conditioned on a
learned embedding memorizes the 35 seen tasks and lands at ~88-92% on the
held-out ones. So the generator splits the work:

    standardized weights = RidgeMean(statistics(dataset)) + residual
    residual ~ latent diffusion conditioned on the set-encoder embedding

The ridge part carries what generalizes across datasets (fit in closed form,
leave-one-dataset-out choice of the penalty); the diffusion part carries the
spread of the population (which init, which basin) and whatever the linear map
misses for the datasets it saw.

Statistics of a dataset (`dataset_statistics`), from its train split only:
classification: the per-class mean of the flattened inputs, in class order;
regression: the mean of y (x) [1, x] over the samples (first moments of the
function). Ridge is solved in its dual form (D datasets << features x P
parameters), so what is stored is D x (F + P) numbers.
"""
from __future__ import annotations

import torch
from torch import nn


def dataset_statistics(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[F] statistics of a labelled sample set (see module docstring)."""
    x = x.reshape(len(x), -1).to(torch.float64)
    if num_classes:
        onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(torch.float64)  # [n, K]
        counts = onehot.sum(0).clamp_min(1.0)
        return ((onehot.T @ x) / counts[:, None]).reshape(-1)
    yy = y.reshape(len(y), -1).to(torch.float64)
    feats = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), x], 1)
    return (yy[:, :, None] * feats[:, None, :]).mean(0).reshape(-1)


def statistics_dim(in_features: int, num_classes: int, target_dim: int = 1) -> int:
    return num_classes * in_features if num_classes else target_dim * (in_features + 1)


class RidgeMean(nn.Module):
    """Kernel-form ridge with intercept: predict [B, P] targets from [B, F] statistics."""

    LAMBDAS = tuple(10.0 ** k for k in range(-4, 3))  # times the mean diagonal of the Gram matrix

    def __init__(self, n_sets: int, n_features: int, n_targets: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("features", torch.zeros(n_sets, n_features, dtype=torch.float64))  # centered
        self.register_buffer("dual_coef", torch.zeros(n_sets, n_targets, dtype=torch.float64))
        self.register_buffer("target_mean", torch.zeros(n_targets, dtype=torch.float64))
        self.register_buffer("penalty", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Fit on D (statistics, mean target) pairs; picks the penalty by leave-one-out error. Returns diagnostics."""
        f = features.to(torch.float64)
        t = targets.to(torch.float64)
        fm, tm = f.mean(0), t.mean(0)
        fc, tc = f - fm, t - tm
        gram = fc @ fc.T
        d = len(f)
        scale = float(gram.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(d, dtype=torch.float64)
        best = None
        for lam in self.LAMBDAS:
            inv = torch.linalg.inv(gram + lam * scale * eye)
            hat = gram @ inv
            resid = tc - hat @ tc
            loo = resid / (1.0 - hat.diagonal()).clamp_min(1e-6)[:, None]  # leave-one-dataset-out residuals
            err = float(loo.pow(2).mean())
            if best is None or err < best[0]:
                best = (err, lam, inv)
        err, lam, inv = best
        self.feature_mean.copy_(fm)
        self.features.copy_(fc)
        self.dual_coef.copy_(inv @ tc)
        self.target_mean.copy_(tm)
        self.penalty.fill_(lam * scale)
        explained = 1.0 - err / float(tc.pow(2).mean().clamp_min(1e-12))
        return {"ridge_penalty": lam, "ridge_loo_mse": err, "ridge_loo_explained": explained}

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        s = stats.to(torch.float64).reshape(-1, self.features.shape[1]) - self.feature_mean
        return (self.target_mean + (s @ self.features.T) @ self.dual_coef).to(torch.float32)
