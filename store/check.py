"""`wsl store check` and `wsl store compact`: find damage, merge small parts, lose nothing.

check reads every part completely (Parquet page checksums on), checks the
schema against the contract, recomputes every weights sha256 and xxh3, and
reports each problem with the part's path. A part whose footer cannot be read
is already left out of queries; `quarantine=True` also moves damaged parts out
of the table (to STORE/_quarantine/<table>/), so the rest of the table stays
queryable, and says in `repair` what re-creates their rows (for checkpoints:
re-running the same training, which rewrites exactly the missing ones; see
zoo/train.py).

compact merges parts below `small_bytes` (and any part holding a duplicate
row) into new parts within the size limits, under the table's write lock.
A part is merged only after it reads back whole (page CRCs, every weights
cell against its xxh3, or its sha256 where an older part has no xxh3, which
the merged part then gets); a damaged part is left where it is and reported,
so compaction never turns damage into fresh, valid-looking checksums. Then
new parts land first, then the old ones are removed, and before removing
anything it checks that the new parts hold exactly the old rows (count and
the multiset of key + sha256) minus exact duplicates. Rows that share a key
but differ are never dropped: they are reported as conflicts.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store import codec, parts
from store.schema import LATER_COLUMNS, SCHEMA_VERSION, TABLES
from store.verified_read import REPAIR

if TYPE_CHECKING:  # pragma: no cover
    from store.store import ZooStore

WEIGHTS = "weights"
SMALL_BYTES = 128 * 2**20


@dataclass
class Problem:
    table: str
    path: str
    problem: str

    def as_dict(self) -> dict:
        return {"table": self.table, "path": self.path, "problem": self.problem}


@dataclass
class CheckReport:
    store: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> {parts, rows, bytes}
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    repair: list[str] = field(default_factory=list)  # what to run to re-create the quarantined rows

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def corrupt_parts(self) -> list[str]:
        return sorted({p.path for p in self.problems if p.path.endswith(parts.PART_SUFFIX)})

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "tables": self.tables,
                "problems": [p.as_dict() for p in self.problems],
                "warnings": [p.as_dict() for p in self.warnings], "quarantined": self.quarantined,
                "repair": self.repair}


def _check_part(table: str, path: Path, verify_weights: bool, fast: bool = False) -> tuple[int, list[str]]:
    """Read one part completely; (rows, problems). fast: cells with an xxh3 are checked by it alone (no sha256)."""
    spec = TABLES[table]
    problems: list[str] = []
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001
        return 0, [f"unreadable footer: {type(e).__name__}: {e}"]
    for name, typ in spec.columns:
        if name not in schema.names and name in LATER_COLUMNS:
            continue  # a part from before the column existed (reads fall back to sha256)
        if name not in schema.names:
            problems.append(f"missing required column {name!r}")
        elif schema.field(name).type != typ:
            problems.append(f"column {name!r} has type {schema.field(name).type}, contract says {typ}")
    rows = 0
    try:
        for i in range(pf.num_row_groups):
            rg = pf.read_row_group(i)
            rows += rg.num_rows
            for k in spec.key:
                if k in rg.column_names and rg.column(k).null_count:
                    problems.append(f"row group {i}: key column {k!r} has empty values")
            if spec.has_weights and verify_weights and not problems:
                problems += [f"row group {i}: {p}" for p in _check_weights(rg, fast)]
    except Exception as e:  # noqa: BLE001 - damaged pages, bad checksums, truncated data
        problems.append(f"unreadable data: {type(e).__name__}: {str(e)[:300]}")
    return rows, problems


def _check_weights(rg: pa.Table, fast: bool = False) -> list[str]:
    out = []
    col = rg.column(WEIGHTS).combine_chunks()
    data, offs = codec.chunk_bytes(col)
    dtypes = rg.column("dtype").to_pylist()
    nparams = rg.column("num_params").to_pylist()
    shas = rg.column("sha256").to_pylist()
    xxh = rg.column("xxh3").to_pylist() if "xxh3" in rg.column_names else [None] * rg.num_rows
    bad_size, bad_sha, bad_xxh = [], [], []
    for i in range(rg.num_rows):
        cell = data[offs[i]:offs[i + 1]]
        d = dtypes[i]
        if d not in codec.ITEMSIZE or len(cell) != nparams[i] * codec.ITEMSIZE[d]:
            bad_size.append(i)
            continue
        if xxh[i] is not None and codec.xxh3(cell) != xxh[i]:
            bad_xxh.append(i)
        if not (fast and xxh[i] is not None) and hashlib.sha256(cell).hexdigest() != shas[i]:
            bad_sha.append(i)
    if bad_size:
        out.append(f"{len(bad_size)} rows whose weight bytes do not match num_params x dtype (rows {bad_size[:5]})")
    if bad_sha:
        out.append(f"{len(bad_sha)} rows whose weights do not match their sha256 (rows {bad_sha[:5]})")
    if bad_xxh:
        out.append(f"{len(bad_xxh)} rows whose weights do not match their xxh3 (rows {bad_xxh[:5]})")
    return out


def check_store(store: "ZooStore", verify_weights: bool = True, quarantine: bool = False) -> CheckReport:
    report = CheckReport(str(store.path))
    if int(store.meta.get("schema_version", 0)) != SCHEMA_VERSION:
        report.warnings.append(Problem("", str(store.path / "zoo.json"),
                                       f"schema version {store.meta.get('schema_version')} (this wsl writes {SCHEMA_VERSION})"))
    moved: dict[str, list[Path]] = {}
    for table in TABLES:
        folder = store.table_dir(table)
        files = parts.list_parts(folder)
        stats = {"parts": len(files), "rows": 0, "bytes": 0}
        for path in files:
            stats["bytes"] += path.stat().st_size
            rows, problems = _check_part(table, path, verify_weights)
            stats["rows"] += rows
            for p in problems:
                report.problems.append(Problem(table, str(path), p))
            if problems and quarantine:
                dest = store.path / "_quarantine" / table
                dest.mkdir(parents=True, exist_ok=True)
                with parts.table_lock(folder):  # not while a writer or a compaction holds the table
                    shutil.move(str(path), dest / path.name)
                parts.forget(path)
                report.quarantined.append(str(dest / path.name))
                moved.setdefault(table, []).append(dest / path.name)
        for tmp in parts.list_temp_files(folder):
            report.warnings.append(Problem(table, str(tmp), "leftover temporary file of an interrupted write "
                                           "(never visible to queries; `wsl store compact` removes it)"))
        report.tables[table] = stats
    if moved:
        store.close()  # views over the remaining parts on next use
        report.repair = _repair_hints(store, moved)
    _check_duplicates(store, report)
    return report


# What re-creates the rows of a table once its damaged parts are set aside.
_REPAIR_ALL = {
    **REPAIR,
    "models": "re-run the same `wsl zoo train SPEC` command that wrote them: it writes the model rows again "
              "(and any checkpoints they lack)",
    "layouts": "re-run the command that wrote the weights (training or import registers its layouts again)",
    "datasets": "re-run the same `wsl zoo train SPEC` command: it writes its dataset rows again",
    "landscape": "re-run `wsl zoo landscape` with the same --where and recipe",
    "evaluations": "re-run `wsl eval` with the same --where and --dataset",
    "generators": "re-run `wsl generate fit` for those generators",
    "generator_reports": "re-run `wsl generate eval` for those generators",
}


def _repair_hints(store: "ZooStore", moved: dict[str, list[Path]]) -> list[str]:
    """One line per table with quarantined parts: how many rows, of which zoos, and what re-creates them."""
    out = []
    for table, files in moved.items():
        rows, ids, zoos = 0, set(), set()
        for f in files:
            try:  # the key columns usually survive damage to the weights: say what was set aside
                cols = [c for c in ("model_id", "zoo") if c in pq.read_schema(f).names]
                t = pq.read_table(f, columns=cols) if cols else None
                if t is not None:
                    rows += t.num_rows
                    if "model_id" in cols:
                        ids.update(t.column("model_id").to_pylist())
                    if "zoo" in cols:
                        zoos.update(z for z in t.column("zoo").to_pylist() if z)
            except Exception:  # noqa: BLE001 - unreadable: we can still say which table and what to run
                continue
        if ids and store.count("models"):
            try:
                zoos.update(store.sql("SELECT DISTINCT zoo FROM models WHERE model_id IN (SELECT unnest($ids))",
                                      {"ids": sorted(i for i in ids if i)}).zoo.dropna())
            except Exception:  # noqa: BLE001 - a models part may be damaged as well
                pass
        what = f"{rows} rows" if rows else "its rows"
        of = f" of {len(ids)} models" if ids else ""
        zoo = f" (zoo {', '.join(repr(z) for z in sorted(zoos))})" if zoos else ""
        out.append(f"{table}: {len(files)} part(s) set aside, {what}{of}{zoo}; to restore them, "
                   f"{_REPAIR_ALL.get(table, 're-run the command that wrote them')} (with --store {store.path})")
    return out


def _check_duplicates(store: "ZooStore", report: CheckReport) -> None:
    import warnings

    for table in TABLES:
        with warnings.catch_warnings():  # unreadable parts are already in the report
            warnings.simplefilter("ignore", UserWarning)
            infos = [i for i in store.parts(table) if str(i.path) not in set(report.corrupt_parts)]
        if len(infos) < 1:
            continue
        dup, conflicts = _duplicates(store, table, infos)
        if dup:
            report.warnings.append(Problem(table, str(store.table_dir(table)),
                                           f"{len(dup)} exact duplicate rows (from racing writers or an interrupted "
                                           "compaction); `wsl store compact` removes them"))
        for key in conflicts[:10]:
            report.problems.append(Problem(table, str(store.table_dir(table)),
                                           f"key {key} is stored twice with different values"))


def _duplicates(store: "ZooStore", table: str, infos) -> tuple[list[tuple[str, int]], list[Any]]:
    """Rows to drop as exact duplicates [(file, row)], and keys stored with differing values.

    Column names are identifiers of the contract (quoted); the part paths are bound parameters.
    """
    spec = TABLES[table]
    key_sql = ", ".join(f'"{k}"' for k in spec.key)
    files = [str(i.path) for i in infos]
    con = store._internal()
    with store._lock:
        dup_keys = con.sql(f"SELECT {key_sql} FROM read_parquet($files, union_by_name=true) GROUP BY {key_sql} "
                           "HAVING count(*) > 1", params={"files": files}).to_arrow_table()
        if dup_keys.num_rows == 0:
            return [], []
        # xxh3 is a function of the weights, which sha256 stands for (an older copy may lack it)
        cols = [c for c in store.schema(table, infos).names if c != WEIGHTS and c not in LATER_COLUMNS]
        con.register("__dupkeys", dup_keys)
        try:
            sel = ", ".join(f'"{c}"' for c in cols)
            rows = con.sql(f"SELECT filename, file_row_number, {sel} FROM "
                           "read_parquet($files, union_by_name=true, filename=true, file_row_number=true) "
                           f"SEMI JOIN __dupkeys USING ({key_sql}) ORDER BY filename, file_row_number",
                           params={"files": files}).to_arrow_table().to_pandas()
        finally:
            con.unregister("__dupkeys")
    drop, conflicts = [], []
    for key, group in rows.groupby(list(spec.key), sort=False, dropna=False):
        values = group[cols].astype(object).where(group[cols].notna(), None)
        distinct = {tuple(_norm(v) for v in r) for r in values.itertuples(index=False)}
        if len(distinct) > 1:
            conflicts.append(key)
            continue
        for f, r in list(zip(group["filename"], group["file_row_number"]))[1:]:
            drop.append((str(f), int(r)))
    return drop, conflicts


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, (list, np.ndarray)):
        return tuple(_norm(x) for x in list(v))
    if isinstance(v, dict):
        return tuple(sorted((k, _norm(x)) for k, x in v.items()))
    return v


@dataclass
class CompactReport:
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    skipped_corrupt: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tables": self.tables, "conflicts": self.conflicts, "skipped_corrupt": self.skipped_corrupt}


def compact_store(store: "ZooStore", table: str | None = None, small_bytes: int = SMALL_BYTES,
                  row_group_bytes: int = parts.ROW_GROUP_BYTES, part_bytes: int = parts.PART_BYTES) -> CompactReport:
    report = CompactReport()
    tables = [store.spec(table).name] if table else list(TABLES)
    for t in tables:
        folder = store.table_dir(t)
        if not folder.exists():
            continue
        with store._lock, parts.table_lock(folder):
            for tmp in parts.list_temp_files(folder):  # under the lock no write is in flight: these are crash leftovers
                tmp.unlink(missing_ok=True)
            files = parts.list_parts(folder)
            infos = []
            for p in files:
                info = parts.part_info(p)
                (infos.append(info) if info.ok else report.skipped_corrupt.append(str(p)))
            before = {"parts_before": len(infos), "rows_before": sum(i.num_rows for i in infos)}
            drop, conflicts = _duplicates(store, t, infos) if infos else ([], [])
            if conflicts:
                report.conflicts[t] = len(conflicts)
            drop_by_file: dict[str, list[int]] = {}
            for f, r in drop:
                drop_by_file.setdefault(f, []).append(r)
            chosen = [i for i in infos if i.path.stat().st_size < small_bytes or str(i.path) in drop_by_file]
            damaged = [i for i in chosen if _check_part(t, i.path, verify_weights=True, fast=True)[1]]
            if damaged:  # never merged: left for `wsl store check --quarantine`; no dedup against them either
                report.skipped_corrupt += [str(i.path) for i in damaged]
                chosen = [i for i in chosen if i not in damaged]
                drop, drop_by_file = [], {}
            if len(chosen) < 2 and not drop_by_file:
                report.tables[t] = {**before, "parts_after": len(infos), "rows_after": before["rows_before"], "duplicates_dropped": 0}
                continue
            schema = store.schema(t, infos)
            for batch in _bins(chosen, part_bytes):
                _merge(folder, t, batch, schema, drop_by_file, row_group_bytes, part_bytes)
            after = [parts.part_info(p) for p in parts.list_parts(folder)]
            report.tables[t] = {**before, "parts_after": len(after), "rows_after": sum(i.num_rows for i in after if i.ok),
                                "duplicates_dropped": len(drop)}
    store.close()  # views and caches see the new parts on next use
    return report


def _bins(infos, limit: int):
    batch, acc = [], 0
    for info in infos:
        size = info.path.stat().st_size
        if batch and acc + size > limit:
            yield batch
            batch, acc = [], 0
        batch.append(info)
        acc += size
    if batch:
        yield batch


def _merge(folder: Path, table: str, batch, schema: pa.Schema, drop_by_file: dict[str, list[int]],
           row_group_bytes: int, part_bytes: int) -> None:
    spec = TABLES[table]
    tables, expect = [], Counter()
    for info in batch:
        t = _fill_xxh3(_to_schema(pq.read_table(info.path), schema))
        drops = drop_by_file.get(str(info.path))
        if drops:
            mask = np.ones(t.num_rows, bool)
            mask[drops] = False
            t = t.filter(pa.array(mask))
        tables.append(t)
        expect.update(_fingerprints(spec, t))
    merged = pa.concat_tables(tables) if tables else schema.empty_table()
    new = parts.write_parts(folder, merged, row_group_bytes=row_group_bytes, part_bytes=part_bytes)
    got = Counter()
    for p in new:
        got.update(_fingerprints(spec, pq.read_table(p, columns=[c for c in (*spec.key, "sha256") if c in schema.names])))
    if got != expect:  # pragma: no cover - a bug or a disk fault: keep the old parts, drop the new ones
        for p in new:
            p.unlink(missing_ok=True)
        raise RuntimeError(f"compaction of {table} produced different rows; old parts kept")
    for info in batch:
        os.unlink(info.path)
        parts.forget(info.path)
    parts._fsync_dir(folder)


def _fill_xxh3(t: pa.Table) -> pa.Table:
    """Rows of an older part get their xxh3 (their sha256 was checked before the merge)."""
    if "xxh3" not in t.column_names or WEIGHTS not in t.column_names or t.column("xxh3").null_count == 0:
        return t
    given = t.column("xxh3").to_pylist()
    computed = codec.xxh3_cells(t.column(WEIGHTS))
    values = [g if g is not None else c for g, c in zip(given, computed)]
    return t.set_column(t.column_names.index("xxh3"), "xxh3", pa.array(values, pa.string()))


def _to_schema(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        if f.name in t.column_names:
            c = t.column(f.name)
            cols.append(c.cast(f.type) if c.type != f.type else c)
        else:
            cols.append(pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _fingerprints(spec, t: pa.Table):
    cols = [c for c in (*spec.key, "sha256") if c in t.column_names]
    return zip(*[t.column(c).to_pylist() for c in cols])
