"""A table's rows as Parquet shards the Hub's dataset viewer and `datasets` read: bounded by bytes.

    writer = ShardWriter(folder, "checkpoints", schema)     # row groups <= 64 MB, files <= 500 MB
    writer.write(arrow_table); files = writer.close()
    w = write_table(store, "checkpoints", query, params, folder, ...)   # streamed from DuckDB

The writer options are the store's own (store/parts.py `writer_options`: one Parquet
policy for parts and shards); what differs is only how rows are cut, because a shard
streams rows of many parts and must hold the Hub's limits exactly, footer included.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import parts, sql
from store.errors import UserError
from store.schema import TABLES

ROW_GROUP_BYTES = parts.ROW_GROUP_BYTES  # 64 MB: the dataset viewer refuses huge row groups
FILE_BYTES = parts.PART_BYTES  # 500 MB per shard
MAX_FILES_PER_FOLDER = 9_999  # the Hub asks for < 10,000 files per folder
DATA = "data"
_ITEMSIZE_SQL = "CASE dtype WHEN 'float32' THEN 4 ELSE 2 END"

Progress = Callable[[int, int, str], None]  # (rows just done, rows in all, what) -> None; the CLI draws a bar


def _row_sizes(t: pa.Table) -> np.ndarray:
    """Bytes each row takes in a row group, a little over Parquet's uncompressed size (4-byte length per binary cell)."""
    sizes = parts.row_bytes(t)
    if parts.WEIGHTS in t.column_names:
        sizes = sizes + 4
    return sizes + 8


