"""`wsl zoo train` and `wsl zoo specs`."""
import json

from store.store import ZooStore

TINY = """
name = "cli-tiny"
dataset = "digits"
epochs = 2
batch_size = 128
seeds = 2

[architecture]
name = "mlp"
width = 8

[optimizer]
name = "adam"
lr = [0.01, 0.003]
"""


def test_specs_lists_the_builtins(run_cli):
    code, out, _ = run_cli("zoo", "specs", "--format", "json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"demo", "digits-mlp", "digits-pairs", "mnist1d-cnn", "sciml-inr"} <= set(rows)
    assert rows["digits-pairs"]["models"] == 225 and rows["demo"]["architecture"] == "mlp"
    code, out, _ = run_cli("zoo", "--help")
    assert code == 0 and "train" in out and "specs" in out


def test_train_a_spec_file_then_rerun(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the progress bar keeps its count and ETA at 80 columns
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    store = tmp_path / "st"
    code, out, err = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["zoo"] == "cli-tiny" and summary["trained"] == 4 and summary["checkpoints_written"] == 12
    bar = next(ln for ln in err.splitlines() if "model-epochs" in ln)  # the progress bar (stderr)
    assert "8/8 model-epochs" in bar and "ETA 0:00:00" in bar and len(bar) <= 80
    assert ZooStore(store, create=False).count("checkpoints") == 12
    code, out, _ = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    assert code == 0 and json.loads(out)["already_finished"] == 4


def test_global_store_option_and_table_output(run_cli, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.replace("seeds = 2", "seeds = 1").replace("epochs = 2", "epochs = 1"))
    code, out, err = run_cli("--store", tmp_path / "g", "zoo", "train", spec)
    assert code == 0, err
    assert "cli-tiny" in out and "trained" in out
    assert (tmp_path / "g" / "zoo.json").exists()


def test_bad_input_exits_2_and_writes_nothing(run_cli, tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("width = 8", "width = 8\nwidht = 3"))
    store = tmp_path / "st"
    code, out, err = run_cli("zoo", "train", spec, "--store", store)
    assert code == 2 and "unknown key [architecture] widht" in err and "allowed keys" in err
    spec.write_text(TINY.replace("lr = [0.01, 0.003]", "lr = [0.01, -1.0]"))
    code, _, err = run_cli("zoo", "train", spec, "--store", store)
    assert code == 2 and "optimizer.lr" in err
    spec.write_text(TINY.replace("batch_size = 128", "batch_size = 100000"))
    code, _, err = run_cli("zoo", "train", spec, "--store", store)
    assert code == 2 and "larger than dataset" in err
    code, _, err = run_cli("zoo", "train", "no-such-spec", "--store", store)
    assert code == 2 and "built-in spec" in err
    code, _, err = run_cli("zoo", "train", "demo", "--store", store, "--backend", "slurm")
    assert code == 2 and "unknown backend" in err
    import torch

    if not torch.cuda.is_available():
        code, _, err = run_cli("zoo", "train", "demo", "--store", store, "--device", "cuda")
        assert code == 2 and "not available" in err and "--device cpu" in err
    assert not store.exists()


def _grid_store(path):
    """zoo 'grid': width 8/16 x 3 seeds, final test_acc known; zoo 'other': one model; two landscape rows."""
    import torch

    from store import ParamLayout

    zs = ZooStore(path, create=True)
    layout = ParamLayout([("fc.weight", (2, 3)), ("fc.bias", (2,))], arch={"name": "toy"})
    models, ckpts = [], []
    for zoo, widths, seeds in (("grid", (8, 16), range(3)), ("other", (4,), range(1))):
        for width in widths:
            for seed in seeds:
                mid = f"{zoo}-w{width}-s{seed}"
                models.append(dict(model_id=mid, zoo=zoo, architecture="toy", arch_config="{}",
                                   layout_id=layout.layout_id, dataset="digits", dataset_id="d", task="classification",
                                   width=width, depth=1, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                                   batch_size=32, epochs=2, schedule="constant", seed=seed,
                                   status="diverged" if (width, seed) == (16, 2) else "done", hparams="{}"))
                for epoch in (1, 2):  # the final (epoch 2) accuracy is width/100 + seed/10
                    ckpts.append(dict(checkpoint_id=f"{mid}-e{epoch}", model_id=mid, epoch=epoch, step=epoch,
                                      train_loss=1.0, train_acc=0.5, test_loss=1.0,
                                      test_acc=width / 100 + seed / 10 if epoch == 2 else 0.01))
    zs.append("models", models)
    zs.append_weights("checkpoints", torch.zeros(len(ckpts), layout.num_params), ckpts, layout)
    zs.append("landscape", [dict(model_id=f"grid-w8-s{s}", epoch=2, recipe_id="r", hessian_top_eig=1.0,
                                 hessian_trace=1.0, mode_connectivity=0.0, cka_logits=0.9, cka_hidden=0.9,
                                 train_loss=0.1, train_acc=0.9, phase=ph, thresholds="{}", recipe="{}")
                            for s, ph in ((0, "IV-B"), (1, "IV-B"), (2, "III"))])
    return zs


def test_zoo_list_and_show_grid_counts_spread_and_phases(run_cli, tmp_path):
    import pytest

    zs = _grid_store(tmp_path / "s")
    before = sorted(p.name for p in zs.path.rglob("*"))
    code, out, err = run_cli("zoo", "list", "--store", zs.path, "--format", "json")
    assert code == 0, err
    rows = {r["zoo"]: r for r in json.loads(out)}
    g = rows["grid"]
    assert (g["models"], g["done"], g["diverged"], g["checkpoints"], g["landscape_rows"]) == (6, 5, 1, 12, 3)
    assert g["grid"] == "width" and g["seeds"] == 3
    assert g["test_acc_min"] == pytest.approx(0.08) and g["test_acc_max"] == pytest.approx(0.36)
    assert rows["other"]["models"] == 1 and rows["other"]["grid"] == ""
    code, out, err = run_cli("zoo", "show", "grid", "--store", zs.path, "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["grid"] == {"width": [8, 16]} and s["fixed"]["lr"] == 0.1 and s["seeds"] == 3
    assert s["status"] == {"done": 5, "diverged": 1} and s["checkpoints"] == 12 and s["epochs"] == [1, 2]
    cells = {c["width"]: c for c in s["cells"]}
    assert cells[8]["models"] == 3 and cells[8]["test_acc_min"] == pytest.approx(0.08)
    assert cells[8]["test_acc_mean"] == pytest.approx(0.18) and cells[16]["test_acc_max"] == pytest.approx(0.36)
    assert s["accuracy"]["test_acc"]["mean"] == pytest.approx((0.18 + 0.26) / 2)
    assert s["phases"] == {"III": 1, "IV-B": 2} and s["landscape_rows"] == 3
    # table output, at 80 columns
    code, out, err = run_cli("zoo", "show", "grid", "--store", zs.path)
    assert code == 0, err
    assert "grid (hyperparameters that vary)" in out and "IV-B" in out and "0.080 0.180 0.280" in out
    code, out, _ = run_cli("zoo", "list", "--store", zs.path)
    assert code == 0 and "grid" in out and "done 5, diverged 1" in out
    assert sorted(p.name for p in zs.path.rglob("*")) == before


def test_zoo_show_unknown_name_and_empty_store(run_cli, tmp_path):
    zs = _grid_store(tmp_path / "s")
    code, out, err = run_cli("zoo", "show", "gird", "--store", zs.path)
    assert code == 2 and "no zoo named 'gird'" in err and "grid, other" in err
    ZooStore(tmp_path / "empty", create=True)
    code, _, err = run_cli("zoo", "list", "--store", tmp_path / "empty")
    assert code == 2 and "has no models" in err
