"""Store reliability: crash-safe writes, a read-only query connection, damage detection, lossless compaction,
metadata that never touches weights, concurrent writers."""
from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from store import UserError, ZooStore, parts
from test_store import LAYOUT, WIDE, ckpt_row, fill, model_row

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return ZooStore(tmp_path / "store", create=True)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


# ----- a write that fails between the temporary file and the rename ------------------------------
def test_failure_before_rename_leaves_no_rows_and_no_files(store, monkeypatch):
    fill(store)
    before = snapshot(store.path)

    def boom(tmp):
        assert tmp.exists() and tmp.name.startswith(parts.TMP_PREFIX)  # fully written and fsynced
        assert pq.read_metadata(tmp).num_rows == 3
        raise OSError("disk pulled out")

    monkeypatch.setattr(parts, "_BEFORE_RENAME", boom)
    with pytest.raises(OSError, match="disk pulled out"):
        store.append_weights("checkpoints", torch.randn(3, LAYOUT.num_params), [ckpt_row(7, e) for e in range(3)], LAYOUT)
    assert snapshot(store.path) == before  # the temporary file was removed, nothing else changed
    assert store.count("checkpoints") == 18
    assert store.sql("SELECT count(*) AS n FROM checkpoints WHERE model_id = 'm7'").n[0] == 0
    monkeypatch.setattr(parts, "_BEFORE_RENAME", None)
    assert store.append_weights("checkpoints", torch.randn(3, LAYOUT.num_params), [ckpt_row(7, e) for e in range(3)], LAYOUT) == 3


def test_process_killed_before_rename_leaves_store_readable(store):
    fill(store)
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from store import ZooStore, parts
        from test_store import LAYOUT, ckpt_row
        parts._BEFORE_RENAME = lambda tmp: os._exit(9)   # killed: no cleanup, no exception handlers
        ZooStore({str(store.path)!r}).append_weights("checkpoints", torch.randn(4, LAYOUT.num_params),
                                                   [ckpt_row(8, e) for e in range(4)], LAYOUT)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    leftovers = parts.list_temp_files(store.table_dir("checkpoints"))
    assert len(leftovers) == 1  # the half-done write is on disk, but invisible
    again = ZooStore(store.path, create=False)
    assert again.count("checkpoints") == 18
    assert again.sql("SELECT count(*) AS n FROM checkpoints").n[0] == 18
    w, meta = again.weights("SELECT checkpoint_id FROM checkpoints")
    assert w.shape == (18, LAYOUT.num_params)
    report = again.check()
    assert report.ok and any("temporary" in p.problem for p in report.warnings)
    again.compact()
    assert parts.list_temp_files(store.table_dir("checkpoints")) == []
    assert again.count("checkpoints") == 18


# ----- the query connection is read-only ---------------------------------------------------------
WRITES = {
    "create table": "CREATE TABLE t AS SELECT 1 AS a",
    "create view": "CREATE VIEW v AS SELECT 1",
    "create or replace view": "CREATE OR REPLACE VIEW models AS SELECT 1 AS a",
    "create macro": "CREATE MACRO m(a) AS a + 1",
    "create temp table": "CREATE TEMP TABLE t (a INT)",
    "create secret": "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "insert": "INSERT INTO models (model_id) VALUES ('x')",
    "update": "UPDATE models SET lr = 1",
    "delete": "DELETE FROM checkpoints",
    "drop": "DROP VIEW models",
    "alter": "ALTER VIEW models RENAME TO m2",
    "attach file": "ATTACH '{tmp}/x.duckdb' AS x",
    "attach memory": "ATTACH ':memory:' AS x",
    "detach": "DETACH memory",
    "copy to": "COPY (SELECT * FROM models) TO '{tmp}/out.parquet' (FORMAT parquet)",
    "copy to a part": "COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet)",
    "copy from": "COPY models FROM '{tmp}/in.csv'",
    "export": "EXPORT DATABASE '{tmp}/exp'",
    "import": "IMPORT DATABASE '{tmp}/exp'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "force install": "FORCE INSTALL httpfs",
    "set": "SET enable_external_access = true",
    "reset": "RESET lock_configuration",
    "pragma": "PRAGMA enable_profiling",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "vacuum": "VACUUM",
    "begin": "BEGIN TRANSACTION",
    "use": "USE memory",
    "prepare": "PREPARE p AS SELECT 1",
    "two statements": "SELECT 1; DROP VIEW models",
    "update extensions": "UPDATE EXTENSIONS",
}


