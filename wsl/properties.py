"""Property prediction from weights: the Model Zoos baseline (Schürholt et al. 2022).

Each model is summarized by per-tensor statistics of its weights (mean,
variance and the 1/25/50/75/99 % quantiles of every parameter tensor); a ridge
regression on those features predicts test accuracy, hyperparameters (log
learning rate, epochs, ...) or any other per-model number. The score is R² on
held-out models.

    X, names = layer_statistics(weights, layout)             # [N, 7 * tensors]
    report = predict_properties(X, {"test_acc": acc, "log10_lr": lr.log10()}, groups=model_ids)
    report["test_acc"]["r2"]
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from store.errors import UserError
from store.layout import ParamLayout

__all__ = ["QUANTILES", "layer_statistics", "predict_properties"]

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
STATS = ("mean", "var") + tuple(f"q{int(q * 100):02d}" for q in QUANTILES)


def layer_statistics(weights: torch.Tensor, layout: ParamLayout) -> tuple[torch.Tensor, list[str]]:
    """[N, P] -> ([N, 7 * tensors] float64 features, feature names "tensor:stat")."""
    w = layout.check_flat(weights).detach().to("cpu", torch.float64)
    w = w.unsqueeze(0) if w.dim() == 1 else w
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    feats, names = [], []
    for e in layout.entries:
        block = w[:, e.offset:e.offset + e.numel]
        qs = torch.quantile(block, q, dim=1).T  # [N, 5]
        var = block.var(1, unbiased=False).unsqueeze(1)
        feats.append(torch.cat([block.mean(1, keepdim=True), var, qs], 1))
        names += [f"{e.name}:{s}" for s in STATS]
    return torch.cat(feats, 1), names


def predict_properties(features: torch.Tensor | np.ndarray, targets: Mapping[str, Sequence[float]],
                       test_fraction: float = 0.3, seed: int = 0, groups: Sequence[Any] | None = None,
                       alphas: Sequence[float] | None = None) -> dict[str, dict[str, Any]]:
    """Fit standardize -> ridge (alpha by cross-validation) per target; R² on held-out models.

    groups: one label per row (e.g. model_id when rows are several checkpoints
    of the same model) so a model's checkpoints never straddle train and test.
    Returns {target: {"r2", "n_train", "n_test", "alpha", "model"}}.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    n = len(X)
    if X.ndim != 2 or n < 5:
        raise UserError(f"property prediction needs at least 5 models, got features of shape {X.shape}",
                        "select more checkpoints")
    if not 0.05 <= test_fraction <= 0.8:
        raise UserError(f"test_fraction {test_fraction} is outside [0.05, 0.8]", "use e.g. 0.3")
    if not np.isfinite(X).all():
        raise UserError("weight statistics contain NaN or inf", "drop diverged models from the selection")
    if groups is not None:
        groups = np.asarray(list(groups))
        if len(groups) != n:
            raise UserError(f"{len(groups)} groups for {n} models", "give one group label per row")
        split = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        tr, te = next(split.split(X, groups=groups))
    else:
        tr, te = next(ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(X))
    if len(tr) < 3 or len(te) < 2:
        raise UserError(f"split gives {len(tr)} training and {len(te)} held-out models", "select more models")
    alphas = list(alphas) if alphas is not None else list(np.logspace(-3, 3, 13))
    out: dict[str, dict[str, Any]] = {}
    for name, values in targets.items():
        y = np.asarray(values.numpy() if isinstance(values, torch.Tensor) else list(values), dtype=np.float64)
        if len(y) != n:
            raise UserError(f"target {name!r} has {len(y)} values for {n} models", "give one value per model")
        ok = np.isfinite(y)
        tr_ok, te_ok = tr[ok[tr]], te[ok[te]]
        if len(tr_ok) < 3 or len(te_ok) < 2 or np.ptp(y[te_ok]) == 0:
            out[name] = {"r2": float("nan"), "n_train": int(len(tr_ok)), "n_test": int(len(te_ok)),
                         "alpha": None, "model": None, "note": "too few distinct values"}
            continue
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
        model.fit(X[tr_ok], y[tr_ok])
        pred = model.predict(X[te_ok])
        out[name] = {"r2": float(r2_score(y[te_ok], pred)), "n_train": int(len(tr_ok)), "n_test": int(len(te_ok)),
                     "alpha": float(model[-1].alpha_), "model": model}
    return out
