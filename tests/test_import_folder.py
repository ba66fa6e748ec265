"""`wsl store import folder`: checkpoint files with a sidecar table (CSV / JSON lines / Parquet), names mapped onto our layout."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _zoo_fixtures import snapshot
from store import ParamLayout, UserError, ZooStore
from store.import_folder import import_folder

ARCH = {"name": "mlp", "in_features": 4, "out_features": 3, "width": 8, "depth": 1}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # names 0.weight, 2.weight: not our layers.i


def _write(src, fmt: str = "csv") -> list[dict]:
    """2 runs x 3 epochs; one run saved as .pt, the other as .safetensors; returns the sidecar rows."""
    rows = []
    for run in range(2):
        for epoch in range(3):
            sd = _net(10 * run + epoch).state_dict()
            name = f"run{run}/ep{epoch}.pt" if run == 0 else f"run{run}/ep{epoch}.safetensors"
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".pt"):
                torch.save(sd, src / name)
            else:
                save_file({k: v.contiguous() for k, v in sd.items()}, str(src / name))
            rows.append({"file": name, "model": f"run-{run}", "epoch": epoch, "lr": 0.01 * (run + 1),
                         "label_smoothing": 0.1, "test_acc": 0.5 + 0.1 * epoch, "val_loss": 1.0 - 0.1 * epoch})
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(src / "metadata.csv", index=False)
    elif fmt == "jsonl":
        df.to_json(src / "metadata.jsonl", orient="records", lines=True)
    else:
        df.to_parquet(src / "metadata.parquet")
    return rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_sidecar_groups_files_into_models_with_epochs_hyperparameters_and_metrics(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    rows = _write(src, fmt)
    rep = import_folder(tmp_path / "s", src, arch=ARCH)
    assert rep.models == 2 and rep.new_checkpoints == 6
    (lay,) = rep.layouts
    assert lay["mapping"][0]["method"] == "automatic"
    assert lay["mapping"][0]["names"] == {"0.weight": "layers.0.weight", "0.bias": "layers.0.bias",
                                          "2.weight": "layers.1.weight", "2.bias": "layers.1.bias"}
    s = ZooStore(tmp_path / "s", create=False)
    m = s.sql("SELECT source, lr, label_smoothing, architecture FROM models ORDER BY source")
    assert m.lr.tolist() == [0.01, 0.02] and set(m.label_smoothing) == {0.1} and set(m.architecture) == {"mlp"}
    c = s.sql("SELECT c.epoch, c.test_acc, c.val_loss, c.checkpoint_id, m.source FROM checkpoints c "
              "JOIN models m USING (model_id) ORDER BY m.source, c.epoch")
    assert c.epoch.tolist() == [0, 1, 2, 0, 1, 2]
    assert c.test_acc.tolist() == pytest.approx([r["test_acc"] for r in rows])
    assert c.val_loss.tolist() == pytest.approx([r["val_loss"] for r in rows])  # varies per file: a checkpoint column
    w, _ = s.weights(c.checkpoint_id.tolist())
    layout = ParamLayout.from_config(ARCH)
    for row, r in zip(w, rows):
        net = _net(10 * int(r["model"][-1]) + r["epoch"])
        assert torch.equal(layout.unflatten(row)["layers.1.weight"], net[2].weight.detach())
    assert import_folder(tmp_path / "s", src, arch=ARCH).new_checkpoints == 0  # again: a no-op


def test_rename_rules_and_file_name_regex(tmp_path):
    src = tmp_path / "pdiff"
    src.mkdir()
    for i, acc in enumerate([0.7672, 0.7701]):
        sd = {k.replace("0.", "fc1.").replace("2.", "fc2."): v for k, v in _net(i).state_dict().items()}
        torch.save(sd, src / f"model_{i}_acc_{acc}.pth")
    rules = [r"^fc1\.=layers.0.", r"^fc2\.=layers.1."]
    rep = import_folder(tmp_path / "s", src, arch=ARCH, rename=rules,
                        name_regex=r"model_(?P<model>\d+)_acc_(?P<test_acc>[0-9.]+)\.pth")
    assert rep.layouts[0]["mapping"][0]["method"] == "rename" and rep.new_checkpoints == 2
    accs = ZooStore(tmp_path / "s", create=False).sql("SELECT test_acc FROM checkpoints ORDER BY test_acc").test_acc
    assert accs.tolist() == [0.7672, 0.7701]
    # fc1.* -> layers.0.* without the fc2 rule leaves fc2 names with no place in the layout: refused, nothing written
    with pytest.raises(UserError, match="no place"):
        import_folder(tmp_path / "t", src, arch=ARCH, rename=rules[:1], name_regex=r"model_(?P<model>\d+)")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("change,message", [
    (lambda src, df: df.assign(file=df.file.where(df.index != 2, "run0/gone.pt")), "names run0/gone.pt, which is not a file"),
    (lambda src, df: df.assign(lr=[0.1, 0.2, 0.1, 0.3, 0.3, 0.3]), "lr differs between the rows of model 'run-0'"),
    (lambda src, df: df.drop(columns=["file"]), "has no 'file' column"),
])
def test_bad_sidecars_name_the_row_and_write_nothing(tmp_path, run_cli, change, message):
    src = tmp_path / "src"
    src.mkdir()
    _write(src, "csv")
    df = pd.read_csv(src / "metadata.csv")
    change(src, df).to_csv(src / "metadata.csv", index=False)
    existing = tmp_path / "store"
    ZooStore(existing, create=True)
    before = snapshot(existing)
    code, _, err = run_cli("store", "import", "folder", src, "--store", existing, "--arch", json.dumps(ARCH))
    assert code == 2 and message in err, err
    assert snapshot(existing) == before


def test_rename_onto_one_name_and_shapes_that_do_not_match_arch_exit_2(tmp_path, run_cli):
    src = tmp_path / "src"
    src.mkdir()
    _write(src, "csv")
    code, _, err = run_cli("store", "import", "folder", src, "--store", tmp_path / "a", "--arch", json.dumps(ARCH),
                           "--rename", r"^\d\.=layers.0.")
    assert code == 2 and "onto one name" in err, err
    wide = {**ARCH, "width": 16}
    code, _, err = run_cli("store", "import", "folder", src, "--store", tmp_path / "b", "--arch", json.dumps(wide))
    assert code == 2 and "run0/ep0.pt" in err and "[8, 4]" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_options_of_other_formats_are_refused(tmp_path, run_cli):
    code, _, err = run_cli("store", "import", "folder", tmp_path, "--skip-incomplete")
    assert code == 2 and "applies to the model-zoos format" in err


def test_batchnorm_buffers_are_mapped_by_name_or_refused_never_dropped(tmp_path):
    """A BatchNorm model's running statistics go where the layout keeps them; a layout without them refuses the file."""
    from store.layout import register_architecture

    def build(cfg):
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    register_architecture("test-bn-mlp", build)
    src = tmp_path / "bn"
    src.mkdir()
    torch.manual_seed(0)
    net = build({})
    net.train()
    net(torch.randn(16, 4))  # running statistics move away from their initial values
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}  # other names than the layout's: mapped by order
    torch.save(sd, src / "m.pt")
    layout = ParamLayout.from_config({"name": "test-bn-mlp"})
    if any(n.endswith("running_mean") for n in layout.names):  # layouts that keep buffers (issue 15)
        rep = import_folder(tmp_path / "s", src, arch={"name": "test-bn-mlp"})
        w, _ = ZooStore(tmp_path / "s", create=False).weights("SELECT checkpoint_id FROM checkpoints")
        back = layout.unflatten(w[0])
        assert torch.equal(back["1.running_mean"], net[1].running_mean)
        assert rep.layouts[0]["mapping"][0]["method"] == "automatic"
    else:  # today's layouts hold parameters only: importing would drop the statistics, so it is refused
        with pytest.raises(UserError, match="has 9 tensors|no place"):
            import_folder(tmp_path / "s", src, arch={"name": "test-bn-mlp"})
        assert not (tmp_path / "s").exists()
