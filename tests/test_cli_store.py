"""`wsl query` and `wsl store ...`: outputs, and the error contract (exit 2, one line naming the fix)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from store import ParamLayout, ZooStore
from test_store import LAYOUT, fill


@pytest.fixture
def store(tmp_path):
    s = ZooStore(tmp_path / "store", create=True)
    fill(s)
    return s


def test_query_table_csv_json(run_cli, store):
    code, out, err = run_cli("query", "SELECT model_id, lr FROM models ORDER BY model_id LIMIT 3", "--store", store.path)
    assert code == 0 and "m0" in out and "m2" in out, err
    code, out, _ = run_cli("query", "SELECT model_id, lr FROM models ORDER BY model_id", "--store", store.path, "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "model_id,lr" and len(out.splitlines()) == 7
    code, out, _ = run_cli("query", "SELECT checkpoint_id, weights FROM checkpoints ORDER BY 1 LIMIT 2",
                           "--store", store.path, "-f", "json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["checkpoint_id"] == "m0-e0000" and rows[0]["weights"] == f"<{LAYOUT.num_params * 4} bytes>"


def test_query_parquet_keeps_weight_bytes(run_cli, store, tmp_path):
    out_file = tmp_path / "sel.parquet"
    code, out, err = run_cli("query", "SELECT * FROM checkpoints WHERE epoch = 1", "--store", store.path,
                             "--format", "parquet", "--out", out_file)
    assert code == 0, err
    t = pq.read_table(out_file)
    assert t.num_rows == 6 and len(t.column("weights")[0].as_py()) == LAYOUT.num_params * 4


def test_global_store_option_and_env(run_cli, store, monkeypatch):
    code, out, _ = run_cli("--store", store.path, "query", "SELECT count(*) AS n FROM checkpoints", "-f", "csv")
    assert code == 0 and out.splitlines()[1] == "18"
    monkeypatch.setenv("WSL_STORE", str(store.path))
    code, out, _ = run_cli("query", "SELECT count(*) AS n FROM models", "-f", "csv")
    assert code == 0 and out.splitlines()[1] == "6"


@pytest.mark.parametrize("args,message", [
    (["query", "SELECT 1", "--store", "{missing}"], "no zoo store at"),
    (["query", "DELETE FROM models", "--store", "{store}"], "read-only"),
    (["query", "DROP VIEW models", "--store", "{store}"], "read-only"),
    (["query", "SELECT * FROM nope", "--store", "{store}"], "SQL error"),
    (["query", "SELECT * FROM read_csv('/etc/passwd')", "--store", "{store}"], "ermission"),
    (["query", "SELECT 1", "--store", "{store}", "--format", "xml"], "unknown --format"),
    (["query", "SELECT 1", "--store", "{store}", "--format", "parquet"], "--out"),
    (["store", "check", "--store", "{missing}"], "no zoo store at"),
    (["store", "export", "nope-e0000", "{tmp}/x.safetensors", "--store", "{store}"], "not in checkpoints"),
    (["store", "export", "m0-e0000", "{tmp}/x.pt", "--store", "{store}"], ".safetensors"),
    (["store", "import", "{tmp}/nothing-here", "--store", "{store}"], "is not a folder"),
    (["store", "import", "{tmp}", "--store", "{store}", "--arch", "{{not json"], "--arch is not valid JSON"),
])
def test_errors_exit_2_with_one_line(run_cli, store, tmp_path, args, message):
    before = sorted(p.name for p in store.path.rglob("*"))
    args = [a.format(missing=tmp_path / "missing", store=store.path, tmp=tmp_path) for a in args]
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err and "Fix:" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in store.path.rglob("*")) == before  # wrote nothing
    assert not (tmp_path / "missing").exists()


def test_store_tables_and_check(run_cli, store):
    code, out, _ = run_cli("store", "tables", "--store", store.path, "-f", "json")
    rows = {r["table"]: r for r in json.loads(out)}
    assert code == 0 and rows["checkpoints"]["rows"] == 18 and rows["samples"]["rows"] == 0
    code, out, _ = run_cli("store", "check", "--store", store.path)
    assert code == 0 and "ok" in out
    part = store.part_files("checkpoints")[0]
    part.write_bytes(part.read_bytes()[:-64])
    code, out, err = run_cli("store", "check", "--store", store.path)
    assert code == 1 and str(part) in err
    code, out, err = run_cli("store", "check", "--store", store.path, "-f", "json", "--quarantine")
    report = json.loads(out)
    assert code == 1 and report["quarantined"] and not part.exists()
    code, out, _ = run_cli("store", "check", "--store", store.path)
    assert code == 0


def test_store_compact(run_cli, store):
    for e in range(3, 6):
        store.append_weights("checkpoints", torch.randn(1, LAYOUT.num_params), [dict(
            checkpoint_id=f"m0-e{e:04d}", model_id="m0", epoch=e, step=e, train_loss=0.0, train_acc=1.0,
            test_loss=0.0, test_acc=1.0)], LAYOUT)
    code, out, err = run_cli("store", "compact", "--store", store.path, "-f", "json")
    rep = json.loads(out)
    assert code == 0, err
    assert rep["tables"]["checkpoints"]["parts_before"] == 4 and rep["tables"]["checkpoints"]["parts_after"] == 1
    assert ZooStore(store.path).count("checkpoints") == 21


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_import_folder_and_export(run_cli, tmp_path):
    src = tmp_path / "zoo-files"
    (src / "sub").mkdir(parents=True)
    torch.manual_seed(0)
    models = [_mlp() for _ in range(3)]
    torch.save(models[0].state_dict(), src / "a.pt")
    torch.save({"state_dict": models[1].state_dict(), "epoch": 3}, src / "b.pth")  # a common wrapper
    save_file({k: v.contiguous() for k, v in models[2].state_dict().items()}, str(src / "sub" / "c.safetensors"))
    (src / "notes.txt").write_text("ignored")
    store = tmp_path / "imported"
    code, out, err = run_cli("store", "import", src, "--store", store, "-f", "json")
    assert code == 0, err
    counts = json.loads(out)
    assert counts["checkpoints"] == 3 and counts["new_checkpoints"] == 3 and len(counts["layouts"]) == 1
    # again: a no-op (keys come from the zoo name and the file's path)
    code, out, _ = run_cli("store", "import", src, "--store", store, "-f", "json")
    assert json.loads(out)["new_checkpoints"] == 0
    s = ZooStore(store, create=False)
    meta = s.sql("SELECT checkpoint_id, source FROM checkpoints ORDER BY source")
    assert meta.source.tolist() == ["a.pt", "b.pth", "sub/c.safetensors"]
    w, _ = s.weights(meta.checkpoint_id.tolist(), verify=True)
    layout = s.layout(s.sql("SELECT layout_id FROM layouts").layout_id[0])
    for i, m in enumerate(models):
        assert torch.equal(w[i], layout.flatten(m.state_dict()))
    # export: the same named tensors, bit for bit
    out_file = tmp_path / "exported.safetensors"
    code, out, err = run_cli("store", "export", meta.checkpoint_id[1], out_file, "--store", store)
    assert code == 0, err
    back = load_file(str(out_file))
    for k, v in models[1].state_dict().items():
        assert torch.equal(back[k], v)


def test_import_with_arch_config(run_cli, tmp_path):
    from store.layout import register_architecture

    def build(cfg):
        m = nn.Sequential(nn.Linear(cfg["in_features"], cfg["width"]), nn.ReLU(), nn.Linear(cfg["width"], cfg["out_features"]))
        return m

    register_architecture("test-seq", build)
    arch = {"name": "test-seq", "in_features": 3, "width": 4, "out_features": 2}
    src = tmp_path / "files"
    src.mkdir()
    torch.save(_mlp().state_dict(), src / "m.pt")
    code, out, err = run_cli("store", "import", src, "--store", tmp_path / "s", "--arch", json.dumps(arch), "-f", "json")
    assert code == 0, err
    s = ZooStore(tmp_path / "s", create=False)
    lay = s.layout(s.sql("SELECT layout_id FROM models").layout_id[0])
    assert lay == ParamLayout.from_config(arch) and s.sql("SELECT architecture FROM models").architecture[0] == "test-seq"
    # a file that does not fit the architecture is refused, and nothing is written
    torch.save(nn.Linear(5, 5).state_dict(), src / "other.pt")
    code, out, err = run_cli("store", "import", src, "--store", tmp_path / "s2", "--arch", json.dumps(arch))
    assert code == 2 and "other.pt" in err and "has 2 tensors" in err
    assert not (tmp_path / "s2").exists()  # nothing written, not even zoo.json


def test_import_never_unpickles_objects(run_cli, tmp_path):
    src = tmp_path / "files"
    src.mkdir()
    torch.save(_mlp(), src / "whole-module.pt")  # a pickled nn.Module, not a state dict
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    with open(src / "evil.pth", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    code, out, err = run_cli("store", "import", src, "--store", tmp_path / "s")
    assert code == 2 and "weights_only" in err
    assert not marker.exists()
    assert not (tmp_path / "s").exists()
