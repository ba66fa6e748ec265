"""Global magnitude pruning hits the requested sparsity and is evaluated in one fused call."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from wsl import ParamLayout, UserError
from wsl.prune import magnitude_prune, prunable_mask, prune_sweep

sys.path.insert(0, str(Path(__file__).parent))
from _wsl_zoo import digits, mlp_zoo  # noqa: E402


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_hits_requested_sparsity_globally(sparsity):
    layout = ParamLayout.from_config({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 10,
                                      "width": 4})
    torch.manual_seed(0)
    w = torch.randn(5, layout.num_params)
    pruned, keep = magnitude_prune(w, layout, sparsity)
    cols = prunable_mask(layout)
    q = int(cols.sum())
    assert ((pruned[:, cols] == 0).sum(1) == round(sparsity * q)).all()
    assert torch.equal(pruned[:, ~cols], w[:, ~cols])  # biases untouched
    assert torch.equal(pruned, w * keep)
    if 0 < sparsity:
        # global: the kept magnitudes are all >= the dropped ones, across layers
        for i in range(5):
            kept = w[i, cols][keep[i, cols]].abs()
            dropped = w[i, cols][~keep[i, cols]].abs()
            assert kept.min() >= dropped.max()


def test_include_bias_and_single_vector():
    layout = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 2, "width": 3, "depth": 1})
    w = torch.randn(layout.num_params)
    pruned, keep = magnitude_prune(w, layout, 0.5, include_bias=True)
    assert pruned.shape == w.shape and int((pruned == 0).sum()) == round(0.5 * layout.num_params)


def test_sweep_on_digits_zoo():
    z = mlp_zoo()
    layout = z["layout"]
    final = z["weights"][-1][:6]
    df = prune_sweep(final, layout, digits(), [0.5, 0.9])
    assert len(df) == 18 and set(df.sparsity) == {0.0, 0.5, 0.9}
    assert (df[df.sparsity == 0.9].achieved.round(3) == 0.9).all()
    assert (df[df.sparsity == 0.0].delta == 0).all()
    # heavy pruning hurts on average
    assert df[df.sparsity == 0.9].accuracy.mean() <= df[df.sparsity == 0.0].accuracy.mean()


def test_bad_sparsity():
    layout = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 2, "width": 3, "depth": 1})
    w = torch.randn(2, layout.num_params)
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(UserError, match="sparsity"):
            magnitude_prune(w, layout, bad)
    with pytest.raises(UserError, match="values per model"):
        magnitude_prune(w[:, :-1], layout, 0.5)
