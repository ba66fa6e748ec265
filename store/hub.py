"""Publish a zoo store as a Hugging Face Hub dataset, and pull one back into a store.

    from store import ZooStore
    from store.hub import build_folder, publish, pull

    store = ZooStore("wsl-store")
    build_folder(store, "zoo-hub", where="lr > 0.01")     # the repo's folder, nothing uploaded
    publish(store, "my-org/my-zoo")                        # create_repo + upload_folder
    pull("my-org/my-zoo", "other-store", weights=True)     # Hub (or a local folder) -> store

The dataset repo (`build_folder` writes it; `publish` uploads it as it is):

    README.md                       dataset card: YAML `configs:` (one per table, `models` the default),
                                    license, tags; schema, how to decode weights, a summary
    wsl-zoo.json                    manifest: schema version, every table's files, rows, columns
    data/<table>/<table>-00000-of-00003.parquet
                                    shards of <= 500 MB, row groups <= 64 MB (by bytes), < 10,000
                                    files per folder (more go into data/<table>/<NNNNN>/ subfolders)

Why this shape: `datasets.load_dataset(repo, "checkpoints")`, the Hub's
dataset viewer and DuckDB (`read_parquet('hf://datasets/ORG/NAME/data/models/*.parquet')`)
read it as it is, with no loading script; row groups cut by bytes keep the
viewer working (one published zoo broke it with 2.5 GB row groups) and make
partial reads cheap; the weights column stays raw little-endian bytes, the
same as in the store, so nothing is converted on the way out or back in.

Credentials: the token comes from huggingface_hub's usual lookup (HF_TOKEN,
else the login saved by `hf auth login`). This module never passes it around,
prints it, logs it or writes it; exception texts are scrubbed of it before
they become error messages.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import card, parts, sql
from store.errors import UserError
from store.schema import SCHEMA_VERSION, TABLES

log = logging.getLogger(__name__)

HUB_FORMAT = "wsl-zoo-hub"
HUB_FORMAT_VERSION = 1
MANIFEST = "wsl-zoo.json"
CARD = "README.md"
DATA = "data"
REPO_TYPE = "dataset"

ROW_GROUP_BYTES = parts.ROW_GROUP_BYTES  # 64 MB: the dataset viewer refuses huge row groups
FILE_BYTES = parts.PART_BYTES  # 500 MB per shard
MAX_FILES_PER_FOLDER = 9_999  # the Hub asks for < 10,000 files per folder
# Above either threshold the folder goes up with `upload_large_folder` (resumable, many commits) when the
# installed huggingface_hub has it; below, one `upload_folder` commit (atomic: all or nothing). From
# huggingface_hub 1.x on, `upload_folder` itself commits big folders in resumable batches.
LARGE_FOLDER_BYTES = 5 * 2**30
LARGE_FOLDER_FILES = 1_000
DEFAULT_LICENSE = "cc-by-4.0"

# Metadata first, weights last (pull imports in this order; layouts before the tables that use them).
IMPORT_ORDER = ["layouts", "datasets", "models", "landscape", "evaluations", "generators",
                "generator_reports", "checkpoints", "optimizer_states", "samples"]
WEIGHT_TABLES = [t for t, s in TABLES.items() if s.has_weights]
_ITEMSIZE_SQL = "CASE dtype WHEN 'float32' THEN 4 ELSE 2 END"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


# ----- inputs --------------------------------------------------------------------------------------
def check_repo_id(repo_id: Any) -> str:
    """`ORG/NAME` as the Hub accepts it, or a UserError naming the fix."""
    example = "give it as ORG/NAME, e.g. --repo-id my-lab/mlp-digits-zoo"
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise UserError("no repo id given", example)
    repo_id = repo_id.strip()
    for prefix in ("https://huggingface.co/datasets/", "hf://datasets/", "datasets/"):
        if repo_id.startswith(prefix):
            raise UserError(f"repo id {repo_id!r} is a URL or path, not a repo id",
                            f"give only ORG/NAME: {repo_id[len(prefix):].strip('/')}")
    if not _REPO_ID.match(repo_id):
        raise UserError(f"repo id {repo_id!r} is not of the form ORG/NAME", example)
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    except Exception as e:  # HFValidationError: '--', '..', length, ...
        raise UserError(f"repo id {repo_id!r} is not valid on the Hub ({e})", example) from None
    return repo_id


def check_license(license: str) -> str:
    if not isinstance(license, str) or not _LICENSE.match(license.strip().lower()):
        raise UserError(f"license {license!r} is not a Hub license id",
                        "give an id from https://huggingface.co/docs/hub/repositories-licenses, e.g. cc-by-4.0, mit, apache-2.0")
    return license.strip().lower()


def parse_tables(tables: Iterable[str] | str | None) -> list[str] | None:
    """`["models,checkpoints", "landscape"]` -> ["models", "checkpoints", "landscape"]; unknown names are a UserError."""
    if tables is None:
        return None
    if isinstance(tables, str):
        tables = [tables]
    names = [n.strip() for item in tables for n in str(item).split(",") if n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise UserError(f"unknown table(s) {unknown}", f"use some of: {', '.join(TABLES)}")
    return list(dict.fromkeys(names))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it once, at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hub_endpoint() -> str:
    """HF_ENDPOINT as the environment says now, else huggingface_hub's default."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def _token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, else the saved login). Only used to check and to scrub."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - e.g. a failing OIDC exchange: treat as "no credentials"
        return None


