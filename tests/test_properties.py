"""The Model Zoos baseline: per-tensor weight statistics -> ridge regression, R² on held-out models."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsl import ParamLayout, UserError
from wsl.evaluate import evaluate
from wsl.properties import STATS, layer_statistics, predict_properties

sys.path.insert(0, str(Path(__file__).parent))
from _wsl_zoo import digits, mlp_zoo  # noqa: E402


def test_statistics_are_per_tensor():
    layout = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 2, "width": 3, "depth": 1})
    w = torch.randn(3, layout.num_params)
    X, names = layer_statistics(w, layout)
    assert X.shape == (3, 7 * len(layout)) and len(names) == X.shape[1]
    block = w[1, layout["layers.0.weight"].offset:layout["layers.0.weight"].offset + 12].double()
    assert X[1, 0] == pytest.approx(block.mean().item())
    assert X[1, 1] == pytest.approx(block.var(unbiased=False).item())
    assert X[1, 4] == pytest.approx(torch.quantile(block, 0.5).item())
    assert names[:2] == ["layers.0.weight:mean", "layers.0.weight:var"] and len(STATS) == 7


def test_predicts_test_accuracy_on_a_digits_zoo():
    z = mlp_zoo()
    layout, W = z["layout"], z["weights"]
    n = W.shape[1]
    epochs = [1, 2, 3, 4, 5, 6]  # several checkpoints per model, held out by model
    w = torch.cat([W[e] for e in epochs])
    acc = evaluate(w, layout, digits()).accuracy
    X, _ = layer_statistics(w, layout)
    groups = [i for _ in epochs for i in range(n)]
    targets = {"test_acc": acc, "log10_lr": z["lr"].log10().repeat(len(epochs)).double()}
    rep = predict_properties(X, targets, groups=groups, test_fraction=0.3, seed=0)
    assert rep["test_acc"]["r2"] > 0.5, rep["test_acc"]
    assert rep["test_acc"]["n_test"] >= 6 * 10
    assert np.isfinite(rep["log10_lr"]["r2"])


def test_bad_input():
    X = torch.randn(10, 4)
    with pytest.raises(UserError, match="at least 5"):
        predict_properties(X[:3], {"y": [1, 2, 3]})
    with pytest.raises(UserError, match="values for 10"):
        predict_properties(X, {"y": [1.0] * 9})
    X[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        predict_properties(X, {"y": list(range(10))})