@pytest.mark.parametrize("kind", list(WRITES))
def test_each_kind_of_write_is_refused(store, tmp_path, kind):
    fill(store)
    before = snapshot(store.path)
    query = WRITES[kind].format(tmp=tmp_path, part=store.part_files("models")[0])
    with pytest.raises(UserError):
        store.sql(query)
    assert snapshot(store.path) == before
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "exp").exists()
    assert len(store.sql("SELECT * FROM models")) == 6  # views intact


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{other}')",
])
def test_selects_cannot_reach_files_outside_the_store(store, tmp_path, query):
    fill(store)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), other)
    with pytest.raises(UserError, match="(?i)permission|disabled"):
        store.sql(query.format(other=other))


def test_duckdb_itself_refuses_writes_on_the_locked_connection(store, tmp_path):
    """Even without the statement check, DuckDB's settings refuse file access and config changes."""
    import duckdb

    fill(store)
    con = store.connection()
    with pytest.raises(duckdb.Error, match="(?i)permission|disabled"):
        con.execute(f"COPY (SELECT 1) TO '{tmp_path}/x.csv'")
    with pytest.raises(duckdb.Error, match="(?i)locked"):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error, match="(?i)permission|disabled"):
        con.execute(f"ATTACH '{tmp_path}/x.duckdb'")
    with pytest.raises(duckdb.Error):
        con.execute("INSTALL httpfs")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.duckdb").exists()


def test_sql_errors_carry_duckdbs_message(store):
    with pytest.raises(UserError, match="SQL error: .*nope"):
        store.sql("SELECT * FROM nope")
    with pytest.raises(UserError, match="SQL error"):
        store.sql("SELEC 1")
    with pytest.raises(UserError, match="empty"):
        store.sql("   ")
    assert store.sql("EXPLAIN SELECT * FROM models").shape[0] >= 1


# ----- damage ----------------------------------------------------------------------------------------
def _weights_chunk(path: Path) -> tuple[int, int]:
    md = pq.read_metadata(path)
    col = md.schema.names.index("weights")
    cc = md.row_group(0).column(col)
    return cc.data_page_offset, cc.total_compressed_size


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_corrupt_footer_is_reported_and_the_rest_stays_queryable(store):
    fill(store)  # part 1: 18 checkpoints
    store.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), [ckpt_row(9, e) for e in range(2)], LAYOUT)
    bad = store.part_files("checkpoints")[-1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 100] + b"\0" * 100)  # footer destroyed
    fresh = ZooStore(store.path, create=False)
    with pytest.warns(UserWarning, match="unreadable part"):
        n = fresh.sql("SELECT count(*) AS n FROM checkpoints").n[0]
    assert n == 18
    w, _ = fresh.weights("SELECT checkpoint_id FROM checkpoints")
    assert w.shape[0] == 18
    report = fresh.check()
    assert not report.ok and report.corrupt_parts == [str(bad)]
    assert "footer" in report.problems[0].problem


