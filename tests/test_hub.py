"""Publishing a zoo as a Hub dataset and pulling it back: the folder, the card, the limits, the upload, the pull.

Offline: uploads go to a fake API that records its calls; pulls read a local folder (or a fake download).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from store import ParamLayout, UserError, ZooStore
from store import hub

SENTINEL = "hf_SENTINELtoken0123456789abcdef"

SMALL = ParamLayout([("0.weight", (32, 4)), ("0.bias", (32,)), ("2.weight", (3, 32)), ("2.bias", (3,))],
                    arch={"name": "mlp", "in_features": 4, "width": 32, "depth": 1, "out_features": 3})
WIDE = ParamLayout([("0.weight", (64, 4)), ("0.bias", (64,)), ("2.weight", (3, 64)), ("2.bias", (3,))],
                   arch={"name": "mlp", "in_features": 4, "width": 64, "depth": 1, "out_features": 3})
UNUSED = ParamLayout([("fc.weight", (2, 2))], arch={"name": "toy"})
LRS = [0.001, 0.01, 0.1]


def model_row(i: int, layout: ParamLayout) -> dict:
    lr = LRS[i % 3]
    return dict(model_id=f"m{i}", zoo="tiny", architecture="mlp", arch_config=json.dumps(layout.arch),
                layout_id=layout.layout_id, dataset="toy" if i < 6 else "toy-b", dataset_id="toy-0" if i < 6 else "toy-b-0",
                task="classification", width=layout.arch["width"], depth=1, optimizer="sgd", lr=lr, momentum=0.9,
                weight_decay=0.0, batch_size=16, epochs=3, schedule="constant", seed=i, status="done",
                hparams=json.dumps({"lr": lr}), label_noise=0.1 * (i % 2))  # an extra, zoo-specific column


def ckpt_rows(models: range, epochs: int = 3) -> list[dict]:
    return [dict(checkpoint_id=f"m{m}-e{e:04d}", model_id=f"m{m}", epoch=e, step=10 * e,
                 train_loss=1.0 / (e + 1), train_acc=0.3 + 0.1 * e + 0.01 * m,
                 test_loss=1.1 / (e + 1), test_acc=0.25 + 0.1 * e + 0.01 * m) for m in models for e in range(epochs)]


def build_zoo(path: Path) -> ZooStore:
    """6 models of a tiny MLP (width 32) + 2 wider ones, 3 checkpoints each, landscape, datasets, evaluations."""
    s = ZooStore(path, create=True)
    g = torch.Generator().manual_seed(0)
    s.append("models", [model_row(i, SMALL) for i in range(6)] + [model_row(i, WIDE) for i in (6, 7)])
    small = ckpt_rows(range(6))
    s.append_weights("checkpoints", torch.randn(len(small), SMALL.num_params, generator=g), small, SMALL)
    wide = ckpt_rows(range(6, 8))
    s.append_weights("checkpoints", torch.randn(len(wide), WIDE.num_params, generator=g), wide, WIDE, dtype="float16")
    s.add_layout(UNUSED)
    s.append("datasets", [dict(dataset_id=d, name=d[:-2], task="classification", num_classes=3, input_shape="[4]",
                               output_dim=3, n_train=100, n_test=50, seed=0, meta="{}")
                          for d in ("toy-0", "toy-b-0", "unused-0")])
    s.append("landscape", [dict(model_id=f"m{m}", epoch=2, recipe_id="r1", hessian_top_eig=1.0 * m, hessian_trace=2.0 * m,
                                mode_connectivity=0.1 - 0.05 * m, cka_logits=0.5, cka_hidden=0.4, train_loss=0.3,
                                train_acc=0.9, phase=["III", "IV-A", "IV-B", "I"][m % 4], thresholds="{}", recipe="{}")
                           for m in range(8)])
    s.append("evaluations", [dict(checkpoint_id=f"m{m}-e0002", model_id=f"m{m}", dataset="toy", dataset_id="toy-0",
                                  split="test", loss=0.5, accuracy=0.6) for m in range(8)])
    return s


@pytest.fixture
def zoo(tmp_path) -> ZooStore:
    return build_zoo(tmp_path / "store")


@pytest.fixture
def folder(zoo, tmp_path) -> Path:
    hub.build_folder(zoo, tmp_path / "hubdir", repo_id="lab/tiny-zoo")
    return tmp_path / "hubdir"


def read_card(folder: Path):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md")


def decode(buf: bytes, dtype: str) -> np.ndarray:
    """What the card tells users to do, without our package."""
    if dtype == "bfloat16":
        return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(buf, {"float32": "<f4", "float16": "<f2"}[dtype])


def folder_con(folder: Path) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB over the folder's Parquet: one view per data/<table>."""
    con = duckdb.connect()
    for d in sorted((folder / "data").iterdir()):
        con.execute(f"CREATE VIEW {d.name} AS SELECT * FROM read_parquet('{d}/**/*.parquet')")
    return con


