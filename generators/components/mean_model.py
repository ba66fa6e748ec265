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
classification: the per-class mean and standard deviation of the flattened
inputs, in class order (on digits-pairs, means alone: leave-one-task-out R^2
0.62 and 97.0% held-out accuracy for the ridge prediction alone; means + stds:
0.79 and 97.8%);
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
        mean = (onehot.T @ x) / counts[:, None]
        var = (onehot.T @ x.pow(2)) / counts[:, None] - mean.pow(2)
        return torch.cat([mean, var.clamp_min(0).sqrt()], 1).reshape(-1)
    yy = y.reshape(len(y), -1).to(torch.float64)
    feats = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), x], 1)
    return (yy[:, :, None] * feats[:, None, :]).mean(0).reshape(-1)


def statistics_dim(in_features: int, num_classes: int, target_dim: int = 1) -> int:
    return 2 * num_classes * in_features if num_classes else target_dim * (in_features + 1)


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


class GroupedRidge(nn.Module):
    """One RidgeMean per initialisation group (e.g. seed): models that share an init share one linear map.

    On digits-pairs, a ridge per seed reaches ~96% on held-out pairs where one
    ridge over all (aligned) seeds reaches ~94%: each init has its own linear
    structure. With one group this is a plain RidgeMean.
    """

    def __init__(self, sets_per_group: list[int], n_features: int, n_targets: int):
        super().__init__()
        self.ridges = nn.ModuleList(RidgeMean(int(d), n_features, n_targets) for d in sets_per_group)

    @torch.no_grad()
    def fit(self, stats: torch.Tensor, x: torch.Tensor, index: torch.Tensor, groups: torch.Tensor) -> dict[str, float]:
        """stats [D, F] per dataset; x [N, P] per model; index [N] its dataset; groups [N] its group."""
        diags = []
        for g, ridge in enumerate(self.ridges):
            rows = groups == g
            sets, inv = torch.unique(index[rows], return_inverse=True)
            targets = torch.zeros(len(sets), x.shape[1], dtype=torch.float64).index_add_(0, inv, x[rows].double())
            targets /= torch.bincount(inv, minlength=len(sets)).clamp_min(1)[:, None].double()
            diags.append(ridge.fit(stats[sets], targets))
        return {k: sum(d[k] for d in diags) / len(diags) for k in diags[0]}

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """[G, B, P]: every group's prediction for each of B statistics vectors."""
        return torch.stack([ridge(stats) for ridge in self.ridges])


def sets_per_group(index: torch.Tensor, groups: torch.Tensor, n_groups: int) -> list[int]:
    return [int(torch.unique(index[groups == g]).numel()) for g in range(n_groups)]
