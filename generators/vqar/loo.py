"""Leave-one-dataset-out means: what the ridge mean predicts for a training model's task had it not seen that task.

    mu_loo = loo_means(grouped_ridge, mu, index, groups)  # mu [N, P]: its in-sample prediction; standardized rows

Why (measured, BENCHMARKS.md "## vqar"): the ridge mean (components/mean_model.py) nearly
interpolates the tasks it was fit on, so a training model's in-sample residual is tiny, while a
model of a task the ridge never saw deviates from its prediction 20-30x more (digits-pairs,
per-tensor RMS in the in-sample residual's standardized units). A codebook learned from the
in-sample residuals alone has never seen residuals of that size: the decoded held-out
checkpoints kept only 19% of what the mean alone misses. The leave-one-out residuals are what a
held-out task's residual is distributed like, and for kernel ridge they are closed form, so they
cost one eigendecomposition per init group and no refit:

    centred targets t = (K + lam I) a,  in-sample prediction = t - lam a,
    H = K (K + lam I)^-1,              LOO prediction of row i = t_i - lam a_i / (1 - H_ii)

(`RidgeMean.loo_shift`, the identity components/mean_model.py uses to choose the penalty; the
intercept is not refit, as there). A model's LOO residual = its dataset mean's LOO residual + its spread around
that mean. The VQ-VAE is trained on these together with the in-sample residuals
(`token_residuals="fit+loo"`, model.py), each standardized per tensor by its own statistics.
"""
from __future__ import annotations

import torch

MIN_SETS = 3  # fewer datasets in a group: no meaningful leave-one-out, the in-sample mean is used


@torch.no_grad()
def loo_means(mean_model, insample: torch.Tensor, index: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[N, P] float32: every training model's leave-one-dataset-out mean (its own group's ridge).

    mean_model: a fitted GroupedRidge; insample [N, P] its prediction for each model's dataset and group
    (mean_model(stats)[groups, index], which the fit has already computed); index [N] a model's dataset;
    groups [N] its group. A group fit on fewer than MIN_SETS datasets keeps its in-sample prediction.
    """
    out = insample.to(torch.float64).clone()
    for g, ridge in enumerate(mean_model.ridges):
        rows = torch.nonzero(groups == g).flatten()
        if len(rows) == 0:
            continue
        sets, inv = torch.unique(index[rows], return_inverse=True)
        if len(sets) < MIN_SETS or len(sets) != len(ridge.features):
            continue
        out[rows] += ridge.loo_shift()[inv]
    return out.to(torch.float32)