# ----- the folder -------------------------------------------------------------------------------
def test_dry_run_writes_shards_manifest_and_card(zoo, folder):
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "README.md" in files and "wsl-zoo.json" in files
    for t in ("models", "checkpoints", "layouts", "datasets", "landscape", "evaluations"):
        assert f"data/{t}/{t}-00000-of-00001.parquet" in files
    assert not any("generators" in f or "samples" in f or "/." in f for f in files)  # empty tables left out
    manifest = json.loads((folder / "wsl-zoo.json").read_text())
    for t, info in manifest["tables"].items():
        assert info["rows"] == zoo.count(t)
        assert info["rows"] == sum(pq.read_metadata(folder / f).num_rows for f in info["files"])
    assert not list(folder.parent.glob(".tmp-*"))  # the temporary build folder was renamed into place


def test_card_front_matter_has_configs_license_tags(folder):
    data = read_card(folder).data
    assert data.license == "cc-by-4.0"
    assert {"weight-space-learning", "model-zoo"} <= set(data.tags)
    configs = {c["config_name"]: c for c in data.configs}
    assert set(configs) == {"models", "checkpoints", "layouts", "datasets", "landscape", "evaluations"}
    assert configs["models"].get("default") is True and sum(bool(c.get("default")) for c in configs.values()) == 1
    assert configs["checkpoints"]["data_files"] == [{"split": "train", "path": "data/checkpoints/*.parquet"}]


def test_card_body_has_schema_decoding_and_summary(folder):
    text = (folder / "README.md").read_text()
    body = text.split("---", 2)[2]
    assert "lab/tiny-zoo" in body
    for needle in ("np.frombuffer", "layout_json", "hf://datasets/lab/tiny-zoo/data/models/*.parquet",
                   "wsl pull lab/tiny-zoo", "ZooStore", "load_dataset", "duckdb"):
        assert needle in body, needle
    # schema: every column of every table, with its type and meaning; extra columns included
    assert "| `weights` | binary |" in body and "| `label_noise` | float64 | zoo-specific" in body
    assert "| `phase` | string | Yang et al." in body
    # summary: counts, architectures, datasets, phases, accuracy
    assert "| checkpoints | `checkpoints` | 24 |" in body
    assert re.search(r"\| mlp \| 8 \| 2 \| 259 to 515 \|", body)
    assert "| toy | 6 |" in body and "| toy-b | 2 |" in body
    assert "| IV-B | 2 |" in body and "| I | 2 |" in body
    assert re.search(r"\| test_acc \| 0\.45 \| 0\.485 \| 0\.52 \|", body)


