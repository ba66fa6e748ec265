"""ZooStore: a directory of immutable Parquet parts, queried with DuckDB, weights out as torch tensors.

    store = ZooStore("wsl-store", create=True)          # create or open (ZooStore(path): open only)
    store.append("models", rows)                        # idempotent on keys
    store.append_weights("checkpoints", w, rows, layout)  # w: [N, P] tensor
    store.sql("SELECT phase, count(*) FROM landscape GROUP BY phase")
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) "
                            "WHERE models.lr > 0.01 AND epoch = 5")

Layout on disk:

    STORE/zoo.json                 {"format": "wsl-zoo-store", "schema_version": 1, ...}
    STORE/<table>/part-*.parquet   immutable parts (see store/parts.py)

Why these choices: a Parquet part per append means writers never touch
existing files (crash safety, several writers at once, cheap Hub upload);
weights as raw bytes in a BLOB column let one table hold models of different
widths and come back as one [N, P] tensor with a single copy; keys derived
from the content (model_id from zoo + hyperparameters + seed) make every
append idempotent, so a resumed run never duplicates rows.
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from store import codec, parts, sql
from store.errors import UserError
from store.layout import ParamLayout
from store.schema import LATER_COLUMNS, SCHEMA_VERSION, TABLES, WEIGHT_COLUMNS, Table
from store.verified_read import Damaged, DamagedRowsSkipped, damaged_error, read_weights, skipped_message

FORMAT = "wsl-zoo-store"
META_FILE = "zoo.json"
WEIGHTS = "weights"
_WEIGHT_META = [c for c, _ in WEIGHT_COLUMNS if c != WEIGHTS]


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ZooStore:
    """Open the zoo store in directory `path`; create=True also creates it when missing.

    Without create=True a missing store is a UserError, so a typo in a path is
    an error, not a fresh empty store (training and imports create; reads don't).
    """

    row_group_bytes = parts.ROW_GROUP_BYTES  # <= 64 MB: the Hub's viewer refuses bigger row groups
    part_bytes = parts.PART_BYTES  # <= 500 MB per part file

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._ro_con: duckdb.DuckDBPyConnection | None = None
        self._ro_signature: tuple | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._layouts: dict[str, ParamLayout] = {}
        self.skipped_parts: dict[str, str] = {}  # path -> why, parts left out of queries (unreadable footer)
        self.skipped_rows: list[Damaged] = []  # damaged rows reads left out on request (skip_damaged=True)
        self.meta = self._open_or_create(create)

    # ----- open / create ----------------------------------------------------
    def _open_or_create(self, create: bool) -> dict:
        meta_path = self.path / META_FILE
        if meta_path.exists():
            return self._read_meta(meta_path)
        if not create:
            raise UserError(
                f"no zoo store at {self.path} (no {META_FILE} there)",
                "train one with `wsl zoo train SPEC --store DIR` (or ZooStore(path, create=True)), "
                "or point --store / $WSL_STORE at an existing store",
            )
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"store path {self.path} is a file", "give a directory for the store")
        if self.path.is_dir() and any(p.name not in (".", "..") for p in self.path.iterdir()):
            raise UserError(f"{self.path} is a non-empty directory without {META_FILE}, not a zoo store",
                            "give a new or empty directory, or the path of an existing store")
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION}
        tmp = self.path / f".tmp-{META_FILE}-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, meta_path)
        return meta

    def _read_meta(self, meta_path: Path) -> dict:
        try:
            meta = json.loads(meta_path.read_text())
            version = int(meta["schema_version"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{meta_path} is unreadable ({e})", "restore it: it holds the store's schema version") from None
        if version > SCHEMA_VERSION:
            raise UserError(
                f"store {self.path} has schema version {version}, newer than this wsl understands ({SCHEMA_VERSION})",
                "upgrade wsl-zoo (pip install -U wsl-zoo) to read it",
            )
        return meta

    def __repr__(self) -> str:
        return f"ZooStore({str(self.path)!r})"

    def __reduce__(self):  # Ray / multiprocessing workers reopen the store by path
        return (ZooStore, (str(self.path), False))

    def close(self) -> None:
        with self._lock:
            for c in (self._ro_con, self._con):
                if c is not None:
                    c.close()
            self._ro_con = self._con = None
            self._ro_signature = None

    def __enter__(self) -> "ZooStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- tables and parts ---------------------------------------------------
    @staticmethod
    def spec(table: str) -> Table:
        if table not in TABLES:
            raise UserError(f"unknown table {table!r}", f"use one of: {', '.join(TABLES)}")
        return TABLES[table]

    def tables(self) -> list[str]:
        """Every table of the contract (empty ones included: their views exist with the required columns)."""
        return list(TABLES)

    def table_dir(self, table: str) -> Path:
        self.spec(table)
        return self.path / table

    def part_files(self, table: str) -> list[Path]:
        """All visible part files of a table, readable or not."""
        return parts.list_parts(self.table_dir(table))

    def parts(self, table: str) -> list[parts.PartInfo]:
        """Readable parts of a table (footer OK); unreadable ones are recorded in `skipped_parts` with a warning."""
        good = []
        for p in self.part_files(table):
            info = parts.part_info(p)
            if info.ok:
                good.append(info)
            elif str(p) not in self.skipped_parts:
                self.skipped_parts[str(p)] = info.error or "unreadable"
                warnings.warn(f"skipping unreadable part {p} ({info.error}); run `wsl store check`", stacklevel=3)
        return good

    def count(self, table: str) -> int:
        """Rows in a table, from the part footers (reads no data)."""
        return sum(i.num_rows for i in self.parts(table))

    def schema(self, table: str, infos: Sequence[parts.PartInfo] | None = None) -> pa.Schema:
        """The table's unified schema: required columns first, then extra columns in order of appearance."""
        spec = self.spec(table)
        infos = self.parts(table) if infos is None else infos
        fields = {f.name: f for f in spec.schema}
        for info in infos:
            for f in info.schema:
                if f.name not in fields:
                    fields[f.name] = f.remove_metadata()
                elif pa.types.is_null(fields[f.name].type) and not pa.types.is_null(f.type):
                    fields[f.name] = f.remove_metadata()
        return pa.schema(list(fields.values()))

    # ----- connections ----------------------------------------------------------
    def _views(self) -> dict[str, tuple[list[str], pa.Schema]]:
        out = {}
        for t in TABLES:
            infos = self.parts(t)
            out[t] = ([str(i.path) for i in infos], self.schema(t, infos))
        return out

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The read-only DuckDB connection (views over the current parts), rebuilt when parts change."""
        with self._lock:
            views = self._views()
            signature = tuple((t, tuple(p)) for t, (p, _) in views.items())
            if self._ro_con is None or signature != self._ro_signature:
                if self._ro_con is not None:
                    self._ro_con.close()
                self._ro_con = sql.connect_readonly(views)
                self._ro_signature = signature
            return self._ro_con

    def _internal(self) -> duckdb.DuckDBPyConnection:
        """Our own connection for key checks and weight reads: never given to users."""
        if self._con is None:
            self._con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                           "autoload_known_extensions": False})
        return self._con

    def _internal_sql(self, query: str, infos: Sequence[parts.PartInfo], **params) -> pa.Table:
        """Run one of our own queries on the internal connection; `SCAN` in it reads `infos` (union by name).

        The part paths and every value in params are bound parameters ($files, $name), not spliced text.
        """
        q = query.replace("SCAN", "read_parquet($files, union_by_name=true)")
        with self._lock:
            return self._internal().sql(q, params={"files": [str(i.path) for i in infos], **params}).to_arrow_table()

    # ----- SQL ----------------------------------------------------------------
    def arrow(self, query: str, params=None) -> pa.Table:
        """Run a read-only SELECT over the store's views; an Arrow table.

        params: values for the query's `$name` (dict) or `?` (list) placeholders.
        """
        with self._lock:
            try:
                return sql.run(self.connection(), query, params)
            except UserError as e:
                if not _vanished(e):
                    raise
                # a part was compacted away between listing and reading: list again, once
                self._ro_signature = None
                return sql.run(self.connection(), query, params)

    def sql(self, query: str, params=None) -> pd.DataFrame:
        """Run a read-only SELECT over the store's views; a pandas DataFrame (params as in `arrow`)."""
        return self.arrow(query, params).to_pandas()

    # ----- appends --------------------------------------------------------------
    def append(self, table: str, rows: Any) -> int:
        """Append rows (DataFrame, list of dicts, dict of lists or Arrow table); returns how many were new.

        Required columns (store/schema.py) must be present and are cast to
        their types; extra columns are kept. A row whose key is already stored
        with the same values is dropped; the same key with different values is
        a UserError naming the table and key. The new rows land as one new
        immutable part (several if > 500 MB), atomically.
        """
        spec = self.spec(table)
        t = _to_arrow(rows, table)
        if t.num_rows == 0:
            return 0
        return self._append_arrow(spec, t, sha_trusted=False)

    def _append_arrow(self, spec: Table, t: pa.Table, sha_trusted: bool) -> int:
        if spec.has_weights:
            t = _fill_xxh3(t)
        folder = self.table_dir(spec.name)
        with self._lock, parts.table_lock(folder):
            infos = self.parts(spec.name)
            t = self._conform(spec, t, self.schema(spec.name, infos))
            if spec.has_weights:
                _check_weight_cells(spec, t, sha_trusted)
            t = self._drop_existing(spec, t, infos)
            if t.num_rows == 0:
                return 0
            parts.write_parts(folder, t, row_group_bytes=self.row_group_bytes, part_bytes=self.part_bytes)
            return t.num_rows

    def _conform(self, spec: Table, t: pa.Table, existing: pa.Schema) -> pa.Table:
        names = t.column_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"{spec.name}: column names repeat: {dupes}", "give each column once")
        missing = [c for c in spec.column_names if c not in names]
        if missing:
            raise UserError(f"{spec.name}: missing required columns {missing}",
                            "add them (None where a value is unknown); docs/store.md lists every column")
        cols, fields = [], []
        for name in spec.column_names + [c for c in names if c not in spec.column_names]:
            col = t.column(name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if name in spec.column_names:
                target = spec.schema.field(name).type
            elif name in existing.names and not pa.types.is_null(existing.field(name).type):
                target = existing.field(name).type
            elif pa.types.is_large_string(col.type):
                target = pa.string()
            else:
                target = col.type
            if col.type != target:
                try:
                    col = col.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    where = "the contract's type" if name in spec.column_names else "its type in earlier parts"
                    raise UserError(f"{spec.name}: column {name!r} has type {col.type}, {where} is {target} ({e})",
                                    f"pass {target} values for {name!r}") from None
            cols.append(col)
            fields.append(pa.field(name, target))
        out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
        for k in spec.key:
            if out.column(k).null_count:
                raise UserError(f"{spec.name}: key column {k!r} has {out.column(k).null_count} empty values",
                                f"give every row a {k}")
        return out

    def _drop_existing(self, spec: Table, t: pa.Table, infos: Sequence[parts.PartInfo]) -> pa.Table:
        """Drop rows already stored (same key, same values); raise on a key stored with other values.

        Compares every column the new rows carry except `weights` (whose
        sha256 is compared instead), so checking keys never reads the weights
        column. Each part's key column is read once and cached (parts never
        change); only parts that hold one of the keys have their other
        metadata columns read.
        """
        keys = list(spec.key)
        meta_cols = [c for c in t.column_names if c != WEIGHTS]
        new_keys = _key_array(t, keys)
        # 1. the same key twice in this batch: identical rows collapse, different ones conflict
        keep_rows = np.arange(t.num_rows)
        if pc.count_distinct(new_keys).as_py() != t.num_rows:
            first: dict[Any, int] = {}
            keep = []
            key_list = new_keys.to_pylist()
            for i, k in enumerate(key_list):
                if k not in first:
                    first[k] = i
                    keep.append(i)
                elif not _rows_equal(t, meta_cols, first[k], t, i):
                    raise UserError(f"conflict in {spec.name}: key {_fmt_key(keys, _key_values(t, keys, i))} appears in "
                                    "this append with different values", "give each key one value per append")
            keep_rows = np.array(keep, dtype=np.int64)
        # 2. keys already stored
        stored = np.zeros(t.num_rows, dtype=bool)
        schema = self.schema(spec.name, infos) if infos else None
        for info in infos:
            part_keys = _part_keys(info, keys)
            pos = pc.index_in(new_keys, value_set=part_keys)
            hit = np.nonzero(pos.is_valid().to_numpy(zero_copy_only=False))[0]
            if not len(hit):
                continue
            part_rows = pos.to_numpy(zero_copy_only=False)[hit].astype(np.int64)
            old = _part_meta(info, pa.schema([f for f in schema if f.name != WEIGHTS])).take(pa.array(part_rows))
            new = t.take(pa.array(hit))
            diff = _differing_columns(new, old, [c for c in meta_cols if c not in keys])
            if diff:
                row, cols = diff
                raise UserError(
                    f"conflict in {spec.name}: key {_fmt_key(keys, _key_values(new, keys, row))} is already stored with "
                    f"different values (columns {cols})",
                    "keys are deterministic: a changed value needs a new key (e.g. a new seed or recipe), "
                    "or append the identical row (a no-op)")
            stored[hit] = True
        keep_rows = keep_rows[~stored[keep_rows]]
        if len(keep_rows) == t.num_rows:
            return t
        return t.take(pa.array(keep_rows))

    # ----- layouts ----------------------------------------------------------------
    def add_layout(self, layout: ParamLayout) -> str:
        """Register a layout (idempotent); returns its layout_id."""
        if not isinstance(layout, ParamLayout):
            raise UserError(f"add_layout takes a ParamLayout, got {type(layout).__name__}", "build one with ParamLayout.from_config")
        if layout.layout_id not in self._layouts:
            arch = layout.arch.get("name") if layout.arch else None
            self.append("layouts", [{"layout_id": layout.layout_id, "architecture": arch,
                                     "num_params": layout.num_params, "layout_json": layout.to_json()}])
            self._layouts[layout.layout_id] = layout
        return layout.layout_id

    def layout(self, layout_id: str) -> ParamLayout:
        """The ParamLayout stored under `layout_id`."""
        if layout_id in self._layouts:
            return self._layouts[layout_id]
        infos = self.parts("layouts")
        rows = []
        if infos:
            rows = self._internal_sql("SELECT layout_json FROM SCAN WHERE layout_id = $id", infos,
                                      id=str(layout_id)).column(0).to_pylist()
        if not rows:
            raise UserError(f"unknown layout_id {layout_id!r} in store {self.path}",
                            "list stored layouts with: wsl query \"SELECT layout_id, architecture, num_params FROM layouts\"")
        layout = ParamLayout.from_json(rows[0])
        self._layouts[layout_id] = layout
        return layout

    def append_weights(self, table: str, weights: torch.Tensor, rows: Any, layout: ParamLayout | str,
                       dtype: str = "float32") -> int:
        """Append N weight vectors ([N, P] tensor) with their N rows of other columns.

        Fills layout_id, dtype, num_params, sha256, xxh3 and weights (raw
        little-endian bytes of `dtype`), registers the layout if new, and
        refuses NaN/inf or a P that does not match the layout.
        """
        spec = self.spec(table)
        if not spec.has_weights:
            raise UserError(f"table {table!r} holds no weights",
                            f"use one of: {', '.join(t for t, s in TABLES.items() if s.has_weights)}")
        codec.check_dtype(dtype)
        if isinstance(layout, str):
            layout = self.layout(layout)
        if not isinstance(layout, ParamLayout):
            raise UserError(f"layout must be a ParamLayout or a layout_id, got {type(layout).__name__}",
                            "pass ParamLayout.from_config(arch)")
        if isinstance(weights, torch.Tensor) and weights.dim() == 1:
            weights = weights.unsqueeze(0)
        if isinstance(weights, torch.Tensor) and weights.dim() == 2 and weights.shape[1] != layout.num_params:
            raise UserError(f"{table}: weights have {weights.shape[1]} values per model but layout "
                            f"{layout.layout_id} has {layout.num_params} parameters",
                            "use weights of the same architecture and width as the layout")
        cells, hashes, checks = codec.encode(weights, dtype)
        t = _to_arrow(rows, table)
        if t.num_rows != len(cells):
            raise UserError(f"{table}: {len(cells)} weight rows but {t.num_rows} metadata rows",
                            "give one metadata row per weight vector")
        n = len(cells)
        filled = {
            "layout_id": pa.array([layout.layout_id] * n, pa.string()),
            "dtype": pa.array([dtype] * n, pa.string()),
            "num_params": pa.array([layout.num_params] * n, pa.int64()),
            "sha256": pa.array(hashes, pa.string()),
            "xxh3": pa.array(checks, pa.string()),
        }
        for name, arr in filled.items():
            if name in t.column_names:
                given = t.column(name)
                if given.null_count != len(given) and not given.cast(arr.type).equals(pa.chunked_array([arr])):
                    raise UserError(f"{table}: rows carry a {name!r} column that disagrees with the weights/layout",
                                    f"leave {name!r} out: append_weights fills it")
                t = t.drop_columns([name])
            t = t.append_column(name, arr)
        if WEIGHTS in t.column_names:
            t = t.drop_columns([WEIGHTS])
        t = t.append_column(WEIGHTS, cells)
        self.add_layout(layout)
        return self._append_arrow(spec, t, sha_trusted=True)

    # ----- weights out -------------------------------------------------------------
    def keys(self, query_or_ids: str | Iterable[str], table: str = "checkpoints") -> list[str]:
        """The keys a weights() call would read: the query's key column, or the given ids."""
        spec = self._weight_spec(table)
        key = spec.key[0]
        if isinstance(query_or_ids, str):
            q = query_or_ids.strip().rstrip(";")
            sql.check_select(q)
            if sql.duckdb.extract_statements(q)[0].type.name != "SELECT":
                raise UserError("weights() takes a SELECT query", f"e.g. SELECT {key} FROM {table} WHERE ...")
            try:
                res = self.arrow(f"SELECT {_sql_ident(key)} FROM ({q}) AS __q")
            except UserError as e:
                if key in str(e) and ("not found" in str(e) or "Referenced column" in str(e)):
                    raise UserError(f"the weights query must return the {key} column ({e.message})",
                                    f"select it, e.g. SELECT {key} FROM {table} WHERE ...") from None
                raise
            return [str(k) for k in res.column(0).to_pylist()]
        if isinstance(query_or_ids, (pd.Series, np.ndarray, pa.Array, pa.ChunkedArray)):
            ids = query_or_ids.tolist() if not isinstance(query_or_ids, (pa.Array, pa.ChunkedArray)) else query_or_ids.to_pylist()
        else:
            ids = list(query_or_ids)
        bad = [i for i in ids if not isinstance(i, str)]
        if bad:
            raise UserError(f"{key} values must be strings, got {bad[:3]!r}", f"pass a list of {key} strings or a SELECT query")
        return ids

    def _weight_spec(self, table: str) -> Table:
        spec = self.spec(table)
        if not spec.has_weights:
            raise UserError(f"table {table!r} holds no weights",
                            f"use one of: {', '.join(t for t, s in TABLES.items() if s.has_weights)}")
        return spec

    def weights(self, query_or_ids: str | Iterable[str], table: str = "checkpoints", verify: bool | str = True,
                grouped: bool = False, device: str | torch.device | None = None, skip_damaged: bool = False):
        """Selected weights as one [N, P] tensor plus their metadata (no weights column), in the same row order.

        query_or_ids: a SELECT returning the table's key column (any joins and
        filters over the views), or a list of keys. Rows of several layouts
        are an error unless grouped=True, which returns {layout_id: (tensor,
        meta)}. The tensor has the stored dtype (float32 if one layout's rows
        mix dtypes).

        Every read is verified (store/verified_read.py): each cell against the
        checksum stored beside it (xxh3; sha256 for older parts), Parquet page
        CRCs where pyarrow decodes, the metadata pages by their CRCs. A damaged
        row is a UserError naming the part and the fix. skip_damaged=True
        leaves damaged rows out instead: the result has fewer rows than asked
        (meta says which), and each skipped row is appended to
        `store.skipped_rows` (with a warning). verify="sha256" recomputes every
        sha256 as well (slow); verify=False checks nothing (only to measure the
        cost of checking).
        """
        spec = self._weight_spec(table)
        ids = self.keys(query_or_ids, table)
        try:
            return self._fetch(spec, ids, verify, grouped, device, skip_damaged)
        except FileNotFoundError:  # compacted away between listing and reading: list again, once
            return self._fetch(spec, ids, verify, grouped, device, skip_damaged)

    def iter_weights(self, query_or_ids: str | Iterable[str], batch_size: int = 4096, table: str = "checkpoints",
                     verify: bool | str = True, device: str | torch.device | None = None, skip_damaged: bool = False
                     ) -> Iterator[tuple[torch.Tensor, pd.DataFrame]]:
        """Yield (tensor, meta) batches of at most batch_size rows, in the query's order, without holding them all.

        Verified like `weights`; with skip_damaged a batch may be shorter (or empty: such batches are not yielded).
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch_size")
        spec = self._weight_spec(table)
        ids = self.keys(query_or_ids, table)
        for start in range(0, len(ids), batch_size):
            w, meta = self._fetch(spec, ids[start:start + batch_size], verify, False, device, skip_damaged)
            if len(meta):
                yield w, meta

    def _fetch(self, spec: Table, ids: list[str], verify: bool | str, grouped: bool, device, skip_damaged: bool):
        key = spec.key[0]
        infos = self.parts(spec.name)
        if not ids:
            empty = self.schema(spec.name, infos).empty_table().drop_columns([WEIGHTS]).to_pandas()
            return {} if grouped else (torch.empty((0, 0)), empty)
        if not infos:
            raise UserError(f"table {spec.name} is empty: none of {ids[:3]} found", "append rows first")
        # 1. locate: metadata of the wanted rows plus (file, row number), from each part's metadata columns
        schema = self.schema(spec.name, infos)
        meta_schema = pa.schema([f for f in schema if f.name != WEIGHTS])
        wanted = pa.array(list(dict.fromkeys(ids)), pa.string())
        found, files, rows, unreadable = [], [], [], []
        for info in infos:
            try:
                part_meta = _part_meta(info, meta_schema)
            except UserError:
                if not skip_damaged:
                    raise
                unreadable.append(str(info.path))
                continue
            pos = pc.index_in(part_meta.column(key), value_set=wanted)
            hit = np.nonzero(pos.is_valid().to_numpy(zero_copy_only=False))[0]
            if len(hit):
                found.append(part_meta.take(pa.array(hit)))
                files.append(np.full(len(hit), str(info.path), dtype=object))
                rows.append(hit.astype(np.int64))
        res = pa.concat_tables(found) if found else meta_schema.empty_table()
        file_arr = np.concatenate(files) if files else np.zeros(0, dtype=object)
        row_arr = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        # 2. order as asked (a key stored twice, e.g. mid-compaction, is read once)
        first: dict[str, int] = {}
        for i, k in enumerate(res.column(key).to_pylist()):
            first.setdefault(k, i)
        missing = [k for k in ids if k not in first]
        damaged: list[Damaged] = []
        if missing and unreadable:  # skip_damaged: the keys may live in a part whose metadata is damaged
            where = unreadable[0] if len(unreadable) == 1 else f"one of {len(unreadable)} parts: {', '.join(unreadable[:3])}"
            damaged += [Damaged(spec.name, k, where, "metadata pages fail their checksum") for k in dict.fromkeys(missing)]
            ids = [k for k in ids if k in first]
        elif missing:
            raise UserError(f"{len(missing)} {key} values not in {spec.name}: {missing[:5]}",
                            f"check them with: wsl query \"SELECT {key} FROM {spec.name} LIMIT 10\"")
        src = np.fromiter((first[k] for k in ids), dtype=np.int64, count=len(ids))
        layout_col = res.column("layout_id").to_numpy(zero_copy_only=False)[src]
        layouts = list(dict.fromkeys(layout_col.tolist()))
        if len(layouts) > 1 and not grouped:
            raise UserError(f"the selected {spec.name} rows have {len(layouts)} layouts ({', '.join(map(str, layouts[:4]))}): "
                            "they cannot stack into one [N, P] tensor",
                            "filter on one layout_id (or architecture/width), or pass grouped=True for {layout_id: (tensor, meta)}")
        # 3. read the cells into one tensor per layout, every cell checked
        dtype_col = res.column("dtype").to_numpy(zero_copy_only=False)
        np_col = res.column("num_params").to_numpy(zero_copy_only=False).astype(np.int64)
        sha_col = res.column("sha256").to_pylist()
        xxh_col = res.column("xxh3").to_pylist()
        read = {}
        for lid in layouts:
            sel = src if len(layouts) == 1 else src[layout_col == lid]
            p = int(np_col[sel[0]])
            if not np.all(np_col[sel] == p):
                raise UserError(f"rows of layout {lid} have different num_params", "the store is damaged: run `wsl store check`")
            kinds = list(dict.fromkeys(dtype_col[sel].tolist()))
            bad: dict[int, tuple[str, str]] = {}
            if len(kinds) == 1:
                tensor, bad = read_weights(file_arr[sel], row_arr[sel], kinds[0], p, [xxh_col[i] for i in sel],
                                           [sha_col[i] for i in sel], verify)
            else:  # one layout stored in several dtypes: upcast to float32
                tensor = torch.empty((len(sel), p), dtype=torch.float32)
                for d in kinds:
                    at = np.nonzero(dtype_col[sel] == d)[0]
                    sub = sel[at]
                    part, sub_bad = read_weights(file_arr[sub], row_arr[sub], d, p, [xxh_col[i] for i in sub],
                                                 [sha_col[i] for i in sub], verify)
                    tensor[torch.from_numpy(at)] = part.float()
                    bad.update({int(at[i]): v for i, v in sub_bad.items()})
            damaged += [Damaged(spec.name, str(res.column(key)[int(sel[i])].as_py()), part, why)
                        for i, (part, why) in sorted(bad.items())]
            read[lid] = (sel, tensor, bad)
        if damaged and not skip_damaged:
            raise damaged_error(spec.name, damaged)
        if damaged:
            self.skipped_rows.extend(damaged)
            warnings.warn(skipped_message(damaged), DamagedRowsSkipped, stacklevel=3)
        out = {}
        for lid, (sel, tensor, bad) in read.items():
            if bad:
                keep = np.array([i not in bad for i in range(len(sel))], dtype=bool)
                sel, tensor = sel[keep], tensor[torch.from_numpy(keep)]
            if not len(sel):
                continue
            meta = res.take(pa.array(sel)).to_pandas()
            if device is not None:
                tensor = tensor.to(device)
            out[lid] = (tensor, meta)
        if grouped:
            return out
        if not out:  # every row skipped as damaged
            empty = meta_schema.empty_table().to_pandas()
            p = int(np_col[src[0]]) if len(src) else 0
            return torch.empty((0, p)), empty
        return out[layouts[0]]

    # ----- files in and out ----------------------------------------------------------
    def import_dir(self, folder: str | os.PathLike, arch: Mapping[str, Any] | None = None, zoo: str | None = None,
                   dtype: str | None = None) -> dict[str, int]:
        """Import a folder of .safetensors / .pt / .pth state dicts (see store.importer)."""
        from store.importer import import_dir

        return import_dir(self, folder, arch=arch, zoo=zoo, dtype=dtype)

    def export_safetensors(self, checkpoint_id: str, out: str | os.PathLike, table: str = "checkpoints") -> Path:
        """Write one stored checkpoint as named tensors in a .safetensors file."""
        from store.importer import export_safetensors

        return export_safetensors(self, checkpoint_id, out, table=table)

    def import_model_zoos(self, path: str | os.PathLike, **kw):
        """Import Ray Tune trial folders as the Model Zoos ship them (store.import_modelzoos); an ImportReport."""
        from store.import_modelzoos import import_model_zoos

        return import_model_zoos(self, path, **kw)

    def import_folder(self, path: str | os.PathLike, **kw):
        """Import checkpoint files with an optional sidecar table (store.import_folder); an ImportReport."""
        from store.import_folder import import_folder

        return import_folder(self, path, **kw)

    def import_hf(self, sources, **kw):
        """Import Hugging Face model folders or Hub repos (store.import_hf); an ImportReport."""
        from store.import_hf import import_hf

        return import_hf(self, sources, **kw)

    def export(self, out: str | os.PathLike, where: str | None = None, fmt: str = "safetensors", **kw):
        """Export the selected checkpoints as safetensors / hf / state-dict files (store.export); an ExportReport."""
        from store.export import export

        return export(self, where, out, fmt=fmt, **kw)

    # ----- maintenance ---------------------------------------------------------------
    def check(self, verify_weights: bool = True, quarantine: bool = False):
        """Read every part fully; report unreadable parts, schema problems and sha256 mismatches (see store.check)."""
        from store.check import check_store

        return check_store(self, verify_weights=verify_weights, quarantine=quarantine)

    def compact(self, table: str | None = None, **kw):
        """Merge each table's small parts into as few as the size limits allow (see store.check)."""
        from store.check import compact_store

        kw.setdefault("row_group_bytes", self.row_group_bytes)
        kw.setdefault("part_bytes", self.part_bytes)
        return compact_store(self, table, **kw)


# ----- helpers ------------------------------------------------------------------------
def _vanished(e: Exception) -> bool:
    msg = str(e)
    return any(s in msg for s in ("No such file", "No files found", "Cannot open file"))


def _fmt_key(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(keys, values))


def _to_arrow(rows: Any, table: str) -> pa.Table:
    try:
        if isinstance(rows, pa.Table):
            return rows
        if isinstance(rows, pa.RecordBatch):
            return pa.Table.from_batches([rows])
        if isinstance(rows, pd.DataFrame):
            return pa.Table.from_pandas(rows, preserve_index=False)
        if isinstance(rows, Mapping):
            return pa.table(dict(rows))
        if isinstance(rows, (list, tuple)):
            if rows and not all(isinstance(r, Mapping) for r in rows):
                raise UserError(f"{table}: rows must be dicts", "pass a list of dicts, a DataFrame or an Arrow table")
            return pa.Table.from_pylist(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{table}: rows cannot be converted to a table ({e})",
                        "give each column one type (numbers, strings, or None)") from None
    raise UserError(f"{table}: cannot append a {type(rows).__name__}",
                    "pass a pandas DataFrame, a list of dicts or a pyarrow Table")


def _check_weight_cells(spec: Table, t: pa.Table, sha_trusted: bool) -> None:
    """Every weights cell: a known dtype, num_params * itemsize bytes, and (unless trusted) its sha256."""
    dtypes = t.column("dtype").to_pylist()
    bad = sorted({d for d in dtypes if d not in codec.STORED_DTYPES}, key=str)
    if bad:
        raise UserError(f"{spec.name}: unsupported dtype values {bad}", f"use one of: {', '.join(codec.STORED_DTYPES)}")
    col = t.column(WEIGHTS).combine_chunks()
    if col.null_count:
        raise UserError(f"{spec.name}: {col.null_count} rows have no weights", "give every row its weight bytes")
    sizes = codec.row_sizes(col)
    item = np.array([codec.ITEMSIZE[d] for d in dtypes])
    nparams = t.column("num_params").to_numpy(zero_copy_only=False)
    wrong = np.nonzero(sizes != nparams * item)[0]
    if len(wrong):
        i = int(wrong[0])
        raise UserError(f"{spec.name}: row {i} has {sizes[i]} weight bytes, but num_params={nparams[i]} of {dtypes[i]} "
                        f"needs {nparams[i] * item[i]}", "write weights with ZooStore.append_weights")
    if not sha_trusted:
        given = t.column("sha256").to_pylist()
        actual = codec.sha256_cells(col)
        missing = [i for i, g in enumerate(given) if g is None]
        if missing:
            raise UserError(f"{spec.name}: {len(missing)} rows have no sha256", "write weights with ZooStore.append_weights")
        mismatch = [i for i, (g, a) in enumerate(zip(given, actual)) if g != a]
        if mismatch:
            raise UserError(f"{spec.name}: sha256 does not match the weight bytes in rows {mismatch[:10]}",
                            "write weights with ZooStore.append_weights")
        given = t.column("xxh3").to_pylist()
        mismatch = [i for i, (g, a) in enumerate(zip(given, codec.xxh3_cells(col))) if g is not None and g != a]
        if mismatch:
            raise UserError(f"{spec.name}: xxh3 does not match the weight bytes in rows {mismatch[:10]}",
                            "leave xxh3 out (it is computed from the bytes), or write weights with ZooStore.append_weights")


def _fill_xxh3(t: pa.Table) -> pa.Table:
    """Give rows from elsewhere (a pulled zoo, an older store) their xxh3; their sha256 is checked on append."""
    if WEIGHTS not in t.column_names:
        return t
    if "xxh3" in t.column_names:
        given = t.column("xxh3")
        if given.null_count == 0:
            return t
        computed = codec.xxh3_cells(t.column(WEIGHTS))
        values = [g if g is not None else c for g, c in zip(given.to_pylist(), computed)]
        return t.set_column(t.column_names.index("xxh3"), "xxh3", pa.array(values, pa.string()))
    return t.append_column("xxh3", pa.array(codec.xxh3_cells(t.column(WEIGHTS)), pa.string()))


def _key_array(t: pa.Table, keys: Sequence[str]) -> pa.Array:
    """One string per row identifying its key (several key columns joined with a unit separator)."""
    cols = [t.column(k).combine_chunks() for k in keys]
    cols = [c if pa.types.is_string(c.type) else pc.cast(c, pa.string()) for c in cols]
    if len(cols) == 1:
        return cols[0]
    return pc.binary_join_element_wise(*cols, "\x1f")


def _key_values(t: pa.Table, keys: Sequence[str], row: int) -> tuple:
    return tuple(t.column(k)[row].as_py() for k in keys)


_KEY_CACHE: "dict[tuple, pa.Array]" = {}


def _part_keys(info: parts.PartInfo, keys: Sequence[str]) -> pa.Array:
    """A part's key column(s) as one string array (cached: parts never change)."""
    st = info.path.stat()
    ck = (str(info.path), st.st_size, st.st_mtime_ns, tuple(keys))
    hit = _KEY_CACHE.get(ck)
    if hit is None:
        if len(_KEY_CACHE) > 20_000:
            _KEY_CACHE.clear()
        hit = _key_array(_read_columns(info.path, list(keys)), keys)
        _KEY_CACHE[ck] = hit
    return hit


def _same(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise equality where null == null and NaN == NaN."""
    if a.type != b.type:
        try:
            b = b.cast(a.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return np.zeros(len(a), dtype=bool)
    try:
        eq = pc.fill_null(pc.equal(a, b), False)
        same = pc.or_(eq, pc.and_(pc.is_null(a), pc.is_null(b)))
        if pa.types.is_floating(a.type):
            same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
        return same.to_numpy(zero_copy_only=False)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: compare as Python values
        return np.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist())], dtype=bool)


def _differing_columns(new: pa.Table, old: pa.Table, cols: Sequence[str]) -> tuple[int, list[str]] | None:
    """(first row that differs, the columns where it differs) between aligned new and stored rows; None if equal."""
    bad_rows = np.zeros(new.num_rows, dtype=bool)
    per_col = {}
    for c in cols:
        a = new.column(c).combine_chunks()
        if c in old.column_names:
            o = old.column(c).combine_chunks()
            diff = ~_same(a, o)
            if c in LATER_COLUMNS:  # a checksum an older part never stored is not a different value
                diff &= o.is_valid().to_numpy(zero_copy_only=False)
        elif c in LATER_COLUMNS:
            diff = np.zeros(len(a), dtype=bool)
        else:  # a column the stored rows never had: new information under an old key
            diff = a.is_valid().to_numpy(zero_copy_only=False)
        if diff.any():
            per_col[c] = diff
            bad_rows |= diff
    if not bad_rows.any():
        return None
    row = int(np.nonzero(bad_rows)[0][0])
    return row, [c for c, d in per_col.items() if d[row]]


def _rows_equal(a: pa.Table, cols: Sequence[str], i: int, b: pa.Table, j: int) -> bool:
    return _differing_columns(a.select(cols).slice(i, 1), b.select(cols).slice(j, 1), cols) is None


_META_CACHE: "dict[tuple, pa.Table]" = {}
_META_CACHE_BYTES = 512 * 2**20


def _part_meta(info: parts.PartInfo, meta_schema: pa.Schema) -> pa.Table:
    """A part's columns other than `weights`, in the table's unified schema (cached: parts never change)."""
    st = info.path.stat()
    key = (str(info.path), st.st_size, st.st_mtime_ns, meta_schema)
    hit = _META_CACHE.get(key)
    if hit is None:
        names = [f.name for f in meta_schema if f.name in info.schema.names]
        t = _read_columns(info.path, names)
        cols = [t.column(f.name).cast(f.type) if f.name in names and t.column(f.name).type != f.type
                else (t.column(f.name) if f.name in names else pa.nulls(t.num_rows, f.type)) for f in meta_schema]
        hit = pa.Table.from_arrays(cols, schema=meta_schema)
        while _META_CACHE and sum(v.nbytes for v in _META_CACHE.values()) + hit.nbytes > _META_CACHE_BYTES:
            _META_CACHE.pop(next(iter(_META_CACHE)))
        _META_CACHE[key] = hit
    return hit


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Columns of a part with the Parquet page CRCs checked; damage is a UserError naming the part and the fix."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except FileNotFoundError:
        raise  # compacted away: the caller lists the parts again
    except Exception as e:  # noqa: BLE001 - a bad page CRC, a broken page header, truncated data
        raise UserError(f"damaged part {path}: its metadata columns fail their page checksums "
                        f"({type(e).__name__}: {str(e)[:200]})",
                        "run `wsl store check --quarantine` to set it aside, then re-run the command that wrote it "
                        "(for checkpoints: the same `wsl zoo train SPEC`)") from None
