"""`wsl store import model-zoos`: Ray Tune trial folders as the Model Zoos ship them, with every hyperparameter and metric."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from _zoo_fixtures import ModelZoosMLP, snapshot, trial_dirs
from store import ParamLayout, UserError, ZooStore
from store.import_modelzoos import import_model_zoos, recognise


@pytest.fixture
def imported(model_zoos, tmp_path, run_cli):
    src, truth = model_zoos
    code, out, err = run_cli("store", "import", "model-zoos", src, "--store", tmp_path / "s", "--dataset", "digits", "-f", "json")
    assert code == 0, err
    return ZooStore(tmp_path / "s", create=False), json.loads(out), truth, src


def test_every_epoch_a_checkpoint_with_its_metrics_and_hyperparameters(imported):
    store, report, truth, src = imported
    assert report["models"] == 3 and report["checkpoints"] == 12 and report["new_checkpoints"] == 12
    (lay,) = report["layouts"]
    assert lay["architecture"] == "mlp" and lay["arch_from"] == "params.json"
    assert lay["mapping"][0]["names"]["module_list.2.weight"] == "layers.1.weight"  # the mapping used is reported
    m = store.sql("SELECT source, lr, optim_lr, momentum, batch_size, training_batchsize, seed, epochs, optimizer, "
                  "model_nlin, model_h_dim, dataset, zoo, hparams FROM models ORDER BY source")
    assert m.lr.tolist() == pytest.approx([0.1, 0.2, 0.3]) and m.optim_lr.tolist() == m.lr.tolist()
    assert m.seed.tolist() == [1, 2, 3] and set(m.batch_size) == {64} and set(m.training_batchsize) == {64}
    assert set(m.model_nlin) == {"tanh"} and set(m.model_h_dim) == {"[16]"} and set(m.optimizer) == {"sgd"}
    assert set(m.dataset) == {"digits"} and set(m.zoo) == {"tune_zoo_digits_mlp"} and set(m.epochs) == {4}
    assert json.loads(m.hparams[0])["model::type"] == "MLP"
    for trial, rec in truth.items():
        c = store.sql("SELECT epoch, test_acc, test_loss, train_loss, checkpoint_id FROM checkpoints "
                      "JOIN models USING (model_id) WHERE models.source LIKE $t ORDER BY epoch", {"t": f"%{trial}"})
        assert c.epoch.tolist() == rec["epochs"]  # checkpoint_1.. (Ray 0.8) and checkpoint_00000N (Ray 1.x) alike
        assert c.test_acc.tolist() == rec["test_acc"] and c.test_loss.tolist() == rec["test_loss"]
        if rec["epochs"][0] == 0:  # the untrained model's -999 train metrics are NULL, not -999
            assert c.train_loss.isna().tolist() == [True, False, False, False]
        w, _ = store.weights(c.checkpoint_id.tolist(), verify=True)
        layout = store.layout(lay["layout_id"])
        for row, state in zip(w, rec["state"]):
            module = layout.load_into(layout.build_module(), row)
            assert torch.equal(module.layers[0].weight, state["module_list.0.weight"])
            assert torch.equal(module.layers[1].bias, state["module_list.2.bias"])


def test_wsl_eval_reproduces_the_stored_accuracies(imported, run_cli):
    store, _, _, _ = imported
    code, out, err = run_cli("eval", "--where", "status = 'imported'", "--dataset", "digits", "--store", store.path, "-f", "json")
    assert code == 0, err
    df = store.sql("SELECT c.test_acc, e.accuracy, c.test_loss, e.loss FROM checkpoints c "
                   "JOIN evaluations e USING (checkpoint_id)")
    assert len(df) == 12
    assert (df.accuracy == df.test_acc).all()
    assert df.loss.tolist() == pytest.approx(df.test_loss.tolist(), rel=1e-4)


def test_reimport_is_a_no_op_and_no_pickle_is_ever_loaded(imported, run_cli):
    store, _, _, src = imported
    before = snapshot(store.path)
    code, out, err = run_cli("store", "import", "model-zoos", src, "--store", store.path, "--dataset", "digits", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["new_checkpoints"] == 0 and json.loads(out)["new_models"] == 0
    assert snapshot(store.path) == before
    assert not list(src.parent.glob("pwned*"))  # params.pkl and .tune_metadata were never unpickled


def test_parallel_parsing_gives_the_same_rows(model_zoos, tmp_path):
    src, _ = model_zoos
    a = import_model_zoos(tmp_path / "a", src, workers=1)
    b = import_model_zoos(tmp_path / "b", src, workers=2)
    q = "SELECT checkpoint_id, sha256, test_acc FROM checkpoints ORDER BY 1"
    assert a.new_checkpoints == b.new_checkpoints == 12
    assert ZooStore(tmp_path / "a", create=False).sql(q).equals(ZooStore(tmp_path / "b", create=False).sql(q))


def _rm(p):
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _nan(path):
    sd = torch.load(path, weights_only=True)
    sd["module_list.0.weight"][3, 5] = float("nan")
    torch.save(sd, path)


def _drop_line(path, iteration):
    lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["training_iteration"] != iteration]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage,message", [
    (lambda t: _rm(t[1] / "result.json"), "has no result.json"),
    (lambda t: _rm(t[1] / "checkpoint_000002"), "epoch 2 of"),
    (lambda t: _rm(t[1] / "checkpoint_000001" / "checkpoints"), "checkpoint_000001/checkpoints is missing"),
    (lambda t: _drop_line(t[1] / "result.json", 3), "no line with training_iteration 3"),
    (lambda t: (t[1] / "result.json").write_text("{not json\n"), "line 1 is not JSON"),
    (lambda t: _nan(t[2] / "checkpoint_000001" / "checkpoints"), "contains NaN or inf (tensors ['layers.0.weight'])"),
    (lambda t: torch.save(ModelZoosMLP(64, [8], 10).state_dict(), t[2] / "checkpoint_000003" / "checkpoints"),
     "'module_list.0.weight' [8, 64]: the layout has 'layers.0.weight' [16, 64]"),
])
def test_bad_trial_folders_exit_2_naming_the_file_and_write_nothing(model_zoos, tmp_path, run_cli, damage, message):
    src, _ = model_zoos
    damage(trial_dirs(src))
    code, out, err = run_cli("store", "import", "model-zoos", src, "--store", tmp_path / "new")
    assert code == 2 and message in err and "Fix:" in err, err
    assert not (tmp_path / "new").exists()  # no zoo.json, no part


def test_a_failed_import_leaves_an_existing_store_byte_identical(imported, tmp_path, run_cli):
    store, _, _, src = imported
    before = snapshot(store.path)
    other = tmp_path / "other-src"
    shutil.copytree(src, other)
    t = trial_dirs(other)[2]
    sd = torch.load(t / "checkpoint_000002" / "checkpoints", weights_only=True)
    sd["module_list.0.bias"] += 1.0  # a file changed since it was imported: a conflict
    torch.save(sd, t / "checkpoint_000002" / "checkpoints")
    code, _, err = run_cli("store", "import", "model-zoos", other, "--store", store.path, "--dataset", "digits")
    assert code == 2 and "conflict" in err and "its file changed" in err and "checkpoint_000002" in err, err
    assert snapshot(store.path) == before


def test_skip_incomplete_imports_the_rest_and_lists_what_it_skipped(model_zoos, tmp_path):
    src, _ = model_zoos
    _rm(trial_dirs(src)[1] / "result.json")
    rep = import_model_zoos(tmp_path / "s", src, skip_incomplete=True)
    assert rep.models == 2 and rep.new_checkpoints == 8
    assert any(n.startswith("skipped") and "result.json" in n for n in rep.notes)


def test_arch_and_rename_options(model_zoos, tmp_path):
    src, _ = model_zoos
    arch = {"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 1, "activation": "tanh"}
    rep = import_model_zoos(tmp_path / "a", src, arch=arch, rename=[r"^module_list\.0\.=layers.0.", r"^module_list\.2\.=layers.1."])
    assert rep.layouts[0]["arch_from"] == "--arch" and rep.layouts[0]["mapping"][0]["method"] == "rename"
    assert rep.layouts[0]["layout_id"] == ParamLayout.from_config(arch).layout_id
    with pytest.raises(UserError, match="onto one name"):
        import_model_zoos(tmp_path / "b", src, arch=arch, rename=[r"^module_list\.\d+\.=layers.0."])
    assert not (tmp_path / "b").exists()


def test_recognise_says_why_not():
    assert recognise({"model::type": "CNN", "model::channels_in": 1})[0] is None
    assert "biases" in recognise({"model::type": "MLP", "model::i_dim": 4, "model::h_dim": 3, "model::o_dim": 2,
                                  "model::use_bias": False})[1]
    cfg, _ = recognise({"model::type": "MLP", "model::i_dim": 4, "model::h_dim": [3, 3], "model::o_dim": 2,
                        "model::nlin": "leakyrelu"})
    assert cfg == {"name": "mlp", "in_features": 4, "out_features": 2, "width": 3, "depth": 2,
                   "activation": "leaky_relu", "dropout": 0.0}


def test_past_the_memory_budget_files_are_read_again_and_must_not_have_changed(model_zoos, tmp_path, monkeypatch):
    import store.import_plan as plan
    import store.statedict as sd

    src, _ = model_zoos
    monkeypatch.setattr(plan, "MEMORY_BYTES", 0)  # keep no values after validation: every file is read twice
    a = import_model_zoos(tmp_path / "a", src)
    b = import_model_zoos(tmp_path / "b", src, workers=1)
    q = "SELECT checkpoint_id, sha256 FROM checkpoints ORDER BY 1"
    assert a.new_checkpoints == b.new_checkpoints == 12 and ZooStore(tmp_path / "a", create=False).sql(q).equals(ZooStore(tmp_path / "b", create=False).sql(q))
    real = sd.read_tensors

    def changed(path):  # the file is different when it is read the second time
        ft = real(path)
        if ft.path.endswith("checkpoint_000002/checkpoints"):
            ft.values = ft.values + 1.0
        return ft

    monkeypatch.setattr(sd, "read_tensors", changed)
    monkeypatch.setattr(plan, "iter_read", lambda files, workers=None, progress=None: (real(f) for f in files))
    with pytest.raises(UserError, match="changed while it was being imported"):
        import_model_zoos(tmp_path / "c", src)


def test_ray2_checkpoint_folders_are_matched_by_checkpoint_dir_name(model_zoos, tmp_path):
    src, truth = model_zoos
    t = trial_dirs(src)[0]  # iterations 1..4 in checkpoint_1..4: renumber as Ray 2 does (one per checkpoint, from 0)
    lines = [json.loads(ln) for ln in (t / "result.json").read_text().splitlines()]
    for k, line in enumerate(lines):
        (t / f"checkpoint_{line['training_iteration']}").rename(t / f"checkpoint_{k:06d}")
        line["checkpoint_dir_name"] = f"checkpoint_{k:06d}"
    (t / "result.json").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    import_model_zoos(tmp_path / "s", src)
    s = ZooStore(tmp_path / "s", create=False)
    c = s.sql("SELECT epoch, test_acc FROM checkpoints JOIN models USING (model_id) WHERE models.source LIKE $t "
              "ORDER BY epoch", {"t": f"%{t.name}"})
    assert c.epoch.tolist() == [1, 2, 3, 4] and c.test_acc.tolist() == truth[t.name]["test_acc"]
