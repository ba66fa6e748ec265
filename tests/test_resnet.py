"""ResNets and BatchNorm in weight space: permutations keep logits, folding keeps logits, averaging after alignment."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from wsl import ParamLayout, UserError, evaluate, fold_batchnorm, reset_running_stats
from wsl.align import align, random_permutation
from wsl.functional import population_forward

sys.path.insert(0, str(Path(__file__).parent))

ARCHS = {
    "resnet": ({"name": "resnet", "in_channels": 1, "image_size": 8, "out_features": 5, "width": 3,
                "blocks": [2, 1, 1]}, (1, 8, 8)),
    "resnet1d": ({"name": "resnet1d", "in_channels": 1, "length": 16, "out_features": 4, "width": 2,
                  "blocks": [1, 2]}, (1, 16)),
    "cnn2d_bn": ({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 5, "width": 3,
                  "batchnorm": True}, (1, 8, 8)),
    "torchvision_names": ({"name": "module", "path": "_tv_resnet:resnet18", "num_classes": 5, "width": 2,
                           "in_channels": 1, "symmetry": "resnet"}, (1, 16, 16)),
}


def zoo(arch, n=3, seed=0):
    from store.architectures import trust_code

    trust_code(arch.get("path", []))
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(arch)
    mods = [layout.build_module() for _ in range(n)]
    with torch.no_grad():
        for m in mods:
            for name, t in m.named_buffers():
                if name.endswith("running_var"):
                    t.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    t.normal_(0, 0.3)
            for name, t in m.named_parameters():
                t.add_(0.1 * torch.randn_like(t))
    return layout, layout.flatten(mods)


@pytest.mark.parametrize("key", list(ARCHS))
@pytest.mark.parametrize("train", [False, True])
def test_permuted_resnet_gives_identical_logits(key, train):
    arch, shape = ARCHS[key]
    layout, w = zoo(arch)
    aug = random_permutation(w, layout, torch.Generator().manual_seed(1))
    assert not torch.equal(aug, w)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        a = population_forward(layout, layout.unflatten(aug), x, train=train)
        b = population_forward(layout, layout.unflatten(w), x, train=train)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["resnet", "torchvision_names"])
def test_weight_matching_undoes_a_resnet_permutation(key):
    arch, _ = ARCHS[key]
    layout, w = zoo(arch, n=1)
    shuffled = random_permutation(w[0], layout, torch.Generator().manual_seed(3))
    assert torch.equal(align(w[0], shuffled, layout), w[0])


@pytest.mark.parametrize("key", ["resnet", "resnet1d", "cnn2d_bn"])
def test_fold_batchnorm_preserves_logits(key):
    arch, shape = ARCHS[key]
    layout, w = zoo(arch)
    folded, plain = fold_batchnorm(w, layout)
    assert plain.num_buffers == 0 and folded.shape == (3, plain.num_params)
    assert not any("bn" in n or "norms" in n or "downsample.1" in n for n in plain.names)
    x = torch.randn(7, *shape)
    with torch.no_grad():
        want = population_forward(layout, layout.unflatten(w), x)
        got = population_forward(plain, plain.unflatten(folded), x)
        m = plain.load_into(plain.build_module(), folded[1]).eval()
        torch.testing.assert_close(m(x), want[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="no BatchNorm to fold"):
        fold_batchnorm(folded, plain)


def test_reset_running_stats_equals_torch_update_bn():
    arch, shape = ARCHS["resnet"]
    layout, w = zoo(arch)
    x = torch.randn(50, *shape)
    got = reset_running_stats(w, layout, x, batch_size=16)  # batches of 16, 16, 16, 2
    assert torch.equal(got[:, :layout.num_trainable], w[:, :layout.num_trainable])
    for i in range(3):
        m = layout.load_into(layout.build_module(), w[i])
        loader = [x[:16], x[16:32], x[32:48], x[48:]]
        torch.optim.swa_utils.update_bn(loader, m)
        torch.testing.assert_close(got[i], layout.flatten(m), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_aligned_average_of_two_resnet_seeds_beats_naive():
    """Both midpoints get their own BatchNorm statistics (averaged statistics are not the average model's)."""
    from zoo import expand, load_dataset
    from zoo.population import CohortTrainer, layout_for

    rows = expand({"name": "avg", "dataset": "digits", "epochs": 5, "batch_size": 64, "seeds": 2,
                   "architecture": {"name": "resnet", "width": 16, "blocks": [1, 1]},
                   "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "schedule": {"name": "cosine"}})
    final = CohortTrainer(rows).run().final
    layout = layout_for(json.loads(rows[0]["arch_config"]))
    ds = load_dataset("digits")
    w0, w1 = final.params[0], final.params[1]
    naive = (w0 + w1) / 2
    aligned = (w0 + align(w0, w1, layout)) / 2
    both = reset_running_stats(torch.stack([naive, aligned]), layout, ds.x_train)
    res = evaluate(both, layout, ds)
    ends = evaluate(final.params, layout, ds)
    assert float(ends.accuracy.min()) > 0.9
    assert float(res.loss[1]) < float(res.loss[0]) and float(res.accuracy[1]) > float(res.accuracy[0]), (
        res.loss, res.accuracy)


def test_population_hessian_of_batchnorm_models_is_the_eval_mode_hessian_over_parameters():
    from zoo.landscape.hessian import PopulationHessian, hutchinson_trace

    arch, shape = ARCHS["resnet1d"]
    layout, w = zoo(arch, n=2)
    x, y = torch.randn(12, *shape), torch.randint(0, arch["out_features"], (12,))
    hess = PopulationHessian(layout, w, [(x, y)])
    assert hess.n_params == layout.num_trainable
    v = torch.randn(2, layout.num_trainable)
    hv = hess.hvp(v)
    for i in range(2):  # reference: the module in eval mode, double backward over its parameters only
        m = layout.load_into(layout.build_module(), w[i]).eval()
        ps = list(m.parameters())
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), y), ps, create_graph=True)
        vi = list(layout.trainable_layout().unflatten(v[i]).values())
        ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(g, ps, grad_outputs=vi)])
        torch.testing.assert_close(hv[i], ref, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(hutchinson_trace(hess, probes=2)).all()
