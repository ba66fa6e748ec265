"""zoo.train: every checkpoint in the store as training goes, resume without duplicates, bad input writes nothing."""
import pytest
import torch

import zoo
from store.errors import UserError
from store.store import ZooStore

SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "epochs": 3,
    "batch_size": 128,
    "seeds": 2,
    "architecture": {"name": "mlp", "width": 8},
    "optimizer": {"name": "sgd", "lr": [0.1, 0.03], "momentum": 0.9},
}


class Stop(Exception):
    pass


def final_weights(store):
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id")
    return w, meta


def test_train_writes_every_checkpoint_and_a_models_row(tmp_path):
    s = zoo.train(SPEC, tmp_path / "st")
    assert (s.models, s.trained, s.diverged, s.already_finished, s.cohorts) == (4, 4, 0, 0, 1)
    assert s.checkpoints_written == 4 * 4  # epochs 0..3
    store = ZooStore(tmp_path / "st", create=False)
    ck = store.sql("SELECT model_id, epoch, step, train_loss, train_acc, test_loss, test_acc, layout_id FROM checkpoints")
    assert sorted(ck.groupby("model_id").epoch.apply(list).iloc[0]) == [0, 1, 2, 3]
    assert ck[ck.epoch == 3].step.unique().tolist() == [3 * 12]
    assert ck.test_acc.notna().all() and ck[ck.epoch == 3].test_acc.mean() > ck[ck.epoch == 0].test_acc.mean() + 0.05
    models = store.sql("SELECT * FROM models ORDER BY model_id")
    assert len(models) == 4 and set(models.status) == {"done"}
    assert set(models.lr) == {0.1, 0.03} and set(models.momentum) == {0.9} and set(models.width) == {8}
    assert {"batch_size", "epochs", "seed", "activation", "dropout", "schedule", "hparams"} <= set(models.columns)
    opt = store.sql("SELECT checkpoint_id, state_json FROM optimizer_states")
    assert len(opt) == 16
    assert store.sql("SELECT count(*) AS n FROM datasets").n[0] == 1
    assert set(store.sql("SELECT architecture FROM layouts").architecture) == {"mlp", "optimizer-state:sgd"}
    # the stored weights reproduce the stored accuracy
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints WHERE epoch = 3 ORDER BY checkpoint_id")
    layout = store.layout(meta.layout_id[0])
    ds = zoo.load_dataset("digits")
    m = layout.load_into(layout.build_module(), w[0])
    acc = (m(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc == pytest.approx(float(ck.set_index(ck.model_id + ck.epoch.astype(str)).loc[meta.model_id[0] + "3"].test_acc), abs=1e-6)
    # a rerun finds everything finished and writes nothing
    parts_before = {t: len(store.part_files(t)) for t in store.tables()}
    again = zoo.train(SPEC, tmp_path / "st")
    assert (again.already_finished, again.trained, again.checkpoints_written) == (4, 0, 0)
    assert {t: len(store.part_files(t)) for t in store.tables()} == parts_before


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    full = zoo.train(SPEC, tmp_path / "full")

    def stop_after_two_epochs(p):
        if p.epoch == 2:
            raise Stop()

    with pytest.raises(Stop):
        zoo.train(SPEC, tmp_path / "cut", progress=stop_after_two_epochs)
    cut = ZooStore(tmp_path / "cut", create=False)
    assert cut.count("models") == 0
    assert sorted(cut.sql("SELECT DISTINCT epoch FROM checkpoints").epoch) == [0, 1, 2]
    resumed = zoo.train(SPEC, tmp_path / "cut")
    assert (resumed.resumed, resumed.trained, resumed.checkpoints_written) == (4, 4, 4)
    ids = cut.sql("SELECT checkpoint_id FROM checkpoints").checkpoint_id
    assert len(ids) == len(set(ids)) == 16  # no duplicates
    assert cut.sql("SELECT count(*) AS n FROM optimizer_states").n[0] == 16
    a, ma = final_weights(ZooStore(tmp_path / "full", create=False))
    b, mb = final_weights(cut)
    assert ma.checkpoint_id.tolist() == mb.checkpoint_id.tolist()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    cols = ["checkpoint_id", "step", "train_loss", "test_acc"]
    assert ma[cols].equals(mb[cols]) or (ma[cols].set_index("checkpoint_id") - mb[cols].set_index("checkpoint_id")
                                        ).abs().max().max() < 1e-6
    assert full.final_test_acc_mean == pytest.approx(resumed.final_test_acc_mean, abs=1e-6)


def test_a_diverged_model_is_marked_and_the_rest_finish(tmp_path):
    spec = {**SPEC, "seeds": 1, "optimizer": {"name": "sgd", "lr": [0.1, 1e30], "momentum": 0.9}}
    s = zoo.train(spec, tmp_path / "st")
    assert (s.trained, s.diverged) == (1, 1)
    store = ZooStore(tmp_path / "st", create=False)
    m = store.sql("SELECT lr, status, diverged_epoch FROM models ORDER BY lr")
    assert m.status.tolist() == ["done", "diverged"] and m.diverged_epoch.tolist()[1] == 1
    per_model = store.sql("SELECT m.lr, max(c.epoch) AS last FROM checkpoints c JOIN models m USING (model_id) "
                          "GROUP BY m.lr ORDER BY m.lr")
    assert per_model["last"].tolist() == [3, 0]  # the diverged model keeps its checkpoints before divergence
    assert zoo.train(spec, tmp_path / "st").already_finished == 2  # not retried


@pytest.mark.parametrize("change,message", [
    ({"optimizer": {"name": "sgd", "lr": 0.0}}, "optimizer.lr"),
    ({"batch_size": 5000}, "larger than dataset"),
    ({"architecture": {"name": "mlp", "widht": 8}}, "widht"),
    ({"seeds": []}, "empty"),
])
def test_bad_input_writes_nothing(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        zoo.train({**SPEC, **change}, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_missing_device_and_unknown_backend_write_nothing(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="'cuda' is not available"):
            zoo.train(SPEC, tmp_path / "st", device="cuda")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        zoo.train(SPEC, tmp_path / "st", device="tpu")
    with pytest.raises(UserError, match="unknown backend 'slurm'.*local, ray"):
        zoo.train(SPEC, tmp_path / "st", backend="slurm")
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_ray_backend_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'wsl-zoo[ray]')")
    spec = {**SPEC, "epochs": 2, "architecture": {"name": "mlp", "width": [8, 12]}}  # 2 cohorts -> 2 Ray tasks
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = zoo.train(spec, tmp_path / "ray", backend="ray")
    finally:
        ray.shutdown()
    assert (s.backend, s.cohorts, s.trained, s.checkpoints_written) == ("ray", 2, 8, 8 * 3)
    local = zoo.train(spec, tmp_path / "local")
    assert local.trained == 8
    on_ray, here = ZooStore(tmp_path / "ray", create=False), ZooStore(tmp_path / "local", create=False)
    q = "SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) WHERE width = {w} ORDER BY checkpoint_id"
    for w in (8, 12):  # one layout at a time: the same models, the same weights
        wa, qa = on_ray.weights(q.format(w=w))
        wb, qb = here.weights(q.format(w=w))
        assert qa.checkpoint_id.tolist() == qb.checkpoint_id.tolist() and len(qa) == 4 * 3
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


def test_small_parts_are_merged_after_training(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["zoo.train"], "COMPACT_AFTER_PARTS", 2)  # `zoo.train` the attribute is the function
    s = zoo.train(SPEC, tmp_path / "st", cohort_size=1)  # 4 cohorts x 4 checkpoints: 16 one-row parts
    store = ZooStore(tmp_path / "st", create=False)
    assert s.cohorts == 4 and store.count("checkpoints") == 16
    assert len(store.part_files("checkpoints")) <= 2
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id", verify=True)
    assert w.shape[0] == 16 and meta.checkpoint_id.is_unique
