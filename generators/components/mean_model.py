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

The map need not be linear: on the class-subset tasks (1,002 seen datasets) a kernel ridge
with an RBF kernel over the statistics can fit what a linear map cannot, so the kernel is
chosen with the penalty by the exact leave-one-dataset-out error (`kernel="auto"`), and so is
one shared ridge versus one per init group (diffusion's `mean_model="auto"`). BENCHMARKS.md
has the measured choices.
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


KERNELS = ("linear", "rbf")
RBF_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)  # gamma = scale / median squared distance between the training statistics


def _shrinkage(e: torch.Tensor, q: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(e / (e + lam), diag of the hat matrix H = K (K + lam I)^-1) from K's eigendecomposition (e, q)."""
    w = e.clamp_min(0) / (e.clamp_min(0) + lam)
    return w, (q.pow(2) * w).sum(1)


def _loo_error(gram: torch.Tensor, basis: torch.Tensor, lambdas, weight: torch.Tensor) -> list[tuple[float, float]]:
    """[(lambda, weighted mean squared leave-one-out error)] of kernel ridge with kernel `gram` [D, D].

    basis [D, r]: the centred targets in any orthonormal basis of their row space (targets @ V
    from their SVD): the squared errors per row are the same as for the [D, P] targets and
    cost r << P. One eigendecomposition serves every lambda: H = Q diag(e / (e + lam)) Q^T.
    """
    e, q = torch.linalg.eigh(gram)
    qb = q.T @ basis
    out = []
    for lam in lambdas:
        w, hii = _shrinkage(e, q, lam)
        resid = basis - q @ (w[:, None] * qb)
        loo = resid / (1.0 - hii).clamp_min(1e-6)[:, None]
        out.append((lam, float((loo.pow(2).sum(1) * weight).sum() / weight.sum())))
    return out


class RidgeMean(nn.Module):
    """Kernel ridge with intercept: predict [B, P] targets from [B, F] statistics (linear or RBF kernel).

    The kernel (linear, or RBF with gamma among RBF_SCALES / median squared distance over the
    statistics standardized per feature, so that input means and input spreads count alike;
    `kernel` "auto" tries both) and the penalty are chosen by exact leave-one-dataset-out
    error (on digits-subsets standardizing lowers that error and lifts the held-out accuracy
    of the ridge alone by 0.2 points). Stored: the centred training statistics, the feature
    scale, the dual coefficients, the target mean, the penalty and the kernel (0 = linear,
    else the RBF gamma), D x (F + P) numbers.
    """

    LAMBDAS = tuple(10.0 ** k for k in range(-4, 3))  # times the mean diagonal of the Gram matrix

    def __init__(self, n_sets: int, n_features: int, n_targets: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("features", torch.zeros(n_sets, n_features, dtype=torch.float64))  # centered
        self.register_buffer("dual_coef", torch.zeros(n_sets, n_targets, dtype=torch.float64))
        self.register_buffer("target_mean", torch.zeros(n_targets, dtype=torch.float64))
        self.register_buffer("penalty", torch.zeros((), dtype=torch.float64))
        self.register_buffer("gamma", torch.zeros((), dtype=torch.float64))  # 0: linear kernel
        # per-feature scale of the centred statistics (1: as they are; their std for the RBF kernel)
        self.register_buffer("feature_scale", torch.ones(n_features, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # generators saved before there was a kernel choice: linear, statistics as they are
        for name, value in (("gamma", torch.zeros((), dtype=torch.float64)),
                            ("feature_scale", torch.ones_like(self.feature_scale))):
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _kernel(self, a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
        if gamma <= 0:
            return a @ b.T
        return torch.exp(-gamma * torch.cdist(a, b).pow(2))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, targets: torch.Tensor, kernel: str = "linear",
            weight: torch.Tensor | None = None) -> dict[str, float]:
        """Fit on D (statistics, mean target) pairs; kernel and penalty by leave-one-out error. Returns diagnostics.

        weight [D]: how much each pair counts in that error (e.g. its number of models).
        """
        if kernel not in KERNELS + ("auto",):
            raise ValueError(f"kernel {kernel!r}")
        f = features.to(torch.float64)
        t = targets.to(torch.float64)
        fm, tm = f.mean(0), t.mean(0)
        fc, tc = f - fm, t - tm
        d = len(f)
        wt = torch.ones(d, dtype=torch.float64) if weight is None else weight.to(torch.float64)
        # the targets' squared row norms in an orthonormal basis of their row space (module docstring of _loo_error)
        gram_t = tc @ tc.T
        ev, u = torch.linalg.eigh(gram_t)
        basis = u * ev.clamp_min(0).sqrt()
        gammas = []
        if kernel in ("linear", "auto"):
            gammas.append(0.0)
        fstd = fc.std(0).clamp_min(1e-6) if d > 1 else torch.ones_like(fm)
        if kernel in ("rbf", "auto"):
            fz = fc / fstd
            d2 = torch.cdist(fz, fz).pow(2)
            med = float(d2[~torch.eye(d, dtype=torch.bool)].median()) if d > 1 else 1.0
            gammas += [s / max(med, 1e-12) for s in RBF_SCALES]
        best = None
        for gamma in gammas:
            gram = self._kernel(fc, fc, gamma) if gamma <= 0 else self._kernel(fz, fz, gamma)
            scale = float(gram.diagonal().mean().clamp_min(1e-12))
            for lam, err in _loo_error(gram, basis, [lam * scale for lam in self.LAMBDAS], wt):
                if best is None or err < best[0]:
                    best = (err, lam, gamma, gram)
        err, pen, gamma, gram = best
        coef = torch.linalg.solve(gram + pen * torch.eye(d, dtype=torch.float64), tc)
        self.feature_mean.copy_(fm)
        self.features.copy_(fc)
        self.dual_coef.copy_(coef)
        self.target_mean.copy_(tm)
        self.penalty.fill_(pen)
        self.gamma.fill_(gamma)
        self.feature_scale.copy_(fstd if gamma > 0 else torch.ones_like(fstd))
        self.features.div_(self.feature_scale)
        total = float(((tc.pow(2).sum(1) * wt).sum() / wt.sum()).clamp_min(1e-12))
        return {"ridge_penalty": pen / float(gram.diagonal().mean().clamp_min(1e-12)), "ridge_loo_mse": err / t.shape[1],
                "ridge_loo_explained": 1.0 - err / total, "ridge_kernel": "rbf" if gamma > 0 else "linear",
                "ridge_loo_sq_error": err}

    @torch.no_grad()
    def loo_shift(self) -> torch.Tensor:
        """[D, P] leave-one-dataset-out minus in-sample prediction for each training dataset (no refit).

        Centred targets t = (K + lam I) a, in-sample prediction t - lam a, LOO prediction
        t_i - lam a_i / (1 - H_ii) (the identity the penalty is chosen by): the shift is
        -lam a_i H_ii / (1 - H_ii). The intercept is not refit.
        """
        lam = float(self.penalty)
        e, q = torch.linalg.eigh(self._kernel(self.features, self.features, float(self.gamma)))
        _, hii = _shrinkage(e, q, lam)
        return -lam * self.dual_coef * (hii / (1.0 - hii).clamp_min(1e-6))[:, None]

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        s = (stats.to(torch.float64).reshape(-1, self.features.shape[1]) - self.feature_mean) / self.feature_scale
        return (self.target_mean + self._kernel(s, self.features, float(self.gamma)) @ self.dual_coef).to(torch.float32)


class GroupedRidge(nn.Module):
    """One RidgeMean per initialisation group (e.g. seed): models that share an init share one map.

    On digits-pairs, a ridge per seed reaches ~96% on held-out pairs where one
    ridge over all (aligned) seeds reaches ~94%: each init has its own linear
    structure. With one group this is a plain RidgeMean.
    """

    def __init__(self, sets_per_group: list[int], n_features: int, n_targets: int):
        super().__init__()
        self.ridges = nn.ModuleList(RidgeMean(int(d), n_features, n_targets) for d in sets_per_group)

    @torch.no_grad()
    def fit(self, stats: torch.Tensor, x: torch.Tensor, index: torch.Tensor, groups: torch.Tensor,
            kernel: str = "linear") -> dict[str, float]:
        """stats [D, F] per dataset; x [N, P] per model; index [N] its dataset; groups [N] its group.

        Also returns `mean_insample_residual` (the fraction of the models' variance the fitted
        map leaves) and `mean_loo_model_error`: the leave-one-dataset-out squared error per
        model (against each model, not the group mean), which compares a shared ridge with
        per-group ridges on equal terms (`mean_model="auto"`).
        """
        diags, model_err, count = [], 0.0, 0
        for g, ridge in enumerate(self.ridges):
            rows = groups == g
            sets, inv = torch.unique(index[rows], return_inverse=True)
            xr = x[rows].double()
            targets = torch.zeros(len(sets), x.shape[1], dtype=torch.float64).index_add_(0, inv, xr)
            per = torch.bincount(inv, minlength=len(sets)).clamp_min(1)[:, None].double()
            targets /= per
            diags.append(ridge.fit(stats[sets], targets, kernel, weight=per[:, 0]))
            # a model's squared error vs the LOO prediction of its set's mean = the mean's error + its spread
            spread = float((xr - targets[inv]).pow(2).sum())
            model_err += diags[-1]["ridge_loo_sq_error"] * float(per.sum()) + spread
            count += int(rows.sum())
        out = {k: sum(d[k] for d in diags) / len(diags) for k in diags[0] if k != "ridge_kernel"}
        out["ridge_kernel"] = ",".join(sorted({d["ridge_kernel"] for d in diags}))
        out["mean_loo_model_error"] = model_err / max(count, 1)
        # how much of the models' spread the fitted map leaves (in sample): ~0 means it reproduces them
        resid = x.double() - self(stats).double()[groups, index]
        out["mean_insample_residual"] = float(resid.pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum().clamp_min(1e-12))
        return out

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """[G, B, P]: every group's prediction for each of B statistics vectors."""
        return torch.stack([ridge(stats) for ridge in self.ridges])


def sets_per_group(index: torch.Tensor, groups: torch.Tensor, n_groups: int) -> list[int]:
    return [int(torch.unique(index[groups == g]).numel()) for g in range(n_groups)]
