"""Hypernetworks (`--method hyper`): shapes per architecture, MIP, theta_0, task-mode fit, continual, seeds, files."""
from __future__ import annotations

import math

import pytest
import torch

from generators import load_generator
from generators.hyper import HyperNetwork
from generators.hyper.continual import accuracy_on_tasks, finetune_sequence
from generators.hyper.encoding import mip_encode
from generators.hyper.losses import TaskBatches, task_losses
from generators.hyper.nets import plan_chunks
from generators.registry import get_method
from store.errors import UserError
from wsl.evaluate import evaluate
from zoo import config_for, load_dataset
from zoo.population import layout_for

TASKS = ["digits-pair:0-1", "digits-pair:2-3"]
TINY = dict(hidden=32, depth=1, cond_dim=8, set_hidden=16, z_dim=4, batch_size=32, max_per_class=16, tasks_per_step=2,
            z_per_task=2, chunk_emb=8)


@pytest.fixture(scope="module")
def layout():
    return layout_for(config_for(load_dataset(TASKS[0]), {"name": "mlp", "width": 8, "depth": 1}))


def _losses(gen, layout, n=4, seed=5):
    """Mean train loss of n generated models per task, on each task's whole train split."""
    out = []
    for name in TASKS:
        d = load_dataset(name)
        w, _ = gen.sample(n, name, seed=seed)
        with torch.no_grad():
            out.append(float(task_losses(layout, w, d.x_train[None], d.y_train[None], n).mean()))
    return out


def test_registered_and_fits_without_weights():
    cls = get_method("hyper")
    assert cls is HyperNetwork and cls.needs_weights is False


@pytest.mark.parametrize("arch", ["mlp", "chunked", "rnn"])
@pytest.mark.parametrize("mip", [True, False])
def test_each_architecture_generates_the_layouts_shape(layout, arch, mip):
    gen = HyperNetwork(arch=arch, mip=mip, steps=2, chunk_size=64, **TINY).fit_tasks(layout, TASKS)
    w, lay = gen.sample(3, TASKS[1], seed=0)
    assert lay == layout and w.shape == (3, layout.num_params) and bool(torch.isfinite(w).all())


def test_mip_encoding_has_constant_norm():
    x = torch.rand(100, 7)
    x[0], x[1] = 0.0, 1.0
    u = mip_encode(x)
    assert u.shape == (100, 14)
    assert torch.allclose(u.norm(dim=1), torch.full((100,), math.sqrt(7)), atol=1e-5)


def test_theta0_from_a_checkpoint_is_reproduced_at_zero_delta(layout, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ckpt = layout.build_module()
    save_file({k: v.contiguous() for k, v in ckpt.state_dict().items()}, str(tmp_path / "ckpt.safetensors"))
    gen = HyperNetwork(theta0=str(tmp_path / "ckpt.safetensors"), steps=0, imprint=False, **TINY).fit_tasks(layout, TASKS)
    with torch.no_grad():
        gen.modules["hyper"].net.out.weight.zero_()
        gen.modules["hyper"].net.out.bias.zero_()
    w, _ = gen.sample(2, TASKS[0], seed=0)
    assert torch.equal(w, layout.flatten(ckpt).expand(2, -1))


def test_task_mode_fit_lowers_both_losses(layout):
    before = _losses(HyperNetwork(steps=0, **TINY).fit_tasks(layout, TASKS), layout)
    after = _losses(HyperNetwork(steps=150, lr=3e-3, **TINY).fit_tasks(layout, TASKS), layout)
    assert all(a < 0.5 * b for a, b in zip(after, before)), (before, after)


def test_task_batches_draw_each_tasks_own_samples():
    ds = [load_dataset(t) for t in TASKS]
    x, y = TaskBatches(ds).draw(torch.tensor([1, 0]), 16, torch.Generator().manual_seed(0))
    assert x.shape == (2, 16, *ds[0].input_shape) and y.shape == (2, 16)
    rows0 = {tuple(r.flatten().tolist()) for r in ds[0].x_train}
    assert all(tuple(r.flatten().tolist()) in rows0 for r in x[1])


def test_continual_keeps_task_one_better_than_fine_tuning(layout):
    # task 2 relabels task 1's classes the other way round: plain fine-tuning must forget task 1
    tasks = [load_dataset("digits-pair:0-1"), load_dataset("digits-pair:1-0")]
    gen = HyperNetwork(continual=True, steps=150, lr=3e-3, **TINY).fit_tasks(layout, tasks)
    hyper_acc = accuracy_on_tasks(gen, tasks)
    _, after = finetune_sequence(layout, tasks, steps=150)
    assert after[0][0] > 0.9  # fine-tuning did learn task 1 ...
    assert hyper_acc[0] > after[-1][0] + 0.3, (hyper_acc, after)  # ... and forgot it; the hypernetwork did not
    assert hyper_acc[1] > 0.9


def test_seeds_reproduce_and_noise_gives_distinct_models(layout):
    a = HyperNetwork(steps=20, diversity=0.1, **TINY).fit_tasks(layout, TASKS)
    b = HyperNetwork(steps=20, diversity=0.1, **TINY).fit_tasks(layout, TASKS)
    assert a.generator_id == b.generator_id
    wa, wb = a.sample(4, TASKS[0], seed=1)[0], b.sample(4, TASKS[0], seed=1)[0]
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, a.sample(4, TASKS[0], seed=2)[0])
    assert float((wa[0] - wa[1]).abs().max()) > 0  # n draws of z: n different models
    c = HyperNetwork(steps=5, init_noise=0.5, **TINY).fit_tasks(layout, TASKS)
    wc = c.sample(4, TASKS[0], seed=1)[0]
    assert torch.equal(wc, c.sample(4, TASKS[0], seed=1)[0])
    assert float((wc[0] - wc[1]).std()) > 0.1 * float(c.modules["hyper"].scales.min())  # per-model init perturbation


