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
