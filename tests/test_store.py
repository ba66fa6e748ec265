"""The zoo store: appends, keys, SQL, weights out as tensors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from store import ParamLayout, UserError, ZooStore
from store.schema import SCHEMA_VERSION, TABLES

LAYOUT = ParamLayout([("fc.weight", (4, 3)), ("fc.bias", (4,))], arch={"name": "toy", "width": 4})
WIDE = ParamLayout([("fc.weight", (8, 3)), ("fc.bias", (8,))], arch={"name": "toy", "width": 8})


def model_row(i: int, lr: float = 0.1, **kw) -> dict:
    row = dict(model_id=f"m{i}", zoo="toyzoo", architecture="toy", arch_config="{}", layout_id=LAYOUT.layout_id,
               dataset="digits", dataset_id="digits-0", task="classification", width=4, depth=1, optimizer="sgd",
               lr=lr, momentum=0.9, weight_decay=0.0, batch_size=32, epochs=3, schedule="constant", seed=i,
               status="done", hparams=json.dumps({"lr": lr}))
    row.update(kw)
    return row


def ckpt_row(model: int, epoch: int, **kw) -> dict:
    row = dict(checkpoint_id=f"m{model}-e{epoch:04d}", model_id=f"m{model}", epoch=epoch, step=10 * epoch,
               train_loss=1.0 / (epoch + 1), train_acc=0.5 + 0.1 * epoch, test_loss=1.1 / (epoch + 1),
               test_acc=0.45 + 0.1 * epoch)
    row.update(kw)
    return row


def fill(store: ZooStore, models: int = 6, epochs: int = 3, seed: int = 0) -> torch.Tensor:
    """models x epochs checkpoints; lr cycles 0.01, 0.1, 1.0; returns the weights in append order."""
    g = torch.Generator().manual_seed(seed)
    store.append("models", [model_row(i, lr=[0.01, 0.1, 1.0][i % 3]) for i in range(models)])
    rows = [ckpt_row(m, e) for e in range(epochs) for m in range(models)]
    w = torch.randn(len(rows), LAYOUT.num_params, generator=g)
    assert store.append_weights("checkpoints", w, rows, LAYOUT) == len(rows)
    return w


@pytest.fixture
def store(tmp_path):
    return ZooStore(tmp_path / "store", create=True)


# ----- open / create ---------------------------------------------------------------
def test_create_writes_schema_version_and_reopens(tmp_path):
    ZooStore(tmp_path / "s", create=True)
    meta = json.loads((tmp_path / "s" / "zoo.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert ZooStore(tmp_path / "s", create=False).meta["schema_version"] == SCHEMA_VERSION


def test_missing_store_is_a_user_error_naming_path_and_fix(tmp_path):
    with pytest.raises(UserError) as e:
        ZooStore(tmp_path / "nope", create=False)
    assert str(tmp_path / "nope") in str(e.value) and "wsl zoo train" in str(e.value) and "--store" in str(e.value)
    assert not (tmp_path / "nope").exists()


def test_newer_schema_version_is_refused(tmp_path):
    ZooStore(tmp_path / "s", create=True)
    (tmp_path / "s" / "zoo.json").write_text(json.dumps({"format": "wsl-zoo-store", "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match="newer"):
        ZooStore(tmp_path / "s")


def test_non_store_directory_is_not_taken_over(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a zoo store"):
        ZooStore(tmp_path / "d", create=True)


def test_every_contract_table_has_a_view_even_when_empty(store):
    for t in TABLES:
        df = store.sql(f"SELECT * FROM {t}")
        assert len(df) == 0
        assert list(df.columns) == TABLES[t].column_names


# ----- appends ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["list", "dataframe", "arrow"])
def test_append_accepts_rows_in_three_shapes_and_casts(store, kind):
    rows = [model_row(i) for i in range(3)]
    rows[0]["width"] = 4.0 if kind == "list" else 4  # castable
    data = {"list": rows, "dataframe": pd.DataFrame(rows), "arrow": pa.Table.from_pylist(rows)}[kind]
    assert store.append("models", data) == 3
    assert store.count("models") == 3
    df = store.sql("SELECT model_id, width, lr FROM models ORDER BY model_id")
    assert df.model_id.tolist() == ["m0", "m1", "m2"] and df.width.dtype == np.int64


def test_append_is_idempotent(store):
    w = fill(store)
    parts_before = len(store.part_files("checkpoints"))
    assert store.append("models", [model_row(i, lr=[0.01, 0.1, 1.0][i % 3]) for i in range(6)]) == 0
    rows = [ckpt_row(m, e) for e in range(3) for m in range(6)]
    assert store.append_weights("checkpoints", w, rows, LAYOUT) == 0
    assert len(store.part_files("checkpoints")) == parts_before  # no empty part written
    # a mix: old rows dropped, new ones written
    assert store.append("models", [model_row(0, lr=0.01), model_row(99)]) == 1
    assert store.count("models") == 7 and store.count("checkpoints") == 18


def test_same_key_twice_in_one_append(store):
    assert store.append("models", [model_row(1), model_row(1)]) == 1
    with pytest.raises(UserError, match="conflict in models.*m2"):
        store.append("models", [model_row(2), model_row(2, lr=0.5)])
    assert store.count("models") == 1


def test_conflicting_value_is_an_error_naming_table_and_key(store):
    store.append("models", [model_row(1, lr=0.1)])
    with pytest.raises(UserError) as e:
        store.append("models", [model_row(2), model_row(1, lr=0.2)])
    msg = str(e.value)
    assert "conflict" in msg and "models" in msg and "m1" in msg and "lr" in msg
    assert store.count("models") == 1  # nothing of the failed append was written


def test_conflicting_weights_are_detected_by_sha256(store):
    w = fill(store)
    rows = [ckpt_row(0, 0)]
    with pytest.raises(UserError, match="conflict in checkpoints.*m0-e0000.*sha256"):
        store.append_weights("checkpoints", w[:1] + 1, rows, LAYOUT)


def test_composite_keys(store):
    rows = [dict(model_id="m0", epoch=e, recipe_id="r1", hessian_top_eig=1.0, hessian_trace=2.0, mode_connectivity=0.1,
                 cka_logits=0.9, cka_hidden=0.8, train_loss=0.1, train_acc=0.9, phase="IV-B", thresholds="{}",
                 recipe="{}") for e in range(3)]
    assert store.append("landscape", rows) == 3
    assert store.append("landscape", rows + [dict(rows[0], recipe_id="r2")]) == 1
    with pytest.raises(UserError, match="conflict in landscape.*model_id='m0', epoch=1, recipe_id='r1'"):
        store.append("landscape", [dict(rows[1], phase="III")])


def test_missing_required_columns_and_unknown_table(store):
    row = model_row(0)
    del row["lr"], row["seed"]
    with pytest.raises(UserError, match=r"missing required columns \['lr', 'seed'\]"):
        store.append("models", [row])
    with pytest.raises(UserError, match="unknown table 'modelz'"):
        store.append("modelz", [model_row(0)])
    with pytest.raises(UserError, match="key column 'model_id'"):
        store.append("models", [model_row(0, model_id=None)])
    with pytest.raises(UserError, match="column 'lr' has type string"):
        store.append("models", [model_row(0, lr="fast")])


def test_extra_columns_are_kept_and_typed_consistently(store):
    store.append("models", [model_row(0, label_noise=0.1)])
    store.append("models", [model_row(1)])  # older/newer parts without the column read as NULL
    store.append("models", [model_row(2, label_noise=1)])  # int is cast to the stored double
    df = store.sql("SELECT model_id, label_noise FROM models ORDER BY model_id")
    assert df.label_noise.iloc[0] == 0.1 and pd.isna(df.label_noise.iloc[1]) and df.label_noise.iloc[2] == 1.0
    with pytest.raises(UserError, match="label_noise"):
        store.append("models", [model_row(3, label_noise="lots")])


# ----- weights --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_weights_round_trip_bit_exact(store, dtype):
    g = torch.Generator().manual_seed(1)
    src = torch.randn(10, LAYOUT.num_params, generator=g, dtype=torch.float32) * 3
    store.append("models", [model_row(i) for i in range(10)])
    store.append_weights("checkpoints", src, [ckpt_row(i, 0) for i in range(10)], LAYOUT, dtype=dtype)
    w, meta = store.weights([f"m{i}-e0000" for i in range(10)], verify=True)
    expected = src.to(getattr(torch, dtype))
    assert w.dtype == expected.dtype and w.shape == (10, LAYOUT.num_params)
    assert torch.equal(w.view(torch.uint8) if dtype != "float32" else w, expected.view(torch.uint8) if dtype != "float32" else expected)
    assert (meta["dtype"] == dtype).all() and (meta["num_params"] == LAYOUT.num_params).all()
    assert "weights" not in meta.columns


@pytest.mark.parametrize("src_dtype", [torch.float16, torch.bfloat16])
def test_half_sources_stored_as_float32_exactly(store, src_dtype):
    src = torch.randn(3, LAYOUT.num_params).to(src_dtype)
    store.append_weights("checkpoints", src, [ckpt_row(i, 0) for i in range(3)], LAYOUT)
    w, _ = store.weights([f"m{i}-e0000" for i in range(3)])
    assert w.dtype == torch.float32 and torch.equal(w, src.float())


def test_weights_by_query_joins_and_keeps_order(store):
    w = fill(store)
    ids = [ckpt_row(m, e)["checkpoint_id"] for e in range(3) for m in range(6)]
    q = ("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) "
         "WHERE models.lr > 0.05 AND epoch >= 1 ORDER BY checkpoint_id DESC")
    got, meta = store.weights(q)
    want_ids = sorted([i for i in ids if int(i[1]) % 3 != 0 and not i.endswith("e0000")], reverse=True)
    assert meta.checkpoint_id.tolist() == want_ids
    assert torch.equal(got, w[[ids.index(i) for i in want_ids]])
    # ids in any order, with repeats
    pick = [ids[5], ids[0], ids[5]]
    got, meta = store.weights(pick)
    assert meta.checkpoint_id.tolist() == pick and torch.equal(got, w[[5, 0, 5]])
    # the whole table in storage order is a zero-copy view
    got, meta = store.weights("SELECT checkpoint_id FROM checkpoints")
    assert torch.equal(got, w)


def test_weights_query_must_return_the_key(store):
    fill(store)
    with pytest.raises(UserError, match="must return the checkpoint_id column"):
        store.weights("SELECT model_id FROM checkpoints")
    with pytest.raises(UserError, match="not in checkpoints"):
        store.weights(["m0-e0000", "nope"])
    with pytest.raises(UserError, match="holds no weights"):
        store.weights(["m0"], table="models")


def test_mixed_layouts_need_grouped(store):
    store.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), [ckpt_row(i, 0) for i in range(2)], LAYOUT)
    wide = torch.randn(3, WIDE.num_params)
    store.append_weights("checkpoints", wide, [ckpt_row(10 + i, 0) for i in range(3)], WIDE)
    with pytest.raises(UserError, match="2 layouts.*grouped=True"):
        store.weights("SELECT checkpoint_id FROM checkpoints")
    groups = store.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id", grouped=True)
    assert set(groups) == {LAYOUT.layout_id, WIDE.layout_id}
    t, meta = groups[WIDE.layout_id]
    assert t.shape == (3, WIDE.num_params) and torch.equal(t, wide)
    assert store.layout(WIDE.layout_id) == WIDE
    assert store.sql("SELECT count(*) AS n FROM layouts").n[0] == 2


def test_append_weights_refuses_bad_input(store):
    rows = [ckpt_row(0, 0)]
    with pytest.raises(UserError, match="NaN or inf"):
        store.append_weights("checkpoints", torch.full((1, LAYOUT.num_params), float("nan")), rows, LAYOUT)
    with pytest.raises(UserError, match="float16"):
        store.append_weights("checkpoints", torch.full((1, LAYOUT.num_params), 1e6), rows, LAYOUT, dtype="float16")
    with pytest.raises(UserError, match="16 parameters"):
        store.append_weights("checkpoints", torch.randn(1, 17), rows, LAYOUT)
    with pytest.raises(UserError, match="2 weight rows but 1 metadata rows"):
        store.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), rows, LAYOUT)
    with pytest.raises(UserError, match="unsupported weights dtype"):
        store.append_weights("checkpoints", torch.randn(1, LAYOUT.num_params), rows, LAYOUT, dtype="int8")
    assert store.count("checkpoints") == 0 and store.count("layouts") == 0


def test_unknown_layout_is_a_user_error(store):
    with pytest.raises(UserError, match="unknown layout_id 'feedbeef'"):
        store.layout("feedbeef")


def test_iter_weights_streams_batches_in_order(store):
    w = fill(store)
    ids = [ckpt_row(m, e)["checkpoint_id"] for e in range(3) for m in range(6)]
    batches = list(store.iter_weights("SELECT checkpoint_id FROM checkpoints", batch_size=7))
    assert [len(m) for _, m in batches] == [7, 7, 4]
    assert torch.equal(torch.cat([t for t, _ in batches]), w)
    assert sum((m.checkpoint_id.tolist() for _, m in batches), []) == ids


def test_verify_catches_a_flipped_bit_in_the_store(store, tmp_path):
    import pyarrow.parquet as pq

    fill(store)
    part = store.part_files("checkpoints")[0]
    t = pq.read_table(part)
    cells = t.column("weights").to_pylist()
    cells[3] = bytes([cells[3][0] ^ 1]) + cells[3][1:]
    t = t.set_column(t.column_names.index("weights"), "weights", pa.array(cells, pa.large_binary()))
    pq.write_table(t, part)  # another writer's layout (dictionary-encoded, no page CRCs): the slow read path
    with pytest.raises(UserError, match=f"xxh3 checksum mismatch.*{part.name}.*m3-e0000.*--quarantine"):
        store.weights(["m3-e0000"])  # every read is verified
    t = t.drop_columns(["xxh3"])  # a part from before xxh3: the sha256 catches it
    pq.write_table(t, part)
    with pytest.raises(UserError, match="sha256 mismatch.*m3-e0000"):
        store.weights(["m3-e0000"])
    with pytest.raises(UserError, match="sha256 mismatch.*m3-e0000"):
        store.weights(["m3-e0000"], verify="sha256")
    w, _ = store.weights(["m3-e0000"], verify=False)  # explicitly unverified reads trust the bytes
    assert w.shape == (1, LAYOUT.num_params)
    w, meta = store.weights([f"m{i}-e0000" for i in range(6) if i != 3])  # the other rows of the part read fine
    assert len(meta) == 5


def test_store_pickles_by_path(store):
    import pickle

    fill(store)
    again = pickle.loads(pickle.dumps(store))
    assert again.count("checkpoints") == 18


# ----- docs/store.md stays true ------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "store.md"


def test_docs_name_every_table_and_column():
    text = DOC.read_text()
    for name, spec in TABLES.items():
        assert f"### `{name}` (key " in text, name
        for col in spec.column_names:
            assert f"`{col}`" in text, (name, col)


def test_docs_example_queries_run(store):
    import re

    fill(store)
    store.append("landscape", [dict(model_id=f"m{i}", epoch=2, recipe_id="r1", hessian_top_eig=1.0, hessian_trace=2.0,
                                    mode_connectivity=0.0, cka_logits=0.9, cka_hidden=0.9, train_loss=0.1, train_acc=0.9,
                                    phase=["IV-B", "III"][i % 2], thresholds="{}", recipe="{}") for i in range(6)])
    store.append("generators", [dict(dict.fromkeys(TABLES["generators"].column_names), generator_id="g1", method="diffusion",
                                     layout_id=LAYOUT.layout_id, fit_where="true", num_train=18, config="{}",
                                     path="/tmp/g1", report="{}")])
    store.append_weights("samples", torch.randn(2, LAYOUT.num_params), [dict(
        sample_id=f"s{i}", generator_id="g1", kind="generated", condition="digits", dataset_id="digits-0", seed=0, idx=i,
        test_loss=0.5, test_acc=0.8, nn_l2=1.0) for i in range(2)], LAYOUT)
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    ran = 0
    for block in blocks:
        for stmt in [s.strip() for s in block.split(";") if s.strip()]:
            stmt = "\n".join(line.split("--")[0] for line in stmt.splitlines())
            df = store.sql(stmt)
            assert len(df) > 0, stmt
            ran += 1
    assert ran >= 8
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints c JOIN landscape l "
                            "ON l.model_id = c.model_id AND l.epoch = c.epoch WHERE l.phase = 'IV-B'")
    assert w.shape == (3, LAYOUT.num_params)


def test_reused_buffers_never_alias_live_tensors(store):
    from store import pool

    big = ParamLayout([("w", (70_000,))], arch={"name": "flat"})  # > 1 MiB a batch: pooled
    src = torch.randn(8, big.num_params)
    store.append_weights("checkpoints", src, [ckpt_row(i, 0) for i in range(8)], big)
    ids = [f"m{i}-e0000" for i in range(8)]
    a, _ = store.weights(ids)
    view = a[2:4]  # a view keeps the buffer alive too
    del a
    b, _ = store.weights(ids[::-1])
    assert torch.equal(view, src[2:4]) and torch.equal(b, src.flip(0))
    assert b.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()
    ptr = b.untyped_storage().data_ptr()
    del b
    c, _ = store.weights(ids)  # the dropped buffer is reused, filled with the new rows
    assert c.untyped_storage().data_ptr() == ptr and torch.equal(c, src)
    c.mul_(0)  # tensors are writable and private
    d, _ = store.weights(ids)
    assert torch.equal(d, src)
    assert pool.release() >= 0
