"""Per-tensor standardization inverts exactly and keeps its statistics across save/load."""
from __future__ import annotations

import pytest
import torch

from wsl import ParamLayout, UserError
from wsl.normalize import Normalizer

ARCH = {"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 2}


def zoo(n=32, seed=0):
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(ARCH)
    flat = layout.flatten([layout.build_module() for _ in range(n)])
    flat[:, -10:] += 3.0  # a head bias far from zero: per-tensor means differ
    return layout, flat


def test_roundtrip_is_exact_and_standardizes():
    layout, w = zoo()
    w[0, :5] = 0.0  # exact zeros (pruned weights) survive too
    norm = Normalizer.fit(w, layout)
    z = norm.transform(w)
    for e in layout.entries:
        block = z[:, e.offset:e.offset + e.numel]
        assert abs(block.mean().item()) < 1e-9
        assert abs(block.std(unbiased=False).item() - 1) < 1e-9
    back = norm.inverse(z)
    assert back.dtype == torch.float32
    assert torch.equal(back, w)
    assert torch.equal(norm.inverse(norm.transform(w[3])), w[3])  # one [P] vector


def test_float32_transform_is_close():
    layout, w = zoo()
    norm = Normalizer.fit(w, layout)
    z = norm.transform(w, dtype=torch.float32)
    assert z.dtype == torch.float32
    torch.testing.assert_close(norm.inverse(z), w, rtol=1e-6, atol=1e-7)


def test_save_load_roundtrip(tmp_path):
    layout, w = zoo()
    norm = Normalizer.fit(w, layout)
    norm.save(tmp_path / "n.json")
    again = Normalizer.load(tmp_path / "n.json")
    assert torch.equal(again.mean, norm.mean) and torch.equal(again.std, norm.std)
    assert torch.equal(again.inverse(norm.transform(w)), w)


def test_constant_tensor_and_bad_input():
    layout, w = zoo()
    w[:, layout["layers.0.bias"].offset:layout["layers.0.bias"].offset + 16] = 0.5
    norm = Normalizer.fit(w, layout)
    assert torch.equal(norm.inverse(norm.transform(w)), w)
    with pytest.raises(UserError, match="values per model"):
        norm.transform(w[:, :-1])
    bad = w.clone()
    bad[2, 7] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        Normalizer.fit(bad, layout)
    with pytest.raises(UserError, match="NaN"):
        norm.transform(bad)