def test_load_dataset_reads_the_folder_with_the_store_row_counts(zoo, folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")
    for t in ("models", "checkpoints", "layouts", "landscape"):
        ds = datasets.load_dataset(str(folder), t, split="train", cache_dir=cache)
        assert ds.num_rows == zoo.count(t), t
    default = datasets.load_dataset(str(folder), split="train", cache_dir=cache)
    assert default.num_rows == zoo.count("models") and "lr" in default.column_names


def test_decoded_weights_equal_the_store(zoo, folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")
    layouts = {r["layout_id"]: json.loads(r["layout_json"])
               for r in datasets.load_dataset(str(folder), "layouts", split="train", cache_dir=cache)}
    ckpts = datasets.load_dataset(str(folder), "checkpoints", split="train", cache_dir=cache)
    assert ckpts.num_rows == 24
    for layout in (SMALL, WIDE):
        ids = sorted(r["checkpoint_id"] for r in ckpts if r["layout_id"] == layout.layout_id)
        want, _ = zoo.weights(ids)
        by_id = {r["checkpoint_id"]: r for r in ckpts if r["layout_id"] == layout.layout_id}
        got = np.stack([decode(by_id[i]["weights"], by_id[i]["dtype"]) for i in ids])
        np.testing.assert_array_equal(got, want.numpy())
        # and reshaped by layout_json into the named tensors
        row = by_id[ids[0]]
        flat, offset = decode(row["weights"], row["dtype"]), 0
        expected = layout.unflatten(want[0])
        for name, shape in layouts[row["layout_id"]]["params"]:
            n = int(np.prod(shape))
            np.testing.assert_array_equal(flat[offset:offset + n].reshape(shape), expected[name].numpy())
            offset += n
        assert offset == layout.num_params


QUERIES = [
    "SELECT count(*) AS n FROM checkpoints",
    "SELECT lr, count(*) AS n, avg(width) AS w FROM models GROUP BY lr ORDER BY lr",
    "SELECT m.lr, max(c.test_acc) AS best FROM checkpoints c JOIN models m USING (model_id) "
    "WHERE c.epoch = 2 GROUP BY m.lr ORDER BY m.lr",
    "SELECT phase, count(*) AS n FROM landscape GROUP BY phase ORDER BY phase",
    "SELECT checkpoint_id, sha256, octet_length(weights) AS nbytes FROM checkpoints ORDER BY checkpoint_id",
    "SELECT l.num_params, count(*) AS n FROM checkpoints c JOIN layouts l USING (layout_id) GROUP BY 1 ORDER BY 1",
    "SELECT model_id, label_noise FROM models WHERE label_noise > 0 ORDER BY model_id",
]


@pytest.mark.parametrize("query", QUERIES)
def test_plain_duckdb_over_the_folder_gives_the_store_answers(zoo, folder, query):
    got = folder_con(folder).sql(query).df()
    want = zoo.sql(query)
    assert got.to_dict("list") == want.to_dict("list")


# ----- selection ------------------------------------------------------------------------------------
def test_where_restricts_models_and_everything_that_depends_on_them(zoo, tmp_path):
    r = hub.build_folder(zoo, tmp_path / "wide", where="width = 64")
    con = folder_con(tmp_path / "wide")
    assert sorted(x[0] for x in con.sql("SELECT model_id FROM models").fetchall()) == ["m6", "m7"]
    for t in ("checkpoints", "landscape", "evaluations"):
        assert {x[0] for x in con.sql(f"SELECT DISTINCT model_id FROM {t}").fetchall()} == {"m6", "m7"}, t
    assert con.sql("SELECT count(*) FROM checkpoints").fetchall()[0][0] == 6
    assert [x[0] for x in con.sql("SELECT layout_id FROM layouts").fetchall()] == [WIDE.layout_id]
    # trained on toy-b-0, evaluated on toy-0 (evaluations reference it); unused-0 is left out
    assert sorted(x[0] for x in con.sql("SELECT dataset_id FROM datasets").fetchall()) == ["toy-0", "toy-b-0"]
    assert r.manifest["where"] == "width = 64"
    assert "width = 64" in (tmp_path / "wide" / "README.md").read_text()


def test_without_where_the_whole_store_goes_including_unreferenced_rows(zoo, folder):
    con = folder_con(folder)
    assert con.sql("SELECT count(*) FROM layouts").fetchall()[0][0] == 3
    assert con.sql("SELECT count(*) FROM datasets").fetchall()[0][0] == 3


def test_where_can_use_other_tables(zoo, tmp_path):
    hub.build_folder(zoo, tmp_path / "p", where="model_id IN (SELECT model_id FROM landscape WHERE phase = 'IV-B')",
                     tables="models,landscape")
    con = folder_con(tmp_path / "p")
    assert sorted(x[0] for x in con.sql("SELECT model_id FROM models").fetchall()) == ["m2", "m6"]
    assert sorted(d.name for d in (tmp_path / "p" / "data").iterdir()) == ["landscape", "models"]


def test_tables_option_picks_tables_and_weights_tables_bring_layouts(zoo, tmp_path):
    r = hub.build_folder(zoo, tmp_path / "a", tables=["models"])
    assert list(r.manifest["tables"]) == ["models"]
    assert [c["config_name"] for c in read_card(tmp_path / "a").data.configs] == ["models"]
    r = hub.build_folder(zoo, tmp_path / "b", tables=["checkpoints"])
    assert list(r.manifest["tables"]) == ["checkpoints", "layouts"]
    assert any("layouts" in n for n in r.notes)
    data = read_card(tmp_path / "b").data
    assert [c["config_name"] for c in data.configs if c.get("default")] == ["checkpoints"]
    with pytest.raises(UserError, match="unknown table"):
        hub.build_folder(zoo, tmp_path / "c", tables="models,chekpoints")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("where, match", [
    ("lr > 100", "no models match"),
    ("no_such_column > 1", "not a valid filter"),
    ("lr > 0; DROP TABLE models", "not a valid filter"),
])
def test_bad_or_empty_selection_is_a_user_error_and_writes_nothing(zoo, tmp_path, where, match):
    with pytest.raises(UserError, match=match):
        hub.build_folder(zoo, tmp_path / "out", where=where)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_empty_store_and_empty_tables_are_user_errors(tmp_path, zoo):
    with pytest.raises(UserError, match="nothing to publish"):
        hub.build_folder(ZooStore(tmp_path / "empty", create=True), tmp_path / "out")
    with pytest.raises(UserError, match="nothing to publish"):
        hub.build_folder(zoo, tmp_path / "out", tables="samples,generators")
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_a_non_empty_directory(zoo, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not an empty directory"):
        hub.build_folder(zoo, tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["mine.txt"]
    (tmp_path / "empty-ok").mkdir()
    hub.build_folder(zoo, tmp_path / "empty-ok")  # an empty directory is fine
    assert (tmp_path / "empty-ok" / "README.md").exists()


# ----- size limits ----------------------------------------------------------------------------------
def _check_limits(folder: Path, row_group_bytes: int, file_bytes: int) -> tuple[int, int]:
    nfiles = ngroups = 0
    for f in folder.rglob("*.parquet"):
        md = pq.read_metadata(f)
        nfiles += 1
        assert f.stat().st_size <= file_bytes, (f, f.stat().st_size)
        for i in range(md.num_row_groups):
            ngroups += 1
            assert md.row_group(i).total_byte_size <= row_group_bytes, (f, i, md.row_group(i).total_byte_size)
    return nfiles, ngroups


def test_row_groups_and_files_stay_within_injected_byte_limits(zoo, tmp_path):
    rg, fb = 4096, 32 * 1024
    r = hub.build_folder(zoo, tmp_path / "small", row_group_bytes=rg, file_bytes=fb)
    ck = r.manifest["tables"]["checkpoints"]
    assert len(ck["files"]) > 1 and ck["row_groups"] > len(ck["files"])  # several files, several groups per file
    assert ck["files"][0].endswith(f"-00000-of-{len(ck['files']):05d}.parquet")
    _check_limits(tmp_path / "small", rg, fb)
    # split shards still read as one table, with identical answers
    for q in QUERIES:
        assert folder_con(tmp_path / "small").sql(q).df().to_dict("list") == zoo.sql(q).to_dict("list")


def test_default_limits_are_the_hub_limits():
    assert hub.ROW_GROUP_BYTES == 64 * 2**20 and hub.FILE_BYTES == 500 * 2**20 and hub.MAX_FILES_PER_FOLDER < 10_000


def test_shard_writer_groups_rows_of_different_sizes_by_bytes(tmp_path):
    import pyarrow as pa

    from store.schema import TABLES

    schema = pa.schema([pa.field("checkpoint_id", pa.string()), pa.field("weights", pa.large_binary())])
    sizes = [100] * 30 + [900] * 5 + [5000] + [100] * 10  # one row bigger than a row group and a file
    t = pa.table({"checkpoint_id": [f"c{i}" for i in range(len(sizes))],
                  "weights": pa.array([b"x" * s for s in sizes], pa.large_binary())}, schema=schema)
    assert TABLES["checkpoints"].key == ("checkpoint_id",)
    w = hub.ShardWriter(tmp_path / "shards", "checkpoints", schema, row_group_bytes=1024, file_bytes=4096 + 3000)
    w.write(t.slice(0, 20))
    w.write(t.slice(20))
    w.write(t.slice(0, 5))  # duplicates (same keys) are dropped
    files = w.close()
    assert w.rows == len(sizes)
    back = pa.concat_tables([pq.read_table(f) for f in files])
    assert back.column("checkpoint_id").to_pylist() == t.column("checkpoint_id").to_pylist()  # order kept
    for f in files:
        md = pq.read_metadata(f)
        for i in range(md.num_row_groups):
            g = md.row_group(i)
            assert g.total_byte_size <= 1024 or g.num_rows == 1  # only a lone oversized row may exceed
        assert f.stat().st_size <= 4096 + 3000 or md.num_rows == 1
    alone = [f for f in files if pq.read_table(f).column("checkpoint_id").to_pylist() == ["c35"]]
    assert len(alone) == 1  # the oversized row has a file of its own


def test_more_files_than_a_folder_may_hold_go_into_subfolders(zoo, tmp_path):
    datasets = pytest.importorskip("datasets")
    r = hub.build_folder(zoo, tmp_path / "nested", tables="checkpoints", row_group_bytes=2048, file_bytes=8192,
                         max_files_per_folder=5)
    ck = r.manifest["tables"]["checkpoints"]
    assert ck["path_glob"] == "data/checkpoints/*/*.parquet" and len(ck["files"]) > 5
    for sub in (tmp_path / "nested" / "data" / "checkpoints").iterdir():
        assert sub.is_dir() and len(list(sub.iterdir())) <= 5
    ds = datasets.load_dataset(str(tmp_path / "nested"), "checkpoints", split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == 24


# ----- upload ---------------------------------------------------------------------------------------
class FakeApi:
    """Records every call; keeps a copy of what upload_folder was given."""

    def __init__(self, fail_upload: Exception | None = None, fail_create: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail_upload, self.fail_create = fail_upload, fail_create

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        if self.fail_create:
            raise self.fail_create
        return f"https://hub.example/datasets/{repo_id}"

    def _take(self, folder_path):
        root = Path(folder_path)
        self.uploaded = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        self._take(kw["folder_path"])
        if self.fail_upload:
            raise self.fail_upload
        return "commit"


class FakeLargeApi(FakeApi):
    def upload_large_folder(self, **kw):
        self.calls.append(("upload_large_folder", kw))
        self._take(kw["folder_path"])

    def list_repo_files(self, repo_id, repo_type=None):
        self.calls.append(("list_repo_files", {"repo_id": repo_id, "repo_type": repo_type}))
        return ["README.md", ".gitattributes", "data/models/models-00000-of-00002.parquet",
                "data/models/models-00000-of-00001.parquet", "notes.md"]

    def create_commit(self, **kw):
        self.calls.append(("create_commit", kw))


@pytest.fixture
def online(monkeypatch):
    """A logged-in, online environment (the token is a sentinel; nothing is reached: the API is fake)."""
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return SENTINEL


def _no_sentinel(*texts):
    for t in texts:
        assert SENTINEL not in t and SENTINEL[3:] not in t


def test_publish_creates_the_repo_then_uploads_the_folder(zoo, online, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    api = FakeApi()
    report = hub.publish(zoo, "lab/tiny-zoo", api=api, private=True)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    create, upload = api.calls[0][1], api.calls[1][1]
    assert create == {"repo_id": "lab/tiny-zoo", "repo_type": "dataset", "exist_ok": True, "private": True}
    assert upload["repo_id"] == "lab/tiny-zoo" and upload["repo_type"] == "dataset"
    assert "data/*" in upload["delete_patterns"]  # the previous version's shards go in the same commit
    assert "README.md" in api.uploaded and "data/checkpoints/checkpoints-00000-of-00001.parquet" in api.uploaded
    assert not Path(upload["folder_path"]).exists()  # staging removed afterwards
    assert report.published and report.url == "https://hub.example/datasets/lab/tiny-zoo"
    assert report.method == "upload_folder"
    for name, data in api.uploaded.items():
        assert SENTINEL.encode() not in data and SENTINEL[3:].encode() not in data, name
    out = capsys.readouterr()
    _no_sentinel(out.out, out.err, *[r.getMessage() for r in caplog.records])
    assert any("upload_folder" in r.getMessage() for r in caplog.records)


def test_large_folders_use_upload_large_folder_and_drop_stale_shards(zoo, online):
    api = FakeLargeApi()
    report = hub.publish(zoo, "lab/tiny-zoo", api=api, large_folder_bytes=1000)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_large_folder", "list_repo_files", "create_commit"]
    assert api.calls[1][1]["repo_type"] == "dataset" and report.method == "upload_large_folder"
    deleted = [op.path_in_repo for op in api.calls[3][1]["operations"]]
    assert deleted == ["data/models/models-00000-of-00002.parquet"]  # not README.md, not the user's notes.md
    # an API without upload_large_folder (huggingface_hub >= 1.0: upload_folder handles big folders itself)
    api = FakeApi()
    assert hub.publish(zoo, "lab/tiny-zoo", api=api, large_folder_bytes=1000).method == "upload_folder"


def test_a_failed_upload_is_not_reported_as_published_and_hides_the_token(zoo, online):
    api = FakeApi(fail_upload=RuntimeError(f"500 Server Error; request had Authorization: Bearer {SENTINEL}"))
    with pytest.raises(UserError) as e:
        hub.publish(zoo, "lab/tiny-zoo", api=api)
    msg = str(e.value)
    assert "did not finish" in msg and "NOT published" in msg
    _no_sentinel(msg, repr(e.value), str(e.value.__cause__), str(e.value.__context__))


class _Resp:
    status_code = 401


class _HTTPError(Exception):
    response = _Resp()


def test_rejected_credentials_say_how_to_log_in(zoo, online):
    api = FakeApi(fail_create=_HTTPError(f"401 Unauthorized: invalid token {SENTINEL}"))
    with pytest.raises(UserError, match="hf auth login") as e:
        hub.publish(zoo, "lab/tiny-zoo", api=api)
    assert [c[0] for c in api.calls] == ["create_repo"]
    _no_sentinel(str(e.value))


def test_missing_credentials_stop_before_anything_is_sent(zoo, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    api = FakeApi()
    with pytest.raises(UserError, match="HF_TOKEN") as e:
        hub.publish(zoo, "lab/tiny-zoo", api=api)
    assert "hf auth login" in str(e.value) and api.calls == []


def test_offline_mode_refuses_to_publish_but_dry_run_works(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    api = FakeApi()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub.publish(zoo, "lab/tiny-zoo", api=api)
    assert api.calls == []
    r = hub.publish(zoo, None, dry_run=tmp_path / "dry")
    assert not r.published and (tmp_path / "dry" / "README.md").exists()
    assert "ORG/NAME" in (tmp_path / "dry" / "README.md").read_text()


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "bad name/x", "org/na--me", "org/-x", "",
                                     "https://huggingface.co/datasets/org/x"])
def test_bad_repo_ids_are_refused(zoo, online, repo_id):
    api = FakeApi()
    with pytest.raises(UserError, match="repo id"):
        hub.publish(zoo, repo_id, api=api)
    assert api.calls == []


def test_empty_selection_sends_nothing(zoo, online):
    api = FakeApi()
    with pytest.raises(UserError, match="no models match"):
        hub.publish(zoo, "lab/tiny-zoo", api=api, where="lr > 100")
    assert api.calls == []


def test_scrub_removes_tokens():
    assert hub.scrub(f"x {SENTINEL} y", [SENTINEL]) == "x *** y"
    assert hub.scrub("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert "hf_" not in hub.scrub("token hf_abcdefghijkl leaked")


# ----- pull -----------------------------------------------------------------------------------------
def test_pull_from_a_folder_round_trips_into_a_new_store(zoo, folder, tmp_path):
    report = hub.pull(str(folder), tmp_path / "copy", weights=True)
    copy = ZooStore(tmp_path / "copy", create=False)
    for t in ("models", "checkpoints", "layouts", "datasets", "landscape", "evaluations"):
        assert copy.count(t) == zoo.count(t), t
        assert report.tables[t]["new"] == zoo.count(t)
    for q in QUERIES:
        assert copy.sql(q).to_dict("list") == zoo.sql(q).to_dict("list")
    q = f"SELECT checkpoint_id FROM checkpoints WHERE layout_id = '{WIDE.layout_id}' ORDER BY checkpoint_id"
    w_copy, meta = copy.weights(q)
    w_orig, _ = zoo.weights(q)
    assert w_copy.dtype == torch.float16 and torch.equal(w_copy, w_orig)
    assert copy.layout(meta.layout_id[0]) == WIDE
    again = hub.pull(str(folder), tmp_path / "copy", weights=True)  # a second pull adds nothing
    assert all(i["new"] == 0 for i in again.tables.values())
    assert copy.count("checkpoints") == 24


def test_pull_without_weights_imports_metadata_only(zoo, folder, tmp_path):
    report = hub.pull(str(folder), tmp_path / "meta")
    copy = ZooStore(tmp_path / "meta", create=False)
    assert copy.count("models") == 8 and copy.count("landscape") == 8 and copy.count("checkpoints") == 0
    assert "checkpoints" in report.skipped and "--weights" in report.skipped["checkpoints"]


def _fake_download(source: Path, calls: list):
    """Stands in for snapshot_download: copies the files matching allow_patterns (fnmatch, as the Hub does)."""
    def download(repo_id, *, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, list(allow_patterns)))
        out = source.parent / f"snapshot-{len(calls)}"
        for p in source.rglob("*"):
            rel = str(p.relative_to(source))
            if p.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, out / rel)
        out.mkdir(exist_ok=True)
        return str(out)
    return download


def test_pull_from_the_hub_downloads_metadata_first_and_weights_only_when_asked(zoo, folder, tmp_path):
    calls: list = []
    hub.pull("lab/tiny-zoo", tmp_path / "a", revision="v1", download=_fake_download(folder, calls))
    assert calls[0] == ("lab/tiny-zoo", "v1", ["README.md", "wsl-zoo.json"])
    assert len(calls) == 2 and not any("checkpoints" in p for p in calls[1][2])
    calls.clear()
    report = hub.pull("lab/tiny-zoo", tmp_path / "b", weights=True, download=_fake_download(folder, calls))
    assert len(calls) == 3
    assert "data/models/*" in calls[1][2] and calls[2][2] == ["data/checkpoints/*"]
    assert ZooStore(tmp_path / "b", create=False).count("checkpoints") == 24
    assert list(report.tables)[-1] == "checkpoints"


def test_pull_tables_option_and_unknown_tables(zoo, folder, tmp_path):
    hub.pull(str(folder), tmp_path / "c", tables="models,landscape")
    copy = ZooStore(tmp_path / "c", create=False)
    assert copy.count("models") == 8 and copy.count("landscape") == 8 and copy.count("layouts") == 0
    with pytest.raises(UserError, match="does not publish"):
        hub.pull(str(folder), tmp_path / "d", tables="samples")
    with pytest.raises(UserError, match="unknown table"):
        hub.pull(str(folder), tmp_path / "d", tables="nope")
    with pytest.raises(UserError, match="--weights"):
        hub.pull(str(folder), tmp_path / "d", tables="checkpoints")
    assert not (tmp_path / "d").exists()


def test_pull_refuses_a_newer_schema_and_a_non_store_directory(zoo, folder, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not a zoo store"):
        hub.pull(str(folder), tmp_path / "busy")
    manifest = json.loads((folder / "wsl-zoo.json").read_text())
    manifest["schema_version"] = 999
    (folder / "wsl-zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="newer"):
        hub.pull(str(folder), tmp_path / "new")
    assert not (tmp_path / "new").exists()


class RepositoryNotFoundError(Exception):
    """Stands in for huggingface_hub's (errors are told apart by class name: requests- and httpx-based versions)."""


def test_pull_reports_a_missing_repo_without_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)

    def download(repo_id, **kw):
        raise RepositoryNotFoundError(f"404 for {repo_id} with token {SENTINEL}")

    with pytest.raises(UserError, match="no dataset repo lab/none") as e:
        hub.pull("lab/none", tmp_path / "s", download=download)
    _no_sentinel(str(e.value), str(e.value.__context__), str(e.value.__cause__))
    assert not (tmp_path / "s").exists()


# ----- one Parquet writer policy ---------------------------------------------------------------------
def _policy_of(path: Path) -> dict:
    """How a Parquet file's column chunks were written: compression, dictionary, statistics, page index, per column."""
    md = pq.ParquetFile(path).metadata
    names = md.schema.names
    seen: dict = {}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for i in range(rg.num_columns):
            c = rg.column(i)
            got = (c.compression, "RLE_DICTIONARY" in c.encodings or "PLAIN_DICTIONARY" in c.encodings,
                   c.is_stats_set, c.has_offset_index)
            assert seen.setdefault(names[i], got) == got, (path, names[i])
    return seen


def test_store_parts_and_hub_shards_follow_one_writer_policy(zoo, folder):
    from store import parts

    part = zoo.part_files("checkpoints")[0]
    shard = folder / "data" / "checkpoints" / "checkpoints-00000-of-00001.parquet"
    for path in (part, shard):
        policy = _policy_of(path)
        # the weights: plain bytes, no dictionary, no statistics (store/fastread.py reads them with one copy)
        assert policy["weights"] == ("UNCOMPRESSED", False, False, True), path
        for col in ("checkpoint_id", "model_id", "test_acc", "sha256"):  # metadata: zstd, dictionary, statistics
            assert policy[col] == ("ZSTD", True, True, True), (path, col)
    assert _policy_of(part) == _policy_of(shard)
    schema = pq.read_schema(shard)
    w = hub.ShardWriter(folder.parent / "x", "checkpoints", schema)
    assert w._opts == parts.writer_options(schema)  # the shards ask the store's function, not a copy of it
    from store import fastread

    assert fastread.cell_index(str(shard)) is not None and fastread.cell_index(str(part)) is not None
