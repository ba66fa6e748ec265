"""Fused evaluation gives the per-model loop's predictions and losses, for every architecture."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsl import Dataset, ParamLayout, UserError
from wsl.evaluate import evaluate, plan_tiles


def classification_data(shape, n=50, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, *shape, generator=g)
    y = torch.randint(0, classes, (2 * n,), generator=g)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], "classification", classes)


def regression_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2 * n, 2, generator=g)
    y = torch.sin(3 * x.sum(1, keepdim=True))
    return Dataset("toy-fit", x[:n], y[:n], x[n:], y[n:], "regression")


ARCHS = {
    "mlp": ({"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 2}, (1, 8, 8)),
    "cnn2d": ({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 10, "width": 4}, (1, 8, 8)),
    "cnn1d": ({"name": "cnn1d", "in_channels": 1, "length": 40, "out_features": 10, "width": 6, "depth": 3},
              (1, 40)),
    "transformer": ({"name": "transformer", "seq_len": 10, "token_dim": 4, "out_features": 10, "width": 8,
                     "depth": 2, "heads": 2}, (1, 40)),
}


def zoo(arch, n=6, seed=0):
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(arch)
    return layout, layout.flatten([layout.build_module() for _ in range(n)])


def loop(layout, flat, x):
    m = layout.build_module().eval()
    with torch.no_grad():
        return torch.stack([layout.load_into(m, w)(x) for w in flat])


@pytest.mark.parametrize("key", list(ARCHS))
@pytest.mark.parametrize("tiles", [{}, {"batch_size": 7, "cohort_size": 4}])
def test_fused_matches_per_model_loop(key, tiles):
    arch, shape = ARCHS[key]
    layout, flat = zoo(arch)
    ds = classification_data(shape)
    res = evaluate(flat, layout, ds, return_predictions=True, **tiles)
    logits = loop(layout, flat, ds.x_test)
    assert torch.equal(res.predictions, logits.argmax(-1))
    ref_loss = torch.stack([F.cross_entropy(lg, ds.y_test) for lg in logits]).double()
    torch.testing.assert_close(res.loss, ref_loss, rtol=1e-5, atol=1e-5)
    ref_acc = (logits.argmax(-1) == ds.y_test).double().mean(1)
    assert torch.equal(res.accuracy, ref_acc)
    df = res.to_frame()
    assert list(df.columns) == ["loss", "accuracy"] and len(df) == len(flat)


def test_train_split_and_one_vector():
    arch, shape = ARCHS["mlp"]
    layout, flat = zoo(arch)
    ds = classification_data(shape)
    res = evaluate(flat[2], layout, ds, split="train")
    logits = loop(layout, flat[2:3], ds.x_train)[0]
    assert len(res) == 1
    assert math.isclose(res.loss.item(), F.cross_entropy(logits, ds.y_train).item(), rel_tol=1e-5)


def test_regression_mse_and_r2():
    arch = {"name": "siren", "in_features": 2, "out_features": 1, "width": 16, "depth": 2, "w0": 5.0}
    layout, flat = zoo(arch, n=4)
    ds = regression_data()
    res = evaluate(flat, layout, ds, return_predictions=True, batch_size=9)
    out = loop(layout, flat, ds.x_test)  # [N, n, 1]
    mse = ((out - ds.y_test) ** 2).mean((1, 2)).double()
    torch.testing.assert_close(res.loss, mse, rtol=1e-5, atol=1e-6)
    sst = ((ds.y_test - ds.y_test.mean(0)) ** 2).sum().double()
    torch.testing.assert_close(res.r2, 1 - mse * ds.y_test.numel() / sst, rtol=1e-5, atol=1e-6)
    assert torch.isnan(res.accuracy).all()
    torch.testing.assert_close(res.predictions, out.squeeze(-1))
    assert "mean_r2" in res.summary()


def test_half_precision_weights_are_evaluated_in_float32():
    arch, shape = ARCHS["mlp"]
    layout, flat = zoo(arch)
    ds = classification_data(shape)
    half = flat.half()
    res = evaluate(half, layout, ds, return_predictions=True)
    ref = loop(layout, half.float(), ds.x_test)
    assert torch.equal(res.predictions, ref.argmax(-1))


def test_planner_keeps_cpu_tiles_cache_sized():
    arch, _ = ARCHS["cnn2d"]
    layout, _ = zoo(arch, n=1)
    from wsl.evaluate import CPU_TILE_BYTES, activation_floats

    cohort, b = plan_tiles(layout, 4096, 10000)
    assert 1 <= cohort <= 4096 and 1 <= b <= 10000
    assert activation_floats(layout) == 4 * 8 * 8  # first conv: 4 channels of 8 x 8
    assert cohort * b * 4 * activation_floats(layout) <= CPU_TILE_BYTES
    assert plan_tiles(layout, 3, 5, batch_size=100, cohort_size=2) == (2, 5)


def test_bad_input_is_a_user_error():
    arch, shape = ARCHS["mlp"]
    layout, flat = zoo(arch)
    ds = classification_data(shape)
    with pytest.raises(UserError, match="values per model"):
        evaluate(flat[:, :-3], layout, ds)
    bad = flat.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        evaluate(bad, layout, ds)
    with pytest.raises(UserError, match="do not fit"):
        evaluate(flat, layout, classification_data((1, 40)))
    with pytest.raises(UserError, match="classes"):
        evaluate(flat, layout, classification_data(shape, classes=12))
    with pytest.raises(UserError, match="split"):
        evaluate(flat, layout, ds, split="validation")
    with pytest.raises(UserError, match="CUDA"):
        if torch.cuda.is_available():
            raise UserError("CUDA present: skip", "")
        evaluate(flat, layout, ds, device="cuda")


@pytest.mark.slow
def test_compiled_forward_matches():
    pytest.importorskip("torch._inductor")
    arch, shape = ARCHS["mlp"]
    layout, flat = zoo(arch)
    ds = classification_data(shape)
    try:
        res = evaluate(flat, layout, ds, return_predictions=True, compile=True)
    except Exception as e:  # no working C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable: {type(e).__name__}")
    assert torch.equal(res.predictions, loop(layout, flat, ds.x_test).argmax(-1))


def test_ties_count_like_argmax():
    """All-zero weights give equal logits: argmax says class 0, so only label-0 samples are hits."""
    arch, shape = ARCHS["mlp"]
    layout, flat = zoo(arch, n=3)
    ds = classification_data(shape)
    zeros = torch.zeros_like(flat)
    res = evaluate(zeros, layout, ds, return_predictions=True, batch_size=16)
    assert (res.predictions == 0).all()
    expect = (ds.y_test == 0).double().mean()
    assert torch.equal(res.accuracy, expect.repeat(3))
    torch.testing.assert_close(res.loss, torch.full((3,), torch.log(torch.tensor(10.0)).item(), dtype=torch.float64))


def test_planner_caps_cohort_weight_memory():
    from wsl.evaluate import CPU_WEIGHT_BYTES

    big = ParamLayout.from_config({"name": "mlp", "in_features": 1024, "out_features": 10, "width": 1024, "depth": 2})
    cohort, _ = plan_tiles(big, 100_000, 100)
    assert cohort * 3 * 4 * big.num_params <= CPU_WEIGHT_BYTES and cohort >= 1


def test_a_head_with_other_classes_than_the_dataset_is_refused():
    from wsl.evaluate import check_fit

    layout, flat = zoo(ARCHS["mlp"][0], n=2)
    two = classification_data((1, 8, 8), classes=2)
    for call in (lambda: check_fit(layout, two), lambda: evaluate(flat, layout, two)):
        with pytest.raises(UserError, match="has 10 outputs .* dataset 'toy' has 2 classes"):
            call()
    with pytest.raises(UserError, match=r"inputs of shape \[40\] do not fit .* 64 input features"):
        check_fit(layout, classification_data((40,)))