class ShardWriter:
    """Streams one table's rows into Parquet shards: row groups <= row_group_bytes, files <= file_bytes.

    Rows are grouped by their byte size (weights cell + a share of the other
    columns), so the limits hold for tables whose rows differ in size (models
    of several widths). A file's size is tracked from what was really written
    plus an allowance for the footer still to come. A row larger than a limit
    gets a row group (and a file) of its own. Rows whose key was already
    written are dropped (a store can hold exact duplicates after a crash
    during compaction).
    """

    def __init__(self, folder: Path, table: str, schema: pa.Schema, row_group_bytes: int = ROW_GROUP_BYTES,
                 file_bytes: int = FILE_BYTES):
        if row_group_bytes < 1 or file_bytes < 1:
            raise UserError("row group and file byte limits must be positive", "pass limits >= 1")
        self.folder, self.table, self.schema = folder, table, schema
        self.key = list(TABLES[table].key)
        self.row_group_bytes = row_group_bytes
        self._max_cell = {f.name: 0 for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
        self.file_bytes = file_bytes
        self.files: list[Path] = []
        self.rows = 0
        self.row_groups = 0
        self._seen: set = set()
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._fh = None
        self._writer: pq.ParquetWriter | None = None
        self._groups_in_file = 0
        self._opts = parts.writer_options(schema)
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def rg_budget(self) -> int:
        """Bytes of rows a row group may take: the limit less page headers (they carry min/max of string columns)."""
        headers = 128 * len(self.schema) + 2 * sum(min(m, 4096) for m in self._max_cell.values())
        return self.row_group_bytes - min(self.row_group_bytes // 64, 2**20) - headers

    def _footer(self, groups: int) -> int:
        """Bytes a file takes besides its row groups: footer, page index, schema (measured ~150-280 per column chunk)."""
        n = len(self.schema)
        return 1024 + 128 * n + 320 * n * groups

    def _file_room(self) -> int:
        if self._writer is None:
            return self.file_bytes - self._footer(1) - self._pending_bytes
        return self.file_bytes - self._fh.tell() - self._footer(self._groups_in_file + 1) - self._pending_bytes

    def _dedupe(self, t: pa.Table) -> pa.Table:
        cols = [t.column(k).to_pylist() for k in self.key]
        keys = cols[0] if len(cols) == 1 else list(zip(*cols))
        keep = []
        for i, k in enumerate(keys):
            if k not in self._seen:
                self._seen.add(k)
                keep.append(i)
        return t if len(keep) == t.num_rows else t.take(pa.array(keep, pa.int64()))

    def write(self, t: pa.Table) -> None:
        t = self._dedupe(t)
        n = t.num_rows
        if n == 0:
            return
        for name in self._max_cell:
            longest = pc.max(pc.binary_length(t.column(name))).as_py()
            self._max_cell[name] = max(self._max_cell[name], longest or 0)
        cum = np.cumsum(_row_sizes(t))
        pos = 0
        while pos < n:
            before = int(cum[pos - 1]) if pos else 0

            def fitting(room: int) -> int:  # how many of the next rows fit in `room` bytes
                return int(np.searchsorted(cum, before + room, side="right")) - pos if room > 0 else 0

            fit_file = fitting(self._file_room())
            k = min(fitting(self.rg_budget - self._pending_bytes), fit_file)
            if k <= 0:
                if self._pending:
                    self._flush_group()
                    continue
                if self._writer is not None and fit_file <= 0:
                    self._close_file()
                    continue
                k = 1  # a row over the row-group budget gets a group of its own (and a file, if over that too)
            self._pending.append(t.slice(pos, k))
            self._pending_bytes += int(cum[pos + k - 1]) - before
            pos += k

    def _flush_group(self) -> None:
        group = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        if self._writer is None:
            path = self.folder / f".tmp-{len(self.files):06d}.parquet"
            self._fh = open(path, "wb")
            self._writer = pq.ParquetWriter(self._fh, self.schema, **self._opts)
            self.files.append(path)
            self._groups_in_file = 0
        self._writer.write_table(group, row_group_size=max(1, group.num_rows))
        self._groups_in_file += 1
        self.row_groups += 1
        self.rows += group.num_rows
        self._pending, self._pending_bytes = [], 0

    def _close_file(self) -> None:
        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._writer, self._fh = None, None

    def close(self) -> list[Path]:
        if self._pending:
            self._flush_group()
        if self._writer is not None:
            self._close_file()
        return self.files

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._fh is not None:
                self._fh.close()
        except Exception:  # noqa: BLE001 - cleaning up after another error
            pass


def final_names(table: str, tmp_files: list[Path], max_files_per_folder: int) -> tuple[list[str], str]:
    """Names in the repo for a table's shards, and the glob a config uses to find them."""
    n = len(tmp_files)
    width = max(5, len(str(n)))
    names = [f"{table}-{i:0{width}d}-of-{n:0{width}d}.parquet" for i in range(n)]
    if n <= max_files_per_folder:
        return [f"{DATA}/{table}/{nm}" for nm in names], f"{DATA}/{table}/*.parquet"
    folders = -(-n // max_files_per_folder)
    if folders > max_files_per_folder:
        raise UserError(f"{table} needs {n} files: more than {max_files_per_folder}^2", "publish a part of the zoo (--where)")
    return ([f"{DATA}/{table}/{i // max_files_per_folder:05d}/{nm}" for i, nm in enumerate(names)],
            f"{DATA}/{table}/*/*.parquet")


def _arrow_reader(rel, rows: int):
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(rows)
    return rel.fetch_record_batch(rows)  # duckdb < 1.4


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        col = batch.column(f.name)
        if col.type != f.type:
            col = col.cast(f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _publish_schema(store, table: str, sample: pa.Schema) -> pa.Schema:
    """The store's schema for `table`, with columns that are all-null everywhere typed as DuckDB returns them.

    `weights` is REQUIRED, as in the store's parts (every stored row has its weights):
    with the same writer options that makes a shard's weights column the layout
    store/fastread.py reads without decoding.
    """
    fields = []
    for f in store.schema(table):
        if pa.types.is_null(f.type) and f.name in sample.names:
            f = pa.field(f.name, sample.field(f.name).type)
        elif pa.types.is_large_string(f.type):
            f = pa.field(f.name, pa.string())
        fields.append(pa.field(f.name, f.type, nullable=not (f.name == parts.WEIGHTS and TABLES[table].has_weights)))
    return pa.schema(fields)


def write_table(store, table: str, query: str, params: dict[str, Any] | None, folder: Path, row_group_bytes: int,
                file_bytes: int, progress: Progress | None = None, total: int = 0) -> ShardWriter:
    """Stream the rows `query` selects (with its bound `params`) into shards under `folder`."""
    con = store.connection()
    sql.check_select(query)
    batch_rows = 65_536
    if TABLES[table].has_weights:
        big = store.arrow(f"SELECT max(num_params * {_ITEMSIZE_SQL}) AS b FROM ({query}) AS __q",
                          params).column(0)[0].as_py() or 1
        batch_rows = int(max(1, min(65_536, row_group_bytes // max(1, int(big)))))
    rel = con.sql(query, params=params) if params else con.sql(query)
    reader = _arrow_reader(rel, batch_rows)
    schema = _publish_schema(store, table, reader.schema)
    writer = ShardWriter(folder, table, schema, row_group_bytes=row_group_bytes, file_bytes=file_bytes)
    try:
        for batch in reader:
            if batch.num_rows:
                writer.write(_conform(pa.Table.from_batches([batch]), schema))
                if progress is not None:
                    progress(batch.num_rows, total, table)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer
