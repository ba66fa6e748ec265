"""The cohort trainer: a model trained inside a cohort equals the same model trained alone."""
import json

import pytest
import torch
import torch.nn.functional as F

from zoo import build, expand, load_dataset
from zoo.optim import lr_factor
from zoo.population import (CohortTrainer, ResumeState, data_order, group_cohorts, init_params, layout_for)


def base(**over):
    d = {"name": "pop", "dataset": "digits", "epochs": 2, "batch_size": 64, "seeds": [0, 1],
         "architecture": {"name": "mlp", "width": 8, "depth": 2}}
    d.update(over)
    return d


def solo_torch(row):
    """The reference: one model, one torch.optim optimizer, a plain PyTorch loop over its own data order."""
    arch = json.loads(row["arch_config"])
    ds = load_dataset(row["dataset"], row["data_seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(row["seed"])
        model = build(arch)
    if row["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=row["lr"], momentum=row["momentum"], weight_decay=row["weight_decay"])
    else:
        cls = torch.optim.Adam if row["optimizer"] == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), lr=row["lr"], betas=(row["beta1"], row["beta2"]), eps=row["eps"],
                  weight_decay=row["weight_decay"])
    schedule = json.loads(row["hparams"])["schedule"]
    total = row["epochs"] * row["steps_per_epoch"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(schedule, k, total))
    for epoch in range(1, row["epochs"] + 1):
        for idx in data_order(row["seed"], epoch, len(ds.x_train)).split(row["batch_size"]):
            loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    return layout_for(arch).flatten(model), acc


def train(rows, **kw):
    cks = []
    result = CohortTrainer(rows, **kw).run(on_checkpoint=cks.append)
    return cks, result


OPTIMIZERS = {
    "sgd-momentum": {"optimizer": {"name": "sgd", "lr": [0.1, 0.03], "momentum": [0.9, 0.5], "weight_decay": [0.0, 1e-3]}},
    "adam-cosine": {"optimizer": {"name": "adam", "lr": [1e-2, 3e-3], "beta1": [0.9, 0.8], "weight_decay": [0.0, 1e-2]},
                    "schedule": {"name": "cosine"}},
    "adamw-onecycle": {"optimizer": {"name": "adamw", "lr": [1e-2, 3e-3], "beta2": [0.999, 0.99]},
                       "schedule": {"name": "onecycle"}},
}


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_cohort_equals_solo_with_differing_hyperparameters(which):
    rows = expand(base(**OPTIMIZERS[which]))
    assert len(rows) >= 8 and len(group_cohorts(rows)) == 1  # one cohort: hyperparameter combos x 2 seeds
    cks, result = train(rows)
    assert [c.epoch for c in cks] == [0, 1, 2] and set(result.status.values()) == {"done"}
    final = cks[-1]
    for i, row in enumerate(rows):
        ref, acc = solo_torch(row)
        torch.testing.assert_close(final.params[i], ref, rtol=1e-4, atol=1e-5)
        assert final.metrics["test_acc"][i] == pytest.approx(acc, abs=1.5 / len(load_dataset("digits").x_test))


def test_cnn_cohort_equals_solo():
    rows = expand(base(epochs=1, batch_size=128, architecture={"name": "cnn2d", "width": 4},
                       optimizer={"name": "sgd", "lr": [0.05, 0.02], "momentum": 0.9}))
    cks, _ = train(rows)
    for i, row in enumerate(rows):
        ref, _ = solo_torch(row)
        torch.testing.assert_close(cks[-1].params[i], ref, rtol=1e-4, atol=1e-5)


def test_dropout_masks_come_from_each_models_own_seed():
    rows = expand(base(seeds=[0, 1, 2], architecture={"name": "mlp", "width": 16, "dropout": 0.3},
                       optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}))
    cks, _ = train(rows)
    for i, row in enumerate(rows):
        alone, _ = train([row])
        torch.testing.assert_close(cks[-1].params[i], alone[-1].params[0], rtol=1e-5, atol=1e-6)
    # same init (seed) would differ only through dropout + data order: seeds give different models
    assert not torch.allclose(cks[-1].params[0], cks[-1].params[1])


