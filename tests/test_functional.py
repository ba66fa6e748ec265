"""population_forward matches build_module() + load_into + forward, for every architecture."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsl import ParamLayout, UserError
from wsl.functional import bernoulli_masks, dropout_sites, population_forward

ARCHS = {
    "mlp": ({"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 2}, (64,)),
    "mlp_tanh_deep": ({"name": "mlp", "in_features": 12, "out_features": 3, "width": 8, "depth": 3,
                       "activation": "tanh"}, (12,)),
    "mlp_linear": ({"name": "mlp", "in_features": 12, "out_features": 3, "depth": 0}, (12,)),
    "siren": ({"name": "siren", "in_features": 2, "out_features": 1, "width": 16, "depth": 3, "w0": 30.0}, (2,)),
    "cnn2d": ({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 10, "width": 4}, (1, 8, 8)),
    "cnn2d_avg_nohidden": ({"name": "cnn2d", "in_channels": 3, "image_size": 8, "out_features": 5, "width": 3,
                            "pooling": "avg", "hidden": 0, "kernel": 5}, (3, 8, 8)),
    "cnn1d": ({"name": "cnn1d", "in_channels": 1, "length": 40, "out_features": 10, "width": 6, "depth": 3},
              (1, 40)),
    "transformer": ({"name": "transformer", "seq_len": 10, "token_dim": 4, "out_features": 10, "width": 8,
                     "depth": 2, "heads": 2}, (1, 40)),
}
N, B = 5, 7


def population(arch, n=N, seed=0):
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(arch)
    mods = [layout.build_module() for _ in range(n)]
    for m in mods:  # perturb biases away from zero so they are tested
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return layout, mods, layout.flatten(mods)


def reference(layout, flat, xs, shared, features=False, train=False):
    outs = []
    for i in range(flat.shape[0]):
        m = layout.load_into(layout.build_module(), flat[i]).train(train)
        xi = xs if shared else xs[i]
        outs.append(m.features(xi) if features else m(xi))
    return torch.stack(outs)


@pytest.mark.parametrize("key", list(ARCHS))
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_matches_per_model_forward(key, shared, train):
    arch, in_shape = ARCHS[key]
    layout, _, flat = population(arch)
    x = torch.randn(B, *in_shape) if shared else torch.randn(N, B, *in_shape)
    ref = reference(layout, flat, x, shared, train=train)
    got = population_forward(layout, layout.unflatten(flat), x, shared_input=shared, train=train)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    feat_ref = reference(layout, flat, x, shared, features=True)
    feat = population_forward(layout, layout.unflatten(flat), x, shared_input=shared, features=True)
    torch.testing.assert_close(feat, feat_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", ["mlp", "cnn2d", "transformer"])
def test_generic_fallback_matches(key):
    arch, in_shape = ARCHS[key]
    layout, _, flat = population(arch)
    x = torch.randn(B, *in_shape)
    fast = population_forward(layout, layout.unflatten(flat), x)
    slow = population_forward(layout, layout.unflatten(flat), x, generic=True)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", list(ARCHS))
def test_gradients_equal_per_model_autograd(key):
    arch, in_shape = ARCHS[key]
    layout, _, flat = population(arch, n=3)
    flat = flat.double()  # float64: SIREN's w0=30 amplifies float32 rounding
    x = torch.randn(N, B, *in_shape)[:3].double()
    y = torch.randint(0, arch["out_features"], (3, B))
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in layout.unflatten(flat).items()}
    out = population_forward(layout, leaves, x, shared_input=False, train=True)
    loss = sum(F.cross_entropy(out[i], y[i]) for i in range(3)) if arch["out_features"] > 1 else (out ** 2).mean(
        (1, 2)).sum()
    loss.backward()
    for i in range(3):
        m = layout.build_module().double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(layout.unflatten(flat[i])[name])
        m.train()
        o = m(x[i])
        li = F.cross_entropy(o, y[i]) if arch["out_features"] > 1 else (o ** 2).mean()
        li.backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(leaves[name].grad[i], p.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("key", ["mlp", "cnn2d", "cnn1d", "transformer"])
def test_dropout_masks_match_module(key, monkeypatch):
    arch, in_shape = ARCHS[key]
    arch = {**arch, "dropout": 0.3}
    layout, _, flat = population(arch, n=3)
    x = torch.randn(B, *in_shape)
    g = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    masks = {}
    draw = bernoulli_masks(0.3, g)
    for site, shape in dropout_sites(layout, B, 3):
        masks[site] = draw(site, shape)
    got = population_forward(layout, layout.unflatten(flat), x, train=True, dropout_masks=masks)
    # the module calls F.dropout in the same site order; feed it model i's masks
    for i in range(3):
        order = iter(sorted(masks))

        def fake_dropout(t, p=0.5, training=True, inplace=False):
            m = masks[next(order)][i]
            return t * m.to(t.dtype) / (1 - p) if training and p > 0 else t

        monkeypatch.setattr(F, "dropout", fake_dropout)
        m = layout.load_into(layout.build_module(), flat[i]).train()
        torch.testing.assert_close(got[i], m(x), rtol=1e-4, atol=1e-4)
        monkeypatch.undo()


def test_per_model_generators_independent_of_cohort():
    arch, in_shape = ARCHS["mlp"]
    layout, _, flat = population({**arch, "dropout": 0.5}, n=4)
    x = torch.randn(B, *in_shape)
    full = population_forward(layout, layout.unflatten(flat), x, train=True,
                              dropout_masks=bernoulli_masks(0.5, [torch.Generator().manual_seed(s) for s in range(4)]))
    sub = population_forward(layout, layout.unflatten(flat[2:3]), x, train=True,
                             dropout_masks=bernoulli_masks(0.5, [torch.Generator().manual_seed(2)]))
    torch.testing.assert_close(full[2:3], sub)
    evald = population_forward(layout, layout.unflatten(flat), x, train=False)
    assert not torch.allclose(full, evald)


def test_bad_inputs():
    arch, in_shape = ARCHS["mlp"]
    layout, _, flat = population(arch)
    with pytest.raises(UserError, match="do not fit"):
        population_forward(layout, layout.unflatten(flat), torch.randn(B, 65))
    with pytest.raises(UserError, match="values per model"):
        layout.unflatten(flat[:, :-1])
    with pytest.raises(UserError, match="lack"):
        population_forward(layout, {"layers.0.weight": torch.zeros(N, 16, 64)}, torch.randn(B, 64))
    with pytest.raises(UserError, match="not \\[N=5"):
        population_forward(layout, layout.unflatten(flat), torch.randn(3, B, 64), shared_input=False)
    cnn, _ = ARCHS["cnn2d"]
    lc, _, fc = population(cnn)
    with pytest.raises(UserError, match="images"):
        population_forward(lc, lc.unflatten(fc), torch.randn(B, 1, 9, 9))


@pytest.mark.parametrize("key", list(ARCHS))
def test_no_grad_path_matches_and_leaves_input_alone(key):
    arch, in_shape = ARCHS[key]
    layout, _, flat = population(arch)
    x = torch.randn(B, *in_shape)
    x0 = x.clone()
    with torch.no_grad():
        got = population_forward(layout, layout.unflatten(flat), x)
        feat = population_forward(layout, layout.unflatten(flat), x, features=True)
    torch.testing.assert_close(got, reference(layout, flat, x, True), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feat, reference(layout, flat, x, True, features=True), rtol=1e-4, atol=1e-4)
    assert torch.equal(x, x0) and torch.equal(flat, layout.flatten([layout.load_into(layout.build_module(), f)
                                                                   for f in flat]))


@pytest.mark.parametrize("key", list(ARCHS))
@pytest.mark.parametrize("grad", [False, True])
def test_batch_last_and_prepared_params(key, grad):
    from wsl.functional import prepare_params

    arch, in_shape = ARCHS[key]
    layout, _, flat = population(arch)
    x = torch.randn(B, *in_shape)
    ref = reference(layout, flat, x, True)
    with torch.set_grad_enabled(grad):
        for params in (layout.unflatten(flat), prepare_params(layout, layout.unflatten(flat))):
            got = population_forward(layout, params, x, batch_last=True)
            assert got.is_contiguous()
            torch.testing.assert_close(got, ref.transpose(1, 2), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(population_forward(layout, params, x), ref, rtol=1e-4, atol=1e-4)
    slow = population_forward(layout, layout.unflatten(flat), x, generic=True, batch_last=True)
    torch.testing.assert_close(slow, ref.transpose(1, 2), rtol=1e-4, atol=1e-4)