def test_damaged_weight_bytes_are_found_by_check_and_quarantined(store):
    fill(store)
    store.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), [ckpt_row(9, e) for e in range(2)], LAYOUT)
    bad = store.part_files("checkpoints")[0]
    off, size = _weights_chunk(bad)
    raw = bytearray(bad.read_bytes()[off:off + size])
    raw[-5] ^= 0xFF  # one flipped byte inside the last weight cell
    _overwrite(bad, off, bytes(raw))
    fresh = ZooStore(store.path, create=False)
    report = fresh.check()
    assert not report.ok and report.corrupt_parts == [str(bad)]
    assert any("sha256" in p.problem or "checksum" in p.problem.lower() or "unreadable data" in p.problem
               for p in report.problems)
    with pytest.raises(UserError, match=f"xxh3 checksum mismatch.*{bad.name}.*m5-e0002"):
        fresh.weights("SELECT checkpoint_id FROM checkpoints WHERE model_id = 'm5' AND epoch = 2")
    report = fresh.check(quarantine=True)
    assert report.quarantined and not bad.exists()
    assert (store.path / "_quarantine" / "checkpoints" / bad.name).exists()
    again = ZooStore(store.path, create=False)
    assert again.check().ok
    assert again.sql("SELECT count(*) AS n FROM checkpoints").n[0] == 2


# ----- metadata never reads the weights column -----------------------------------------------------
def test_metadata_work_never_reads_weights(store):
    """Destroy every byte of the weights column chunk (page headers included): anything that read it would fail."""
    w = fill(store)
    part = store.part_files("checkpoints")[0]
    off, size = _weights_chunk(part)
    _overwrite(part, off, b"\xff" * size)
    s = ZooStore(store.path, create=False)
    # SQL over metadata, joins, aggregates
    df = s.sql("SELECT m.lr, max(c.test_acc) AS best, count(*) AS n FROM checkpoints c JOIN models m USING (model_id) "
               "GROUP BY m.lr ORDER BY m.lr")
    assert df.n.tolist() == [6, 6, 6]
    assert s.sql("SELECT * EXCLUDE (weights) FROM checkpoints WHERE epoch = 2").shape[0] == 6
    assert s.count("checkpoints") == 18
    # key checks on append: an identical re-append is a no-op, a conflict is still found, new rows land
    assert s.append_weights("checkpoints", w[:6], [ckpt_row(m, 0) for m in range(6)], LAYOUT) == 0
    with pytest.raises(UserError, match="conflict"):
        s.append_weights("checkpoints", w[:1] * 2, [ckpt_row(0, 0)], LAYOUT)
    assert s.append_weights("checkpoints", w[:1], [ckpt_row(0, 7)], LAYOUT) == 1
    assert s.keys("SELECT checkpoint_id FROM checkpoints WHERE epoch = 1")
    # ... while reading the weights themselves does fail
    with pytest.raises(Exception):
        s.sql("SELECT weights FROM checkpoints")
    with pytest.raises(Exception):
        ZooStore(store.path, create=False).weights(["m0-e0000"], verify=True)
    assert not s.check().ok


def test_metadata_query_plan_projects_no_weights(store):
    fill(store)
    plan = "\n".join(r[1] for r in store.connection().execute(
        "EXPLAIN SELECT model_id, max(test_acc) FROM checkpoints GROUP BY model_id").fetchall())
    assert "test_acc" in plan and "weights" not in plan


# ----- compaction ------------------------------------------------------------------------------------
def _fingerprint(store: ZooStore, table: str, key: str) -> list:
    cols = "sha256" if table in ("checkpoints", "samples", "optimizer_states") else "*"
    df = store.sql(f"SELECT {key}, {cols} FROM {table} ORDER BY ALL")
    return [tuple(r) for r in df.astype(str).itertuples(index=False)]


def test_compaction_keeps_every_row_and_checksum(store):
    g = torch.Generator().manual_seed(3)
    store.append("models", [model_row(i) for i in range(12)])
    for e in range(6):  # many small parts, two layouts, two dtypes, an extra column in some parts
        rows = [ckpt_row(m, e, **({"grad_norm": 0.5} if e % 2 else {})) for m in range(6)]
        store.append_weights("checkpoints", torch.randn(6, LAYOUT.num_params, generator=g), rows, LAYOUT,
                             dtype="bfloat16" if e == 3 else "float32")
        store.append_weights("checkpoints", torch.randn(2, WIDE.num_params, generator=g),
                             [ckpt_row(6 + m, e) for m in range(2)], WIDE)
    before = _fingerprint(store, "checkpoints", "checkpoint_id")
    groups_before = store.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id", grouped=True)
    assert len(store.part_files("checkpoints")) == 12
    report = store.compact()
    assert report.tables["checkpoints"]["parts_after"] == 1
    assert report.tables["checkpoints"]["rows_after"] == report.tables["checkpoints"]["rows_before"] == 48
    s = ZooStore(store.path, create=False)
    assert s.count("checkpoints") == 48 and _fingerprint(s, "checkpoints", "checkpoint_id") == before
    groups_after = s.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id", grouped=True, verify=True)
    for lid, (t, meta) in groups_before.items():
        assert torch.equal(groups_after[lid][0], t) and groups_after[lid][1].equals(meta)
    assert s.sql("SELECT count(grad_norm) AS n FROM checkpoints").n[0] == 18
    assert s.check().ok


