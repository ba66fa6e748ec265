"""Functional population optimizers follow torch.optim step for step, with per-model hyperparameters."""
import pytest
import torch

from store.errors import UserError
from zoo.optim import PopulationOptimizer, lr_factor

M, P = 3, 40
HP = {
    "sgd": dict(lr=[0.1, 0.01, 0.05], momentum=[0.9, 0.5, 0.0], weight_decay=[0.0, 0.1, 0.01]),
    "adam": dict(lr=[1e-2, 1e-3, 3e-3], beta1=[0.9, 0.8, 0.95], beta2=[0.999, 0.99, 0.9], eps=[1e-8, 1e-6, 1e-8],
                 weight_decay=[0.0, 0.1, 0.01]),
    "adamw": dict(lr=[1e-2, 1e-3, 3e-3], beta1=[0.9, 0.8, 0.95], beta2=[0.999, 0.99, 0.9], eps=[1e-8, 1e-6, 1e-8],
                  weight_decay=[0.0, 0.1, 0.01]),
}


def torch_optimizer(kind, param, i):
    h = {k: v[i] for k, v in HP[kind].items()}
    if kind == "sgd":
        return torch.optim.SGD([param], lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls([param], lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"], weight_decay=h["weight_decay"])


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_matches_torch_optim_per_model(kind):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(M, P, generator=g)
    ours = p0.clone()
    opt = PopulationOptimizer(kind, num_params=P, **HP[kind])
    refs = []
    for i in range(M):
        t = torch.nn.Parameter(p0[i].clone())
        refs.append((t, torch_optimizer(kind, t, i)))
    for step in range(25):
        grads = torch.randn(M, P, generator=g)
        factor = lr_factor({"name": "cosine"}, step, 25)
        opt.step(ours, grads, factor)
        for i, (t, o) in enumerate(refs):
            for group in o.param_groups:
                group["lr"] = HP[kind]["lr"][i] * factor
            t.grad = grads[i].clone()
            o.step()
    ref = torch.stack([t.detach() for t, _ in refs])
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_state_vector_resumes_exactly_and_select_keeps_the_others(kind):
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(M, P, generator=g) for _ in range(10)]
    p_full = torch.randn(M, P, generator=g)
    p_half = p_full.clone()
    full = PopulationOptimizer(kind, num_params=P, **HP[kind])
    for gr in grads:
        full.step(p_full, gr)
    first = PopulationOptimizer(kind, num_params=P, **HP[kind])
    for gr in grads[:4]:
        first.step(p_half, gr)
    second = PopulationOptimizer(kind, num_params=P, **HP[kind])
    second.load_state_vector(first.state_vector().clone(), first.step_count)
    for gr in grads[4:]:
        second.step(p_half, gr)
    assert torch.equal(p_half, p_full)
    # dropping model 1 leaves models 0 and 2 on exactly their trajectories
    p_sel = torch.randn(M, P, generator=torch.Generator().manual_seed(2))
    p_ref = p_sel.clone()
    a = PopulationOptimizer(kind, num_params=P, **HP[kind])
    b = PopulationOptimizer(kind, num_params=P, **HP[kind])
    for i, gr in enumerate(grads):
        b.step(p_ref, gr)
        if i == 3:
            keep = torch.tensor([0, 2])
            a.select(keep)
            p_sel = p_sel[keep]
        a.step(p_sel, gr if i < 3 else gr[[0, 2]])
    assert torch.equal(p_sel, p_ref[[0, 2]])


def test_schedules_match_torch_schedulers():
    total, base = 40, 0.1
    param = torch.nn.Parameter(torch.zeros(1))
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([param], lr=base), T_max=total)
    one = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([param], lr=base), max_lr=base, total_steps=total,
                                              cycle_momentum=False)
    for step in range(total):
        assert lr_factor({"name": "cosine"}, step, total) * base == pytest.approx(cos.get_last_lr()[0], rel=1e-6, abs=1e-12)
        assert lr_factor({"name": "onecycle"}, step, total) * base == pytest.approx(one.get_last_lr()[0], rel=1e-6, abs=1e-12)
        assert lr_factor({"name": "constant"}, step, total) == 1.0
        cos.optimizer.step(), cos.step()
        one.optimizer.step(), one.step()
    assert lr_factor({"name": "cosine", "final_lr_fraction": 0.1}, total, total) == pytest.approx(0.1)


def test_bad_hyperparameters():
    with pytest.raises(UserError, match="lr > 0"):
        PopulationOptimizer("sgd", lr=[0.1, 0.0], num_params=4)
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop'"):
        PopulationOptimizer("rmsprop", lr=0.1, num_params=4)
    with pytest.raises(UserError, match="momentum has 3 values for 2 models"):
        PopulationOptimizer("sgd", lr=[0.1, 0.2], momentum=[0.9, 0.9, 0.9], num_params=4)
    with pytest.raises(UserError, match="unknown schedule"):
        lr_factor({"name": "step"}, 0, 10)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_per_tensor_gradients_update_like_one_flat_gradient(kind):
    g = torch.Generator().manual_seed(3)
    p_flat = torch.randn(M, P, generator=g)
    p_pieces = p_flat.clone()
    a = PopulationOptimizer(kind, num_params=P, **HP[kind])
    b = PopulationOptimizer(kind, num_params=P, **HP[kind])
    for _ in range(5):
        grads = torch.randn(M, P, generator=g)
        a.step(p_flat, grads, 0.5)
        b.step(p_pieces, [grads[:, :10].reshape(M, 2, 5), grads[:, 10:13], grads[:, 13:].reshape(M, 3, 9)], 0.5)
    torch.testing.assert_close(p_pieces, p_flat, rtol=0, atol=0)
    torch.testing.assert_close(b.state_vector(), a.state_vector(), rtol=0, atol=0)
    with pytest.raises(UserError, match="gradients cover 13 parameters"):
        b.step(p_pieces, [grads[:, :10], grads[:, 10:13]])