def test_tasks_of_different_sizes_share_a_cohort():
    rows = expand(base(dataset=["digits-pair:0-1", "digits-pair:3-5", "digits-pair:4-9"], batch_size=32, seeds=[0],
                       optimizer={"name": "adam", "lr": 0.01}))
    sizes = {r["n_train"] for r in rows}
    assert len(sizes) > 1  # the tasks differ in size ...
    cohorts = group_cohorts(rows)
    assert any(len({r["n_train"] for r in c}) > 1 for c in cohorts)  # ... and still share a cohort
    for cohort in cohorts:
        cks, _ = train(cohort)
        for i, row in enumerate(cohort):
            ref, acc = solo_torch(row)
            torch.testing.assert_close(cks[-1].params[i], ref, rtol=1e-4, atol=1e-5)
            assert cks[-1].metrics["test_acc"][i] == pytest.approx(acc, abs=1e-6)


def test_a_diverging_model_is_dropped_and_the_others_keep_training():
    good = expand(base(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}))
    bad = expand(base(optimizer={"name": "sgd", "lr": 1e30, "momentum": 0.9}, seeds=[0]))
    diverged = []
    cks = []
    result = CohortTrainer(good[:1] + bad + good[1:]).run(on_checkpoint=cks.append,
                                                        on_diverged=lambda ids, e: diverged.append((ids, e)))
    assert diverged == [([bad[0]["model_id"]], 1)]
    assert result.status[bad[0]["model_id"]] == "diverged" and result.diverged_epoch[bad[0]["model_id"]] == 1
    assert [c.epoch for c in cks] == [0, 1, 2] and len(cks[0].model_ids) == 3 and len(cks[-1].model_ids) == 2
    alone, _ = train(good)
    torch.testing.assert_close(cks[-1].params, alone[-1].params, rtol=1e-5, atol=1e-6)


def test_resume_from_a_checkpoint_continues_exactly():
    rows = expand(base(epochs=3, optimizer={"name": "adam", "lr": [0.01, 0.003]}))
    full, _ = train(rows)
    mid = full[1]  # after epoch 1
    rest, _ = train(rows, start=ResumeState(mid.epoch, mid.params, mid.opt_state, mid.step))
    assert [c.epoch for c in rest] == [2, 3]  # epoch 0 and 1 are not handed out again
    torch.testing.assert_close(rest[-1].params, full[-1].params, rtol=0, atol=0)


def test_grouping_and_initialisation():
    rows = expand(base(batch_size=[32, 64], architecture={"name": "mlp", "width": [8, 16]},
                       optimizer={"name": "sgd", "lr": [0.1, 0.01, 0.03]}, seeds=5))
    cohorts = group_cohorts(rows)
    assert len(cohorts) == 4 and all(len(c) == 15 for c in cohorts)
    assert [len(c) for c in group_cohorts(rows, max_size=10)] == [8, 7] * 4  # even chunks
    resumed = {rows[0]["model_id"]: 1}
    assert len(group_cohorts(rows, resumed)) == 5  # a different start epoch cannot share a cohort
    arch = json.loads(rows[0]["arch_config"])
    a, b = init_params(arch, [3, 4]), init_params(arch, [3])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])


def test_batchnorm_resnet_cohort_equals_solo():
    """Per-model batch statistics and running-stat updates: a ResNet cohort equals each model trained alone."""
    rows = expand(base(epochs=1, batch_size=128, architecture={"name": "resnet", "width": 2, "blocks": [1, 1]},
                       optimizer={"name": "sgd", "lr": [0.05, 0.02], "momentum": 0.9}))
    layout = layout_for(json.loads(rows[0]["arch_config"]))
    assert layout.num_buffers > 0
    cks, _ = train(rows)
    for i, row in enumerate(rows):
        ref, acc = solo_torch(row)
        torch.testing.assert_close(cks[-1].params[i], ref, rtol=1e-4, atol=1e-5)
        assert cks[-1].metrics["test_acc"][i] == pytest.approx(acc, abs=1.5 / len(load_dataset("digits").x_test))