def test_compaction_removes_exact_duplicates_from_racing_writers_only(store):
    fill(store)
    part = store.part_files("checkpoints")[0]
    raced = pq.read_table(part).slice(0, 5)  # a second writer that did not see the first one's part
    parts.write_parts(store.table_dir("checkpoints"), raced)
    clash = pq.read_table(store.part_files("models")[0]).slice(0, 1)
    clash = clash.set_column(clash.column_names.index("lr"), "lr", pa.array([9.0]))
    parts.write_parts(store.table_dir("models"), clash)
    s = ZooStore(store.path, create=False)
    assert s.count("checkpoints") == 23
    w, meta = s.weights(["m0-e0000", "m1-e0000"])  # a duplicated key is read once
    assert len(meta) == 2
    report = s.check()
    assert any("duplicate" in p.problem for p in report.warnings)
    assert any("different values" in p.problem for p in report.problems)
    result = s.compact()
    assert result.tables["checkpoints"]["duplicates_dropped"] == 5
    assert result.conflicts == {"models": 1}
    s = ZooStore(store.path, create=False)
    assert s.count("checkpoints") == 18 and s.count("models") == 7  # the conflicting row is kept, not guessed away


def test_parts_and_row_groups_are_sized_by_bytes(tmp_path):
    s = ZooStore(tmp_path / "s", create=True)
    s.row_group_bytes = 16 * 1024
    s.part_bytes = 40 * 1024
    layout = type(WIDE)([("w", (1000,))], arch={"name": "flat"})
    rows = [ckpt_row(i, 0) for i in range(40)]
    s.append_weights("checkpoints", torch.randn(40, 1000), rows, layout)  # 4 KB of weights a row: 160 KB
    files = s.part_files("checkpoints")
    assert len(files) >= 4
    for f in files:
        md = pq.read_metadata(f)
        assert f.stat().st_size <= 48 * 1024
        for i in range(md.num_row_groups):
            assert md.row_group(i).total_byte_size <= 20 * 1024
    w, meta = s.weights([r["checkpoint_id"] for r in rows])
    assert w.shape == (40, 1000)


# ----- concurrent writers ------------------------------------------------------------------------------
def _writer(path: str, worker: int) -> int:
    s = ZooStore(path)
    written = 0
    for e in range(4):
        # every worker writes the same shared rows (only one copy may land) plus its own rows
        shared = [ckpt_row(100, e)]
        g = torch.Generator().manual_seed(1000 + e)
        written += s.append_weights("checkpoints", torch.randn(1, LAYOUT.num_params, generator=g), shared, LAYOUT)
        own = [ckpt_row(worker, e)]
        written += s.append_weights("checkpoints", torch.randn(1, LAYOUT.num_params), own, LAYOUT)
    return written


@pytest.mark.slow
def test_several_processes_append_at_once(tmp_path):
    path = str(tmp_path / "s")
    ZooStore(path, create=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        written = pool.starmap(_writer, [(path, w) for w in range(4)])
    s = ZooStore(path, create=False)
    assert sum(written) == 4 * 4 + 4 == s.count("checkpoints")
    dup = s.sql("SELECT checkpoint_id, count(*) AS n FROM checkpoints GROUP BY ALL HAVING n > 1")
    assert len(dup) == 0
    assert s.check().ok
