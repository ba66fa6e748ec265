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


def test_train_a_spec_file_then_rerun(run_cli, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    store = tmp_path / "st"
    code, out, err = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["zoo"] == "cli-tiny" and summary["trained"] == 4 and summary["checkpoints_written"] == 12
    assert "model-epochs" in err  # the progress bar (stderr)
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
