"""`wsl eval / average / prune / predict-properties` against a small digits zoo in a store."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _wsl_zoo import fill_store, mlp_zoo  # noqa: E402


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    from store import ZooStore

    path = tmp_path_factory.mktemp("evalzoo") / "store"
    zs = ZooStore(path, create=True)
    fill_store(zs, mlp_zoo(), epochs=[0, 2, 4, 5, 6])
    zs.close()
    return path


@pytest.fixture
def store(built_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(built_store, dst)
    return str(dst)


def evaluations(path):
    from store import ZooStore

    return ZooStore(path, create=False).sql("SELECT * FROM evaluations ORDER BY checkpoint_id")


def test_eval_writes_scores_once(run_cli, store):
    code, out, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "digits", "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["summary"]["evaluated"] == 48 and rep["summary"]["written"] == 48
    assert rep["rows"][0]["architecture"] == "mlp" and rep["rows"][0]["checkpoints"] == 48
    ev = evaluations(store)
    assert len(ev) == 48 and set(ev.split) == {"test"} and set(ev.dataset) == {"digits"}
    # the scores are the fused evaluator's, and match what the zoo recorded for those checkpoints
    from store import ZooStore

    ck = ZooStore(store, create=False).sql("SELECT checkpoint_id, test_acc FROM checkpoints WHERE epoch = 6 "
                                           "ORDER BY checkpoint_id")
    assert (abs(ck.test_acc.values - ev.accuracy.values) < 1e-12).all()
    # a second run finds them scored and writes nothing
    code, out, _ = run_cli("eval", "--store", store, "--where", "epoch >= 5", "--dataset", "digits", "--format", "json")
    rep = json.loads(out)
    assert code == 0 and rep["summary"]["already_scored"] == 48 and rep["summary"]["written"] == 48
    assert len(evaluations(store)) == 96
    # table output works too
    code, out, _ = run_cli("eval", "--store", store, "--where", "epoch = 0", "--dataset", "digits", "--split", "train")
    assert code == 0 and "wsl eval" in out


def test_eval_bad_input_exits_2_and_writes_nothing(run_cli, store):
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "sciml:sine")
    assert code == 2 and "do not fit" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "nope")
    assert code == 2 and "nope" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "no_such_column = 1", "--dataset", "digits")
    assert code == 2 and "SQL error" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 999", "--dataset", "digits")
    assert code == 2 and "selects no checkpoints" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "1=1; DROP TABLE models", "--dataset", "digits")
    assert code == 2
    code, _, err = run_cli("eval", "--store", store + "-missing", "--dataset", "digits")
    assert code == 2
    assert len(evaluations(store)) == 0


def test_average_last_k_and_seeds(run_cli, store):
    code, out, err = run_cli("average", "--store", store, "--dataset", "digits", "--k", "2", "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["summary"]["models"] == 48 and rep["summary"]["k"] == 2
    r0 = rep["rows"][0]
    assert r0["delta_accuracy"] == pytest.approx(r0["accuracy_avg"] - r0["accuracy_final"])
    code, out, err = run_cli("average", "--store", store, "--where", "lr > 0.1", "--dataset", "digits", "--mode",
                             "seeds", "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    s = rep["summary"]
    assert s["aligned"] and s["accuracy_aligned_avg"] > s["accuracy_naive_avg"]
    assert rep["rows"][-1]["model"] == "aligned average"
    code, _, err = run_cli("average", "--store", store, "--dataset", "digits", "--mode", "median")
    assert code == 2 and "--mode" in err
    code, _, err = run_cli("average", "--store", store, "--dataset", "digits", "--k", "50")
    assert code == 2 and "50 checkpoints" in err


def test_prune_reports_each_sparsity(run_cli, store):
    code, out, err = run_cli("prune", "--store", store, "--where", "epoch = 6", "--dataset", "digits",
                             "--sparsity", "0.5,0.9", "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    levels = {round(lv["sparsity"], 2): lv for lv in rep["summary"]["levels"]}
    assert set(levels) == {0.0, 0.5, 0.9}
    assert levels[0.9]["achieved"] == pytest.approx(0.9, abs=1e-3)
    assert len(rep["rows"]) == 3 * 48
    code, out, _ = run_cli("prune", "--store", store, "--where", "epoch = 6", "--dataset", "digits")
    assert code == 0 and "sparsity" in out
    code, _, err = run_cli("prune", "--store", store, "--dataset", "digits", "--sparsity", "1.5")
    assert code == 2 and "sparsity" in err


def test_predict_properties(run_cli, store):
    code, out, err = run_cli("predict-properties", "--store", store, "--where", "epoch >= 2", "--target", "test_acc",
                             "--target", "log10(lr)", "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert set(rep["summary"]["r2"]) == {"test_acc", "log10(lr)"}
    assert rep["summary"]["models"] == 48 and rep["summary"]["features"] == 28
    assert rep["summary"]["r2"]["test_acc"] > 0.3
    code, _, err = run_cli("predict-properties", "--store", store, "--target", "no_such_col")
    assert code == 2 and "SQL error" in err


def test_eval_regression_writes_r2_and_null_accuracy(run_cli, tmp_path):
    import torch

    from store import ZooStore
    from wsl import ParamLayout
    from zoo import config_for, load_dataset

    ds = load_dataset("sciml:sine")
    layout = ParamLayout.from_config(config_for(ds, {"name": "siren", "width": 8, "depth": 2}))
    torch.manual_seed(0)
    zs = ZooStore(tmp_path / "r", create=True)
    rows = [dict(checkpoint_id=f"s{i}-e0001", model_id=f"s{i}", epoch=1, step=1, train_loss=0.0, train_acc=0.0,
                 test_loss=0.0, test_acc=0.0) for i in range(3)]
    zs.append_weights("checkpoints", layout.flatten([layout.build_module() for _ in range(3)]), rows, layout)
    code, out, err = run_cli("eval", "--store", str(tmp_path / "r"), "--dataset", "sciml:sine", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["summary"]["score"] == "r2"
    ev = ZooStore(tmp_path / "r", create=False).sql("SELECT loss, r2, accuracy IS NULL AS no_acc FROM evaluations")
    assert len(ev) == 3 and ev.no_acc.all() and (ev.loss > 0).all() and ev.r2.notna().all()


def listing(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in Path(path).rglob("*") if p.is_file())


def test_eval_refuses_a_dataset_whose_classes_or_shape_differ(run_cli, store):
    before = listing(store)
    code, out, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "digits-pair:3-8")
    assert code == 2 and out == ""
    assert "10 outputs" in err and "'digits-pair:3-8' has 2 classes" in err and "Fix:" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "sciml:sine")
    assert code == 2 and "do not fit" in err and "64 input features" in err
    assert listing(store) == before


def _add_pair_models(path, n=3, dataset_id=None):
    """n binary MLPs on digits-pair:3-8 (random init) with one checkpoint each, in zoo 'pairs'."""
    import torch

    from store import ZooStore
    from wsl import ParamLayout
    from zoo import load_dataset

    ds = load_dataset("digits-pair:3-8")
    arch = {"name": "mlp", "in_features": 64, "out_features": 2, "width": 8, "depth": 1}
    layout = ParamLayout.from_config(arch)
    torch.manual_seed(0)
    w = layout.flatten([layout.build_module() for _ in range(n)])
    zs = ZooStore(path, create=False)
    zs.append("models", [dict(model_id=f"pair-{i}", zoo="pairs", architecture="mlp", arch_config=json.dumps(arch),
                              layout_id=layout.layout_id, dataset=ds.name, dataset_id=dataset_id or ds.dataset_id,
                              task="classification", width=8, depth=1, optimizer="sgd", lr=0.1, momentum=0.0,
                              weight_decay=0.0, batch_size=64, epochs=1, schedule="constant", seed=i, status="done",
                              hparams="{}")
                         for i in range(n)])
    zs.append_weights("checkpoints", w, [dict(checkpoint_id=f"pair-{i}-e0001", model_id=f"pair-{i}", epoch=1, step=1,
                                              train_loss=0.0, train_acc=0.0, test_loss=0.0, test_acc=0.0)
                                         for i in range(n)], layout)
    return w, layout, ds


def test_eval_own_scores_each_model_on_its_own_dataset(run_cli, store, tmp_path):
    from wsl.evaluate import evaluate

    w, layout, ds = _add_pair_models(store)
    out_file = tmp_path / "scores.parquet"
    code, out, err = run_cli("eval", "--store", store, "--where", "checkpoints.epoch = 6 OR zoo = 'pairs'",
                             "--dataset", "own", "--format", "json")
    assert code == 0, err
    s = json.loads(out)["summary"]
    assert s["selected"] == 51 and s["evaluated"] == 51 and s["written"] == 51
    assert s["datasets"] == 2 and s["fused_groups"] == 2  # one fused group per (dataset, layout)
    ev = evaluations(store).set_index("checkpoint_id")
    pairs = ev.loc[[f"pair-{i}-e0001" for i in range(3)]]
    assert set(pairs.dataset) == {"digits-pair:3-8"} and set(pairs.dataset_id) == {ds.dataset_id}
    assert list(pairs.accuracy) == evaluate(w, layout, ds).accuracy.tolist()
    from store import ZooStore

    ck = ZooStore(store, create=False).sql("SELECT checkpoint_id, test_acc FROM checkpoints WHERE epoch = 6")
    assert (abs(ev.loc[ck.checkpoint_id].accuracy.values - ck.test_acc.values) < 1e-12).all()
    assert set(ev.loc[ck.checkpoint_id].dataset) == {"digits"}
    # a second run finds everything scored on its own dataset; -o writes the rows it evaluated
    code, out, err = run_cli("eval", "--store", store, "--where", "zoo = 'pairs'", "--dataset", "own", "--rescore",
                             "-o", out_file)
    assert code == 0, err
    import pyarrow.parquet as pq

    got = pq.read_table(out_file).to_pandas()
    assert list(got.checkpoint_id) == [f"pair-{i}-e0001" for i in range(3)] and list(got.accuracy) == list(pairs.accuracy)
    assert len(evaluations(store)) == 51  # rescored rows are reported, not written again


def test_eval_own_refuses_data_that_is_not_the_models_own(run_cli, store):
    _add_pair_models(store, dataset_id="0123456789abcdef")
    before = listing(store)
    code, _, err = run_cli("eval", "--store", store, "--where", "zoo = 'pairs'", "--dataset", "own")
    assert code == 2 and "0123456789abcdef" in err and "--dataset-seed" in err
    assert listing(store) == before


@pytest.mark.parametrize("command", [["eval"], ["average"], ["prune"], ["predict-properties"]])
def test_an_empty_selection_is_an_error_naming_the_filter(run_cli, store, command):
    before = listing(store)
    args = [*command, "--store", store, "--where", "width = 999 AND epoch = 6"]
    if command[0] != "predict-properties":
        args += ["--dataset", "digits"]
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert "--where 'width = 999 AND epoch = 6' selects no checkpoints" in err and "Fix:" in err
    assert listing(store) == before


def test_eval_output_file_clash_is_refused_before_any_work(run_cli, store, tmp_path):
    before = listing(store)
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "digits",
                           "-o", tmp_path / "s.csv", "--format", "json")
    assert code == 2 and "clashes" in err
    code, _, err = run_cli("eval", "--store", store, "--where", "epoch = 6", "--dataset", "digits",
                           "-o", tmp_path / "s.xlsx")
    assert code == 2 and "names no format" in err
    assert listing(store) == before and not list(tmp_path.glob("s.*"))