_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def scrub(text: str, secrets_: Sequence[str | None] = ()) -> str:
    """`text` with any token in it replaced by ***: the known ones, anything shaped like hf_..., Bearer headers."""
    for s in secrets_:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _TOKEN_LIKE.sub("***", text)
    return _BEARER.sub(r"\1***", text)


CREDENTIALS_FIX = ("log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`), "
                   "or set HF_TOKEN (https://huggingface.co/settings/tokens; publishing needs a token with write access)")


def _hub_error(e: BaseException, action: str, endpoint: str, repo_id: str, token: str | None) -> UserError:
    """Any exception from huggingface_hub -> one UserError that names the cause and the fix, token scrubbed."""
    names = {c.__name__ for c in type(e).__mro__}
    msg = scrub(" ".join(str(e).split()), [token])[:600] or type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if "OfflineModeIsEnabled" in names:
        return UserError(f"{action}: HF_HUB_OFFLINE is set, so the Hub is not contacted",
                         "unset HF_HUB_OFFLINE (a repo pulled before is read from the cache; "
                         "`wsl publish --dry-run DIR` works offline)")
    if names & {"ConnectError", "ConnectionError", "ConnectTimeout", "Timeout", "TimeoutException", "ReadTimeout",
                "NetworkError", "TransportError", "ProxyError", "SSLError", "RemoteProtocolError"}:
        return UserError(f"{action}: cannot reach the Hub at {endpoint} ({type(e).__name__}: {msg})",
                         "check the network connection and HF_ENDPOINT (unset it for huggingface.co)")
    if "GatedRepoError" in names:
        return UserError(f"{action}: {repo_id} is gated ({msg})",
                         f"accept its conditions on {endpoint}/datasets/{repo_id} while logged in, then {CREDENTIALS_FIX}")
    if "RepositoryNotFoundError" in names:
        return UserError(f"{action}: no dataset repo {repo_id} at {endpoint} (or it is private and you are not logged in)",
                         f"check the name; for a private repo {CREDENTIALS_FIX}")
    if "RevisionNotFoundError" in names:
        return UserError(f"{action}: {msg}", "give a branch, tag or commit that exists (or leave --revision out)")
    if "LocalEntryNotFoundError" in names:
        return UserError(f"{action}: the Hub at {endpoint} could not be reached and {repo_id} is not in the local cache ({msg})",
                         "check the network and HF_ENDPOINT, or unset HF_HUB_OFFLINE")
    if status in (401, 403):
        return UserError(f"{action}: the Hub refused the credentials (HTTP {status}: {msg})",
                         f"{CREDENTIALS_FIX}, to the organisation too for an organisation's repo")
    return UserError(f"{action}: {type(e).__name__}: {msg}", "check the message; re-running the command resumes where it stopped")