def test_save_load_round_trip(layout, tmp_path):
    for cfg in (dict(arch="rnn", chunk_size=64), dict(arch="chunked", continual=True, chunk_size=64)):
        gen = HyperNetwork(steps=5, **TINY, **cfg).fit_tasks(layout, TASKS)
        gen.save_pretrained(tmp_path / cfg["arch"])
        back = load_generator(tmp_path / cfg["arch"])
        assert isinstance(back, HyperNetwork) and back.generator_id == gen.generator_id
        for t in (*TASKS, "digits-pair:4-5"):
            assert torch.equal(back.sample(3, t, seed=4)[0], gen.sample(3, t, seed=4)[0])


@pytest.mark.parametrize("options, needle", [
    (dict(arch="transformer"), "unknown hypernetwork arch"),
    (dict(mode="gan"), "unknown hypernetwork fit mode"),
    (dict(theta0="zoo-mean"), "needs zoo weights"),
    (dict(continual=True, mode="both"), "continual"),
    (dict(steps=-1), "steps"),
])
def test_bad_options_are_user_errors(options, needle):
    with pytest.raises(UserError, match=needle):
        HyperNetwork(**options)


def test_zoo_modes_need_checkpoints(layout):
    with pytest.raises(UserError, match="regresses onto zoo checkpoints"):
        HyperNetwork(mode="zoo", steps=1, **TINY).fit_tasks(layout, TASKS)


def test_zoo_and_both_modes_fit_on_checkpoints(layout):
    from generators.hyper.continual import per_task_models

    w, _ = per_task_models(layout, [load_dataset(t) for t in TASKS], steps=30)
    w = torch.cat([w, w + 0.01 * torch.randn_like(w)])
    for mode in ("zoo", "both"):
        gen = HyperNetwork(mode=mode, theta0="zoo-mean", steps=10, **TINY).fit_tensors(w, layout, TASKS * 2)
        assert gen.sample(2, TASKS[0], seed=0)[0].shape == (2, layout.num_params)
        assert gen.fit_info["final_zoo_loss"] >= 0


def test_tasks_that_do_not_fit_the_layout_are_refused(layout):
    with pytest.raises(UserError, match="does not fit"):
        HyperNetwork(steps=1, **TINY).fit_tasks(layout, ["digits-pair:0-1", "digits"])  # 10 classes, 2 outputs
    with pytest.raises(UserError, match="does not fit"):
        HyperNetwork(steps=1, **TINY).fit_tasks(layout, ["mnist1d"])


def test_chunk_sizes_that_do_not_divide_sensibly_name_ones_that_do(layout):
    p = layout.num_trainable
    with pytest.raises(UserError, match="use chunk_size=auto or one of") as e:
        plan_chunks(p, p - 1)  # two chunks, the second almost all padding
    with pytest.raises(UserError, match="larger than"):
        HyperNetwork(arch="rnn", chunk_size=10 ** 6, steps=1, **TINY).fit_tasks(layout, TASKS)
    for size in e.value.fix.split("one of ")[1].split(", "):
        assert plan_chunks(p, int(size))[0] == int(size)
    assert plan_chunks(p, "auto")[1] >= 2


def test_imprinted_head_is_a_nearest_class_mean_classifier(layout):
    from generators.hyper.imprint import Imprint, final_linear

    assert final_linear(layout, 2) == ("layers.1.weight", "layers.1.bias") and final_linear(layout, 3) is None
    imp = Imprint.for_layout(layout, 2)
    d = load_dataset(TASKS[0])
    torch.manual_seed(0)
    w = torch.zeros(1, layout.num_params)
    w[0, :64 * 8 + 8] = layout.flatten(layout.build_module())[:64 * 8 + 8]  # a random body, a zero head
    out = imp(w, layout, d.x_train, d.y_train, shared=True)
    acc = float(evaluate(out, layout, d).accuracy[0])
    assert acc > 0.9  # class means of random ReLU features already separate 0 from 1
