"""`wsl export`: selections out as safetensors / Hugging Face folders / state dicts, with their metadata, and back in."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from _zoo_fixtures import snapshot
from store import ZooStore
from store.import_modelzoos import import_model_zoos


@pytest.fixture(scope="module")
def zoo(model_zoos_src, tmp_path_factory):
    """The Model Zoos fixture imported, plus a landscape row for one model (read-only for these tests)."""
    src, _ = model_zoos_src
    path = tmp_path_factory.mktemp("export") / "store"
    import_model_zoos(path, src, dataset="digits")
    s = ZooStore(path, create=False)
    mid = s.sql("SELECT min(model_id) AS m FROM models").m[0]
    s.append("landscape", [dict(model_id=mid, epoch=3, recipe_id="r1", hessian_top_eig=12.5, hessian_trace=80.0,
                                mode_connectivity=-0.1, cka_logits=0.9, cka_hidden=0.8, train_loss=0.2, train_acc=0.95,
                                phase="IV-B", thresholds="{}", recipe="{}")])
    return s


class PlainMLP(nn.Module):
    """What a PyTorch user writes from the exported config: no wsl-zoo code involved."""

    def __init__(self, in_features, out_features, width, depth, activation="tanh", **_):
        super().__init__()
        dims = [in_features] + [width] * depth + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def test_safetensors_files_give_plain_torch_the_logits_of_wsl_evaluate(zoo, tmp_path, run_cli):
    import wsl
    from zoo import load_dataset

    out = tmp_path / "st"
    code, _, err = run_cli("export", "--where", "epoch = 3", out, "--store", zoo.path, "--report", "json")
    assert code == 0, err
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == 3 and (out / "metadata.parquet").exists()
    ds = load_dataset("digits", seed=0)
    x, y = ds.split("test")
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata()
        config = json.loads(meta["layout_json"])["arch"]
        assert json.loads(meta["wsl_model"])["lr"] in (0.1, 0.2, 0.3) and json.loads(meta["wsl_checkpoint"])["epoch"] == 3
        module = PlainMLP(**config)
        module.load_state_dict(load_file(str(f)))  # strict: the names are the module's
        with torch.no_grad():
            logits = module(x)
        w, _ = zoo.weights([meta["checkpoint_id"]])
        layout = zoo.layout(meta["layout_id"])
        ours = wsl.population_forward(layout, layout.unflatten(w), x)[0]
        assert torch.allclose(logits, ours, atol=1e-5)
        res = wsl.evaluate(w, layout, ds, return_predictions=True)
        assert torch.equal(res.predictions[0], logits.argmax(1))
        assert float(res.loss[0]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_hf_folders_read_with_huggingface_hub_and_carry_the_metadata(zoo, tmp_path, run_cli):
    from huggingface_hub import ModelCard, PyTorchModelHubMixin

    out = tmp_path / "hf"
    code, _, err = run_cli("export", "--where", "status = 'imported'", out, "--format", "hf", "--checkpoint", "best",
                           "--store", zoo.path)
    assert code == 0, err
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 3 and all({q.name for q in p.iterdir()} == {"config.json", "model.safetensors", "README.md"}
                                     for p in folders)
    best = zoo.sql("SELECT model_id, max(test_acc) AS acc FROM checkpoints GROUP BY model_id")
    mid = zoo.sql("SELECT min(model_id) AS m FROM models").m[0]

    class HubMLP(PlainMLP, PyTorchModelHubMixin):
        pass

    for p in folders:
        card = ModelCard.load(p / "README.md").data.to_dict()
        model, ckpt = card["wsl"]["model"], card["wsl"]["checkpoint"]
        assert model["model_id"] == p.name and model["zoo"] == "tune_zoo_digits_mlp"
        assert model["optim_lr"] == model["lr"] and model["seed"] in (1, 2, 3)  # hyperparameters
        assert ckpt["test_acc"] == best.set_index("model_id").acc[p.name]  # metrics of the best checkpoint
        assert card["wsl"]["provenance"]["sha256"] == ckpt["sha256"]
        if p.name == mid and ckpt["epoch"] == 3:
            assert card["wsl"]["landscape"][0]["phase"] == "IV-B"
        module = HubMLP.from_pretrained(str(p))  # config.json -> constructor, model.safetensors -> weights
        w, _ = zoo.weights([ckpt["checkpoint_id"]])
        assert torch.equal(module.layers[0].weight.detach().flatten(), w[0, :64 * 16])


def test_state_dicts_load_with_weights_only(zoo, tmp_path):
    rep = zoo.export(tmp_path / "sd", where="epoch = 1", fmt="state-dict")
    assert rep.written == 3
    layout = zoo.layout(zoo.sql("SELECT layout_id FROM layouts").layout_id[0])
    for f in sorted((tmp_path / "sd").glob("*.pt")):
        module = layout.build_module()
        module.load_state_dict(torch.load(f, weights_only=True))
        w, _ = zoo.weights([f.stem])
        assert torch.equal(layout.flatten(module), w[0])


def test_resumes_refuses_foreign_files_and_never_leaves_partial_files(zoo, tmp_path, run_cli):
    out = tmp_path / "ex"
    assert zoo.export(out, where="status = 'imported'").written == 12
    victim = sorted(out.glob("*.safetensors"))[4]
    victim.unlink()
    (out / ".tmp-half-written.safetensors").write_bytes(b"\0" * 10)  # what a killed run leaves
    rep = zoo.export(out, where="status = 'imported'")
    assert (rep.written, rep.skipped) == (1, 11) and victim.exists() and not list(out.glob(".tmp-*"))
    assert pq.read_table(out / "metadata.parquet").num_rows == 12
    # a file of another selection under one of our names, and a folder holding other files: refused, nothing written
    sorted(out.glob("*.safetensors"))[0].write_bytes(sorted(out.glob("*.safetensors"))[1].read_bytes())
    before = snapshot(out)
    code, _, err = run_cli("export", "--where", "status = 'imported'", out, "--store", zoo.path)
    assert code == 2 and "does not hold checkpoint" in err and snapshot(out) == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = run_cli("export", "--where", "epoch = 1", tmp_path / "busy", "--store", zoo.path)
    assert code == 2 and "holds other files (notes.txt)" in err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    code, _, err = run_cli("export", "--where", "epoch = 99", tmp_path / "none", "--store", zoo.path)
    assert code == 2 and "selects no checkpoints" in err and not (tmp_path / "none").exists()


@pytest.mark.parametrize("fmt,kind", [("safetensors", "folder"), ("state-dict", "folder"), ("hf", "hf")])
def test_an_export_imports_back_as_itself(zoo, tmp_path, run_cli, fmt, kind):
    out = tmp_path / "ex"
    zoo.export(out, where="status = 'imported'", fmt=fmt)
    code, _, err = run_cli("store", "import", kind, out, "--store", tmp_path / "copy")
    assert code == 0, err
    copy = ZooStore(tmp_path / "copy", create=False)
    q = "SELECT * EXCLUDE (weights) FROM checkpoints ORDER BY checkpoint_id"
    theirs = copy.sql(q)
    ours = zoo.sql(q)
    ours = ours[ours.checkpoint_id.isin(theirs.checkpoint_id)].reset_index(drop=True)
    assert len(theirs) == (3 if fmt == "hf" else 12) and theirs[ours.columns].equals(ours)
    assert copy.sql("SELECT * FROM models ORDER BY model_id").equals(
        zoo.sql("SELECT * FROM models WHERE status = 'imported' ORDER BY model_id")[copy.sql("SELECT * FROM models").columns])
    before = snapshot(zoo.path)  # into the store it came from: a no-op
    code, out_, err = run_cli("store", "import", kind, out, "--store", zoo.path, "-f", "json")
    assert code == 0 and json.loads(out_)["new_checkpoints"] == 0, err
    assert snapshot(zoo.path) == before


def test_rows_go_out_in_their_stored_dtype_and_come_back_bit_for_bit(tmp_path):
    from store import ParamLayout
    from store.import_folder import import_folder
    from store.import_hf import import_hf

    s = ZooStore(tmp_path / "s", create=True)
    lay = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "width": 8, "depth": 1})
    s.append("models", [dict(model_id=f"m{i}", zoo="z", architecture="mlp", arch_config=None, layout_id=lay.layout_id,
                             dataset=None, dataset_id=None, task=None, width=8, depth=1, optimizer=None, lr=None,
                             momentum=None, weight_decay=None, batch_size=None, epochs=1, schedule=None, seed=i,
                             status="done", hparams="{}") for i in range(3)])
    w = torch.randn(3, lay.num_params)
    for i, dt in enumerate(["bfloat16", "float16", "float32"]):
        s.append_weights("checkpoints", w[i:i + 1], [dict(checkpoint_id=f"m{i}-e0001", model_id=f"m{i}", epoch=1, step=None,
                                                          train_loss=None, train_acc=None, test_loss=None, test_acc=None)],
                         lay, dtype=dt)
    q = "SELECT * EXCLUDE (weights) FROM checkpoints ORDER BY checkpoint_id"
    for fmt in ("safetensors", "hf", "state-dict"):
        s.export(tmp_path / fmt, fmt=fmt)
        assert s.export(tmp_path / fmt, fmt=fmt).skipped == 3  # resumed: every file recognised by its sha256
        imp = import_hf if fmt == "hf" else import_folder
        assert imp(s, tmp_path / fmt).new_checkpoints == 0  # into its own store: a no-op
        imp(tmp_path / f"copy-{fmt}", tmp_path / fmt)
        assert ZooStore(tmp_path / f"copy-{fmt}", create=False).sql(q).equals(s.sql(q))
    st = load_file(str(tmp_path / "safetensors" / "m0-e0001.safetensors"))
    assert {t.dtype for t in st.values()} == {torch.bfloat16}


def test_reads_are_batched_by_bytes(zoo, tmp_path, monkeypatch):
    import store.export as ex

    calls = []
    real = zoo.weights
    monkeypatch.setattr(ex, "READ_BYTES", 3 * 1210 * 4)  # three of these checkpoints per read
    monkeypatch.setattr(zoo, "weights", lambda ids, **kw: calls.append(len(ids)) or real(ids, **kw))
    assert zoo.export(tmp_path / "b", where="status = 'imported'").written == 12
    assert calls == [3, 3, 3, 3]