# ----- selection ------------------------------------------------------------------------------------
@dataclass
class Selection:
    """What gets published: one read-only SELECT per table over the store's views, and its row count."""

    where: str | None
    queries: dict[str, str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        return list(self.queries)


def _columns(store, table: str) -> list[str]:
    return store.schema(table).names


def select(store, where: str | None = None, tables: Iterable[str] | str | None = None) -> Selection:
    """The rows to publish.

    where: a filter over `models` (e.g. "lr > 0.01 AND architecture = 'mlp'");
    tables tied to models by `model_id` (checkpoints, optimizer_states,
    landscape, evaluations) keep only the selected models' rows, `layouts` and
    `datasets` only the rows those reference. `generators`, `generator_reports` and `samples` are
    not tied to single models: with --where they are left out unless named in
    `tables` (then published whole). tables: default every non-empty table;
    tables that end up empty are left out (noted). Nothing to publish, or a
    --where that matches no model, is a UserError.
    """
    chosen = parse_tables(tables)
    where = where.strip().rstrip(";").strip() if isinstance(where, str) else None
    notes: list[str] = []
    base: dict[str, str] = {}
    if where:
        cond = f"(\n{where}\n)"
        try:
            n_models = int(store.arrow(f"SELECT count(*) AS n FROM models WHERE {cond}").column(0)[0].as_py())
        except UserError as e:
            raise UserError(f"--where {where!r} is not a valid filter over models ({e.message})",
                            "give a SQL condition on models' columns, e.g. --where \"lr > 0.01 AND epochs >= 10\"") from None
        if n_models == 0:
            raise UserError(f"no models match --where {where!r}: nothing to publish",
                            f"check the filter with: wsl query \"SELECT count(*) FROM models WHERE {where}\"")
        sel_ids = f"SELECT model_id FROM models WHERE {cond}"
        for t in TABLES:
            if t == "models":
                base[t] = f"SELECT * FROM models WHERE {cond}"
            elif t in ("layouts", "datasets"):
                continue  # below: what the other tables reference
            elif "model_id" in _columns(store, t):
                base[t] = f"SELECT * FROM {t} WHERE model_id IN ({sel_ids})"
            elif chosen and t in chosen:
                base[t] = f"SELECT * FROM {t}"
                notes.append(f"{t}: not tied to single models, published whole (--where does not filter it)")
        referencing = [t for t in base if chosen is None or t in chosen or t == "models"]
        for t, col in (("layouts", "layout_id"), ("datasets", "dataset_id")):
            refs = [f"SELECT {col} FROM ({base[r]}) AS __r{i}" for i, r in enumerate(referencing)
                    if col in _columns(store, r)]
            base[t] = f"SELECT * FROM {t} WHERE {col} IN ({' UNION '.join(refs)})" if refs else f"SELECT * FROM {t} WHERE false"
    else:
        base = {t: f"SELECT * FROM {t}" for t in TABLES}

    order = [t for t in TABLES if t in base]
    if chosen is None:
        wanted = [t for t in order if not (where and t in ("generators", "generator_reports", "samples"))]
    else:
        wanted = [t for t in order if t in chosen]
    counts: dict[str, int] = {}

    def count(t: str) -> int:
        return int(store.arrow(f"SELECT count(*) AS n FROM ({base[t]}) AS __q").column(0)[0].as_py())

    for t in wanted:
        n = count(t)
        if n:
            counts[t] = n
        elif chosen is not None:
            notes.append(f"{t}: no rows in the selection, left out")
    if any(TABLES[t].has_weights for t in counts) and "layouts" not in wanted and count("layouts"):
        counts["layouts"] = count("layouts")
        notes.append("layouts: added, the weights tables need it to decode their weights")
    queries = {t: base[t] for t in order if t in counts}
    counts = {t: counts[t] for t in queries}
    if not queries:
        what = f"the models matching --where {where!r}" if where else f"store {store.path}"
        asked = f" in tables {chosen}" if chosen else ""
        raise UserError(f"nothing to publish: {what} has no rows{asked}",
                        "train a zoo first (wsl zoo train SPEC) or choose non-empty tables (see `wsl store tables`)")
    return Selection(where or None, queries, counts, notes)


# ----- shards -------------------------------------------------------------------------------------
def _row_sizes(t: pa.Table) -> np.ndarray:
    """Bytes each row takes in a row group, a little over Parquet's uncompressed size (4-byte length per binary cell)."""
    sizes = parts.row_bytes(t)
    if parts.WEIGHTS in t.column_names:
        sizes = sizes + 4
    return sizes + 8


def _writer_options(schema: pa.Schema) -> dict:
    names = schema.names
    binary = [c for c in names if pa.types.is_binary(schema.field(c).type) or pa.types.is_large_binary(schema.field(c).type)]
    opts: dict[str, Any] = dict(
        # weights do not compress: stored plain so a read is a copy; the metadata compresses well
        compression={c: ("none" if c in binary else "zstd") for c in names},
        use_dictionary=[c for c in names if c not in binary],
        write_statistics=[c for c in names if c not in binary],
        write_page_index=True,
        write_page_checksum=True,
        store_schema=True,
    )
    if "use_content_defined_chunking" in inspect.signature(pq.ParquetWriter.__init__).parameters:
        # pages cut by content: re-publishing a grown zoo re-uploads little (the Hub's Xet storage dedups pages)
        opts["use_content_defined_chunking"] = True
    return opts


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
        self._opts = _writer_options(schema)
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


def _final_names(table: str, tmp_files: list[Path], max_files_per_folder: int) -> tuple[list[str], str]:
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
    """The store's schema for `table`, with columns that are all-null everywhere typed as DuckDB returns them."""
    fields = []
    for f in store.schema(table):
        if pa.types.is_null(f.type) and f.name in sample.names:
            f = pa.field(f.name, sample.field(f.name).type)
        elif pa.types.is_large_string(f.type):
            f = pa.field(f.name, pa.string())
        fields.append(pa.field(f.name, f.type))
    return pa.schema(fields)


Progress = Callable[[int, int, str], None]  # (rows just done, rows in all, what) -> None; the CLI draws a bar


def _write_table(store, table: str, query: str, folder: Path, row_group_bytes: int, file_bytes: int,
                 progress: Progress | None = None, total: int = 0) -> ShardWriter:
    con = store.connection()
    sql.check_select(query)
    batch_rows = 65_536
    if TABLES[table].has_weights:
        big = store.arrow(f"SELECT max(num_params * {_ITEMSIZE_SQL}) AS b FROM ({query}) AS __q").column(0)[0].as_py() or 1
        batch_rows = int(max(1, min(65_536, row_group_bytes // max(1, int(big)))))
    rel = con.sql(query)
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


# ----- the folder -----------------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What `build_folder` wrote: the folder, its manifest (tables, files, rows) and notes."""

    folder: Path
    manifest: dict
    notes: list[str]

    @property
    def files(self) -> list[str]:
        return [CARD, MANIFEST] + [f for t in self.manifest["tables"].values() for f in t["files"]]

    def rows(self) -> list[dict]:
        return [{"table": t, "rows": i["rows"], "files": len(i["files"]), "row_groups": i["row_groups"],
                 "bytes": i["bytes"]} for t, i in self.manifest["tables"].items()]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wsl-zoo")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


def _fill_folder(store, selection: Selection, folder: Path, repo_id: str | None, license: str,
                 row_group_bytes: int, file_bytes: int, max_files_per_folder: int, progress: Progress | None) -> dict:
    tables: dict[str, dict] = {}
    total = sum(selection.counts.values())
    for t in selection.tables:
        tmp_dir = folder / DATA / t
        w = _write_table(store, t, selection.queries[t], tmp_dir, row_group_bytes, file_bytes, progress, total)
        names, glob = _final_names(t, w.files, max_files_per_folder)
        for src, dst in zip(w.files, names):
            (folder / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, folder / dst)
        tables[t] = {
            "path_glob": glob,
            "rows": w.rows,
            "row_groups": w.row_groups,
            "files": names,
            "bytes": sum((folder / n).stat().st_size for n in names),
            "key": list(TABLES[t].key),
            "has_weights": TABLES[t].has_weights,
            "columns": [[f.name, str(f.type)] for f in w.schema],
        }
        log.info("wrote %s: %d rows in %d files", t, w.rows, len(names))
    manifest = {
        "format": HUB_FORMAT,
        "format_version": HUB_FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "created_with": f"wsl-zoo {_version()}",
        "repo_id": repo_id,
        "where": selection.where,
        "license": license,
        "limits": {"row_group_bytes": row_group_bytes, "file_bytes": file_bytes,
                   "max_files_per_folder": max_files_per_folder},
        "tables": tables,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    summary = summarize(folder, manifest)
    (folder / CARD).write_text(card.render(manifest, summary, repo_id, license))
    return manifest


def build_folder(store, out: str | os.PathLike, *, repo_id: str | None = None, where: str | None = None,
                 tables: Iterable[str] | str | None = None, license: str = DEFAULT_LICENSE,
                 row_group_bytes: int = ROW_GROUP_BYTES, file_bytes: int = FILE_BYTES,
                 max_files_per_folder: int = MAX_FILES_PER_FOLDER, selection: Selection | None = None,
                 progress: Progress | None = None) -> BuildReport:
    """Write the dataset repo's folder to `out` (new or empty): what `wsl publish --dry-run DIR` does.

    The folder appears whole or not at all: it is written next to `out` under
    a temporary name and renamed into place at the end.
    """
    out = Path(out).expanduser()
    if repo_id is not None:
        repo_id = check_repo_id(repo_id)
    license = check_license(license)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty directory", "give a new directory for the dataset folder")
    selection = selection or select(store, where, tables)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        manifest = _fill_folder(store, selection, tmp, repo_id, license, row_group_bytes, file_bytes,
                                max_files_per_folder, progress)
        if out.exists():
            out.rmdir()  # empty (checked above): rename over it
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(out, manifest, selection.notes)


# ----- summary for the card ---------------------------------------------------------------------------
def _folder_connection(folder: Path, manifest: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    for t, info in manifest["tables"].items():
        files = ", ".join("'" + str(folder / f).replace("'", "''") + "'" for f in info["files"])
        con.execute(f'CREATE VIEW "{t}" AS SELECT * FROM read_parquet([{files}])')
    return con


def _fmt_values(values: list, n: int, lo: Any, hi: Any) -> str:
    if n <= 8:
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)
    fmt = (lambda v: f"{v:.4g}") if isinstance(lo, float) else str
    return f"{n} values in [{fmt(lo)}, {fmt(hi)}]"


def summarize(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> dict:
    """Counts and ranges for the card, read from the folder's shards with DuckDB (never the weights column)."""
    folder = Path(folder)
    tables = manifest["tables"]
    out: dict[str, Any] = {}
    con = _folder_connection(folder, manifest)
    try:
        def cols(t: str) -> list[str]:
            return [c for c, _ in tables[t]["columns"]] if t in tables else []

        def q(text: str) -> list[tuple]:
            return con.sql(text).fetchall()

        if "models" in tables:
            mc = cols("models")
            out["zoos"] = [r[0] for r in q("SELECT DISTINCT zoo FROM models WHERE zoo IS NOT NULL ORDER BY 1")]
            if "layouts" in tables:
                arch = q("SELECT m.architecture, count(*), count(DISTINCT m.layout_id), min(l.num_params), max(l.num_params) "
                         "FROM models m LEFT JOIN layouts l ON m.layout_id = l.layout_id GROUP BY 1 ORDER BY 2 DESC, 1")
            else:
                arch = q("SELECT architecture, count(*), count(DISTINCT layout_id), NULL, NULL FROM models GROUP BY 1 ORDER BY 2 DESC, 1")
            out["architectures"] = [[a, n, nl, (f"{lo}" if lo == hi else f"{lo} to {hi}") if lo is not None else ""]
                                    for a, n, nl, lo, hi in arch]
            ds = q("SELECT dataset, count(*) FROM models GROUP BY 1 ORDER BY 2 DESC, 1")
            out["datasets"] = [list(r) for r in ds[:20]]
            out["datasets_more"] = max(0, len(ds) - 20)
            hp = []
            for c in ["optimizer", "lr", "momentum", "weight_decay", "batch_size", "width", "depth", "epochs",
                      "schedule", "seed"]:
                if c not in mc:
                    continue
                vals = [r[0] for r in q(f'SELECT DISTINCT "{c}" FROM models WHERE "{c}" IS NOT NULL ORDER BY 1')]
                if vals:
                    hp.append([c, f"{len(vals)} seeds" if c == "seed" and len(vals) > 8
                               else _fmt_values(vals, len(vals), vals[0], vals[-1])])
            out["hyperparameters"] = hp
            out["status"] = q("SELECT coalesce(status, 'unknown'), count(*) FROM models GROUP BY 1 ORDER BY 2 DESC")
        if "checkpoints" in tables:
            metrics = [c for c in ("test_acc", "train_acc", "test_loss", "train_loss") if c in cols("checkpoints")]
            last = ("SELECT model_id, " + ", ".join(metrics) + " FROM checkpoints "
                    "QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY epoch DESC NULLS LAST, step DESC NULLS LAST) = 1")
            acc = []
            for m in metrics:
                lo, med, hi = q(f"SELECT min({m}), median({m}), max({m}) FROM ({last})")[0]
                if lo is not None:
                    acc.append([m, lo, med, hi])
            out["accuracy"] = acc
        if "landscape" in tables:
            out["phases"] = q("SELECT coalesce(phase, '(none)'), count(*) FROM landscape GROUP BY 1 ORDER BY 1")
    finally:
        con.close()
    return out


# ----- publish -------------------------------------------------------------------------------------
@dataclass
class PublishReport:
    """published=True only once the upload call returned; `build` describes the folder that went up."""

    repo_id: str | None
    url: str | None
    published: bool
    method: str | None
    build: BuildReport
    bytes: int = 0
    num_files: int = 0

    def rows(self) -> list[dict]:
        return self.build.rows()


def _make_api(endpoint: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def _folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _delete_stale(api, repo_id: str, keep: set[str]) -> list[str]:
    """After upload_large_folder (which cannot delete): remove the previous version's shards no longer in the folder."""
    remote = api.list_repo_files(repo_id, repo_type=REPO_TYPE)
    stale = [f for f in remote if (f.startswith(f"{DATA}/") or f == MANIFEST) and f not in keep]
    if stale:
        from huggingface_hub import CommitOperationDelete

        api.create_commit(repo_id=repo_id, repo_type=REPO_TYPE,
                          operations=[CommitOperationDelete(path_in_repo=f) for f in stale],
                          commit_message=f"wsl publish: remove {len(stale)} files of the previous version")
    return stale


def publish(store, repo_id: str | None, *, where: str | None = None, tables: Iterable[str] | str | None = None,
            private: bool = False, license: str = DEFAULT_LICENSE, dry_run: str | os.PathLike | None = None,
            api: Any = None, large_folder_bytes: int = LARGE_FOLDER_BYTES, large_folder_files: int = LARGE_FOLDER_FILES,
            row_group_bytes: int = ROW_GROUP_BYTES, file_bytes: int = FILE_BYTES,
            max_files_per_folder: int = MAX_FILES_PER_FOLDER, staging_dir: str | os.PathLike | None = None,
            progress: Progress | None = None) -> PublishReport:
    """Publish the selected part of `store` as the dataset repo `repo_id` (or only write it, with dry_run=DIR).

    Order: check inputs, credentials and offline mode (nothing written or sent
    yet); choose the rows; `api.create_repo(repo_type="dataset",
    exist_ok=True, private=...)`; write the folder to a temporary directory;
    upload it (`upload_folder`, one commit that also deletes the previous
    version's shards; or `upload_large_folder` above LARGE_FOLDER_BYTES /
    LARGE_FOLDER_FILES when the installed huggingface_hub has it). The report
    says published=True only after the upload call returned; any failure is a
    UserError saying the upload did not finish. `api` is injectable (tests
    pass a fake that records calls); by default an `HfApi` for $HF_ENDPOINT.
    """
    limits = dict(row_group_bytes=row_group_bytes, file_bytes=file_bytes, max_files_per_folder=max_files_per_folder,
                  progress=progress)
    license = check_license(license)
    if dry_run is not None:
        report = build_folder(store, dry_run, repo_id=repo_id, where=where, tables=tables, license=license, **limits)
        size, nfiles = _folder_size(report.folder)
        return PublishReport(report.manifest.get("repo_id"), None, False, None, report, size, nfiles)
    if repo_id is None:
        raise UserError("publishing needs --repo-id ORG/NAME", "give --repo-id, or --dry-run DIR to only write the folder")
    repo_id = check_repo_id(repo_id)
    if offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: publishing needs the Hub",
                        "unset HF_HUB_OFFLINE, or use --dry-run DIR to write the folder without uploading")
    token = _token()
    if not token and not getattr(api, "token", None):
        raise UserError("no Hugging Face credentials found (HF_TOKEN is unset and there is no saved login)", CREDENTIALS_FIX)
    endpoint = hub_endpoint()
    selection = select(store, where, tables)  # an empty selection fails here, before anything is sent
    if api is None:
        api = _make_api(endpoint)
    failure: UserError | None = None
    try:
        log.info("create_repo %s (dataset, private=%s)", repo_id, private)
        repo_url = api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private)
    except Exception as e:  # noqa: BLE001 - every failure becomes a scrubbed, one-line UserError
        failure = _hub_error(e, f"creating dataset repo {repo_id}", endpoint, repo_id, token)
    if failure is not None:
        raise failure  # raised outside the except block: the original exception (maybe quoting the token) is not attached
    url = str(repo_url) if isinstance(repo_url, str) and repo_url else f"{endpoint}/datasets/{repo_id}"
    with tempfile.TemporaryDirectory(prefix="wsl-publish-", dir=staging_dir) as tmp:
        report = build_folder(store, Path(tmp) / "zoo", repo_id=repo_id, license=license, selection=selection, **limits)
        size, nfiles = _folder_size(report.folder)
        large = size > large_folder_bytes or nfiles > large_folder_files
        n_models = report.manifest["tables"].get("models", {}).get("rows", 0)
        message = f"wsl publish: {n_models} models, tables {', '.join(report.manifest['tables'])}"
        description = f"Selection: models WHERE {selection.where}" if selection.where else "The whole store."
        try:
            if large and hasattr(api, "upload_large_folder"):
                method = "upload_large_folder"
                log.info("upload_large_folder %s: %d files, %d bytes", repo_id, nfiles, size)
                api.upload_large_folder(repo_id=repo_id, folder_path=str(report.folder), repo_type=REPO_TYPE,
                                        private=private)
                _delete_stale(api, repo_id, set(report.files))
            else:
                method = "upload_folder"
                log.info("upload_folder %s: %d files, %d bytes", repo_id, nfiles, size)
                api.upload_folder(repo_id=repo_id, folder_path=str(report.folder), repo_type=REPO_TYPE,
                                  commit_message=message, commit_description=description,
                                  delete_patterns=[f"{DATA}/*", MANIFEST])
        except Exception as e:  # noqa: BLE001
            err = _hub_error(e, f"uploading to {repo_id}", endpoint, repo_id, token)
            failure = UserError(f"{err.message}. The upload did not finish: {repo_id} is NOT published as this zoo",
                                err.fix)
        if failure is not None:
            raise failure
    log.info("published %s (%s)", repo_id, method)
    return PublishReport(repo_id, url, True, method, report, size, nfiles)


# ----- pull ------------------------------------------------------------------------------------------
@dataclass
class PullReport:
    source: str
    store: Path
    tables: dict[str, dict]
    skipped: dict[str, str]

    def rows(self) -> list[dict]:
        out = [{"table": t, **i, "note": ""} for t, i in self.tables.items()]
        out += [{"table": t, "rows": "", "new": 0, "files": 0, "note": why} for t, why in self.skipped.items()]
        return out


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _hub_download(repo_id: str, *, revision: str | None, allow_patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type=REPO_TYPE, revision=revision, allow_patterns=allow_patterns,
                             endpoint=hub_endpoint())


def _table_files(root: Path, table: str) -> list[Path]:
    return sorted(p for p in (root / DATA / table).rglob("*.parquet") if not p.name.startswith("."))


def _check_target(path: Path) -> bool:
    """True when `path` is already a store; a UserError when it cannot become one (before anything is downloaded)."""
    if (path / "zoo.json").exists():
        return True
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} is not a zoo store (no zoo.json) and not empty",
                        "pull into a new directory or an existing store (--store DIR)")
    return False


def pull(source: str, store_path: str | os.PathLike, *, tables: Iterable[str] | str | None = None,
         weights: bool = False, revision: str | None = None,
         download: Callable[..., str] | None = None, progress: Progress | None = None) -> PullReport:
    """Import a published zoo (Hub repo ORG/NAME, or a local folder such as a --dry-run one) into a store.

    Metadata tables are downloaded and imported first; the weights tables
    (checkpoints, optimizer_states, samples) only with weights=True: the store
    keeps weights and their rows together, so without weights those tables
    are skipped (query their metadata remotely with DuckDB instead, see
    docs/hub.md). Every row goes through ZooStore.append: keys make a second
    pull a no-op, and weights are checked against their sha256. A local
    directory named like ORG/NAME wins over the Hub (as with datasets).
    `download(repo_id, revision=..., allow_patterns=[...]) -> folder` is
    injectable; by default huggingface_hub.snapshot_download (cached, so
    HF_HUB_OFFLINE=1 works for a repo pulled before).
    """
    from store.store import ZooStore

    chosen = parse_tables(tables)
    store_path = Path(store_path).expanduser()
    exists = _check_target(store_path)
    local = _is_local(source)
    token = None
    if local:
        root = Path(source).expanduser()

        def fetch(patterns: list[str]) -> Path:
            return root
    else:
        try:
            repo_id = check_repo_id(source)
        except UserError as e:
            raise UserError(f"{source!r} is neither a local folder nor a Hub repo id ({e.message})",
                            "give ORG/NAME, or the path of a folder written by `wsl publish --dry-run`") from None
        token = _token()
        endpoint = hub_endpoint()
        dl = download or _hub_download

        def fetch(patterns: list[str]) -> Path:
            failure = None
            try:
                return Path(dl(repo_id, revision=revision, allow_patterns=patterns))
            except Exception as e:  # noqa: BLE001 - scrubbed one-line UserError
                failure = _hub_error(e, f"downloading {repo_id}", endpoint, repo_id, token)
            raise failure  # outside the except block: the original exception is not attached

    root = fetch([CARD, MANIFEST])
    manifest = None
    if (root / MANIFEST).exists():
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except ValueError as e:
            raise UserError(f"{source}: {MANIFEST} is not valid JSON ({e})", "re-publish the zoo with `wsl publish`") from None
        if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise UserError(f"{source} has store schema version {manifest['schema_version']}, newer than this wsl "
                            f"understands ({SCHEMA_VERSION})", "upgrade wsl-zoo (pip install -U wsl-zoo)")
    available = [t for t in IMPORT_ORDER if manifest is None or t in manifest.get("tables", {})]
    if chosen is not None:
        missing = [t for t in chosen if t not in available]
        if missing:
            raise UserError(f"{source} does not publish table(s) {missing}", f"choose among: {', '.join(available)}")
    wanted = [t for t in available if chosen is None or t in chosen]
    skipped: dict[str, str] = {}
    if not weights:
        for t in wanted:
            if TABLES[t].has_weights:
                skipped[t] = "weights table: pull with --weights to get it"
        wanted = [t for t in wanted if t not in skipped]
    elif any(TABLES[t].has_weights for t in wanted) and "layouts" in available and "layouts" not in wanted:
        wanted = [t for t in available if t in wanted or t == "layouts"]
    if not wanted:
        raise UserError(f"nothing to pull from {source} with these options ({', '.join(skipped) or 'no tables'})",
                        "add --weights to pull the weights tables, or choose other --tables")

    total_rows = sum(manifest["tables"][t]["rows"] for t in wanted) if manifest else 0
    meta = [t for t in wanted if not TABLES[t].has_weights]
    heavy = [t for t in wanted if TABLES[t].has_weights]
    store = None
    results: dict[str, dict] = {}
    for group in (meta, heavy):
        if not group:
            continue
        folder = fetch([f"{DATA}/{t}/*" for t in group])
        found = {t: _table_files(folder, t) for t in group}
        if manifest is None and not any(found.values()):
            raise UserError(f"{source} holds no zoo tables (no {DATA}/<table>/*.parquet)",
                            "pull a dataset published with `wsl publish`")
        if store is None:
            store = ZooStore(store_path, create=not exists)
        for t in group:
            files = found[t]
            if manifest is not None and len(files) != len(manifest["tables"][t]["files"]):
                raise UserError(f"{source}: {t} has {len(files)} files, its manifest lists "
                                f"{len(manifest['tables'][t]['files'])}", "re-run the pull (a download was incomplete)")
            rows = new = 0
            for f in files:
                tbl = pq.read_table(f)
                rows += tbl.num_rows
                new += store.append(t, tbl)
                if progress is not None:
                    progress(tbl.num_rows, total_rows, t)
            results[t] = {"rows": rows, "new": new, "files": len(files)}
    return PullReport(str(source), store_path, results, skipped)

