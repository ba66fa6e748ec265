"""Batched BatchNorm equals the per-model nn.Module: forward, running statistics and one SGD step, train and eval."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsl import ParamLayout, UserError
from wsl.functional import population_forward

ARCHS = {
    "resnet": ({"name": "resnet", "in_channels": 1, "image_size": 8, "out_features": 5, "width": 3,
                "blocks": [1, 2]}, (1, 8, 8)),
    "resnet1d": ({"name": "resnet1d", "in_channels": 1, "length": 20, "out_features": 4, "width": 3,
                  "blocks": [1, 1], "bn_momentum": 0.3}, (1, 20)),
    "cnn2d_bn": ({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 5, "width": 3,
                  "batchnorm": True}, (1, 8, 8)),
    "cnn1d_bn": ({"name": "cnn1d", "in_channels": 1, "length": 20, "out_features": 4, "width": 3, "depth": 2,
                  "batchnorm": True, "bn_eps": 1e-3}, (1, 20)),
    "resnet_nobn": ({"name": "resnet", "in_channels": 2, "image_size": 6, "out_features": 3, "width": 2,
                     "blocks": [1, 1], "batchnorm": False}, (2, 6, 6)),
}
N, B = 3, 6


def population(arch, n=N, seed=0):
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(arch)
    mods = [layout.build_module() for _ in range(n)]
    with torch.no_grad():
        for m in mods:  # non-trivial BN affine and running statistics, so every term is exercised
            for name, t in list(m.named_parameters()) + list(m.named_buffers()):
                if name.endswith("running_var"):
                    t.uniform_(0.5, 2.0)
                elif name.endswith("num_batches_tracked"):
                    t.fill_(7)
                elif t.is_floating_point():
                    t.add_(0.1 * torch.randn_like(t))
    return layout, mods, layout.flatten(mods)


@pytest.mark.parametrize("key", list(ARCHS))
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("path", ["fast", "generic"])
def test_forward_and_running_stats_equal_modules(key, train, path):
    arch, shape = ARCHS[key]
    layout, mods, flat = population(arch)
    x = torch.randn(N, B, *shape)
    out, new = population_forward(layout, layout.unflatten(flat), x, shared_input=False, train=train,
                                  return_buffers=True, generic=path == "generic")
    refs = torch.stack([m.train(train)(x[i]) for i, m in enumerate(mods)])
    torch.testing.assert_close(out, refs, rtol=1e-5, atol=1e-5)
    after = layout.flatten(mods)  # the modules' buffers after their forward (updated only in train mode)
    got = flat.clone()
    for e in layout.buffer_entries:
        got[:, e.offset:e.offset + e.numel] = new[e.name].reshape(N, -1)
    torch.testing.assert_close(got, after, rtol=1e-5, atol=1e-6)
    assert torch.equal(flat[:, :layout.num_trainable], after[:, :layout.num_trainable])


@pytest.mark.parametrize("key", ["resnet", "cnn1d_bn"])
def test_shared_input_uses_each_models_batch_statistics(key):
    arch, shape = ARCHS[key]
    layout, mods, flat = population(arch)
    x = torch.randn(B, *shape)
    out = population_forward(layout, layout.unflatten(flat), x, train=True)
    torch.testing.assert_close(out, torch.stack([m.train()(x) for m in mods]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", list(ARCHS))
def test_one_sgd_step_equals_torch_optim(key):
    arch, shape = ARCHS[key]
    layout, mods, flat = population(arch)
    x = torch.randn(N, B, *shape)
    y = torch.randint(0, arch["out_features"], (N, B))
    lr = torch.tensor([0.05, 0.1, 0.2])
    for i, m in enumerate(mods):
        opt = torch.optim.SGD(m.parameters(), lr=float(lr[i]), momentum=0.9)
        opt.zero_grad()
        F.cross_entropy(m.train()(x[i]), y[i]).backward()
        opt.step()
    want = layout.flatten(mods)
    T = layout.num_trainable
    views = layout.unflatten(flat.clone())
    leaves = {n: views[n].clone().requires_grad_(True) for n in layout.trainable_names}
    out, new = population_forward(layout, {**views, **leaves}, x, shared_input=False, train=True, return_buffers=True)
    loss = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    g = torch.cat([t.reshape(N, -1) for t in grads], 1)
    got = flat.clone()
    got[:, :T] -= lr[:, None] * g  # first SGD step with momentum: the buffer is the gradient
    for e in layout.buffer_entries:
        got[:, e.offset:e.offset + e.numel] = new[e.name].reshape(N, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_layout_keeps_buffers_after_parameters_and_round_trips():
    arch, shape = ARCHS["resnet"]
    layout, mods, flat = population(arch)
    assert layout.num_params == layout.num_trainable + layout.num_buffers and layout.num_buffers > 0
    assert all(not e.buffer for e in layout.entries[:len(layout.param_entries)])
    assert layout.trainable.sum() == layout.num_trainable and not layout.trainable[layout.num_trainable:].any()
    assert layout["bn1.num_batches_tracked"].dtype == "int64"
    again = ParamLayout.from_json(layout.to_json())
    assert again.layout_id == layout.layout_id and again.buffer_names == layout.buffer_names
    m = again.load_into(again.build_module(), flat[1]).eval()
    x = torch.randn(4, *shape)
    assert torch.equal(m(x), mods[1].eval()(x))
    sd = again.state_dict(flat[1])
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64 and int(sd["bn1.num_batches_tracked"]) == 7
    fresh = again.build_module()
    fresh.load_state_dict(sd)
    assert torch.equal(layout.flatten(fresh), flat[1])


def test_layouts_without_buffers_keep_their_json():
    layout = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "width": 5, "depth": 1})
    assert "buffers" not in layout.to_dict() and layout.num_trainable == layout.num_params
    assert layout.trainable_layout() is layout


def test_buffer_mismatch_and_inexact_counters_are_user_errors():
    arch, _ = ARCHS["cnn2d_bn"]
    layout, mods, flat = population(arch)
    no_stats = layout.build_module()  # the same parameters, BatchNorm without running statistics (no buffers)
    no_stats.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(n.num_features, track_running_stats=False)
                                         for n in no_stats.norms)
    with pytest.raises(UserError, match="has buffers"):
        layout.load_into(no_stats, flat[0])
    sd = mods[0].state_dict()
    del sd["norms.0.running_mean"]
    with pytest.raises(UserError, match="missing.*norms.0.running_mean"):
        layout.flatten(sd)
    mods[0].norms[0].num_batches_tracked.fill_(2 ** 25)
    with pytest.raises(UserError, match="not exact in float32"):
        layout.flatten(mods[0])
    lying = ParamLayout(layout.to_dict()["params"], "float32", layout.arch)  # the same parameters, no buffers
    with pytest.raises(UserError, match="buffers"):
        lying.build_module()
    with pytest.raises(UserError, match="BatchNorm statistics are buffers"):
        params = {n: t for n, t in layout.unflatten(flat).items() if n in layout.trainable_names}
        population_forward(layout, params, torch.randn(2, 1, 8, 8))


def test_batchnorm_asked_of_an_architecture_without_it():
    with pytest.raises(UserError, match="'mlp' has no BatchNorm"):
        ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "batchnorm": True})
    with pytest.raises(UserError, match="without batchnorm = true"):
        ParamLayout.from_config({"name": "cnn2d", "image_size": 8, "out_features": 3, "bn_momentum": 0.2})


def test_tokenizers_normalizer_and_pruning_treat_buffers_as_documented():
    from wsl.normalize import Normalizer
    from wsl.prune import magnitude_prune, prunable_mask
    from wsl.tokenize import ChunkTokenizer, NeuronTokenizer, tokenizer_from_dict

    arch, _ = ARCHS["resnet"]
    layout, _, flat = population(arch)
    T = layout.num_trainable
    pairs = [(NeuronTokenizer(layout), NeuronTokenizer(layout, include_buffers=False)),
             (ChunkTokenizer(layout, 16), ChunkTokenizer(layout, 16, include_buffers=False)),
             (ChunkTokenizer(layout, 16, per_tensor=False), ChunkTokenizer(layout, 16, False, include_buffers=False))]
    for tok, only in pairs:
        assert torch.equal(tok.decode(tok.encode(flat)), flat)  # default: buffers are tokens too
        assert "include_buffers" not in tok.to_dict()
        t = only.encode(flat)
        assert t.numel() < tok.encode(flat).numel()
        with pytest.raises(UserError, match="exclude the layout's"):
            only.decode(t)
        assert torch.equal(only.decode(t, buffers=flat[:, T:]), flat)
        again = tokenizer_from_dict(only.to_dict())
        assert torch.equal(again.encode(flat), t) and not again.include_buffers
    norm = Normalizer.fit(flat, layout)
    assert torch.equal(norm.inverse(norm.transform(flat)), flat)
    keep = Normalizer.fit(flat, layout, include_buffers=False)
    z = keep.transform(flat)
    assert torch.equal(z[:, T:], flat[:, T:].double()) and not torch.equal(z[:, :T], flat[:, :T].double())
    assert not prunable_mask(layout, include_bias=True)[T:].any()
    pruned, _ = magnitude_prune(flat, layout, 0.9, include_bias=True)
    assert torch.equal(pruned[:, T:], flat[:, T:])


@pytest.mark.parametrize("key", ["resnet", "resnet1d", "cnn2d_bn", "cnn1d_bn"])
def test_prepared_params_fold_batchnorm_for_evaluation_only(key):
    from wsl.functional import prepare_params

    arch, shape = ARCHS[key]
    layout, mods, flat = population(arch)
    x = torch.randn(B, *shape)
    with torch.no_grad():
        ref = torch.stack([m.eval()(x) for m in mods])
        prepared = prepare_params(layout, layout.unflatten(flat))
        torch.testing.assert_close(population_forward(layout, prepared, x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="train mode"):
        population_forward(layout, prepared, x, train=True)
