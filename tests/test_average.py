"""Averaging over the last k epochs and over aligned seeds, with the accuracy change reported."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from wsl import UserError
from wsl.average import average_last_k, average_seeds, uniform_average
from wsl.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from _wsl_zoo import digits, mlp_zoo  # noqa: E402


def test_uniform_average():
    w = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(uniform_average(w), w.mean(0))
    assert uniform_average(w.unsqueeze(0)).shape == (1, 4)
    with pytest.raises(UserError):
        uniform_average(torch.zeros(5))


def test_last_k_reports_delta_per_model():
    z = mlp_zoo()
    layout = z["layout"]
    hist = z["weights"][1:].transpose(0, 1)[:8]  # 8 models x 6 epochs x P
    rep = average_last_k(hist, layout, digits(), k=3)
    assert rep.weights.shape == (8, layout.num_params)
    torch.testing.assert_close(rep.weights, hist[:, -3:].mean(1))
    ref = evaluate(rep.weights, layout, digits())
    torch.testing.assert_close(torch.tensor(rep.table.accuracy_avg.values, dtype=torch.float64), ref.accuracy)
    assert (rep.table.delta_accuracy == rep.table.accuracy_avg - rep.table.accuracy_final).all()
    assert rep.summary["k"] == 3 and rep.summary["models"] == 8
    # k = 1 is the final checkpoint itself
    assert (average_last_k(hist, layout, digits(), k=1).table.delta_accuracy == 0).all()
    with pytest.raises(UserError, match="k=9"):
        average_last_k(hist, layout, digits(), k=9)


def test_aligned_seed_average_beats_naive():
    z = mlp_zoo()
    layout = z["layout"]
    final = z["weights"][-1]
    good = torch.argsort(-z["lr"])[4:8]  # similar, well-trained configurations from different seeds
    rep = average_seeds(final[good], layout, digits())
    s = rep.summary
    assert s["models"] == 4 and len(rep.table) == 6
    assert s["accuracy_aligned_avg"] >= s["accuracy_naive_avg"]
    assert s["delta_accuracy"] == pytest.approx(s["accuracy_aligned_avg"] - s["mean_accuracy_endpoints"])
    with pytest.raises(UserError, match="S >= 2"):
        average_seeds(final[:1], layout, digits())
    bad = final[:3].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(UserError, match="NaN or inf"):
        average_seeds(bad, layout, digits())
