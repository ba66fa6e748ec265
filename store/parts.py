"""Immutable Parquet parts: naming, listing, crash-safe writing, per-table locks.

A table is a folder of parts named `part-<time_ns>-<pid>-<random>.parquet`.
A part is written to a hidden temporary file in the same folder
(`.tmp-<name>`), flushed and fsynced, then renamed into place with
`os.replace` (atomic on POSIX), and the folder is fsynced. Readers list only
`part-*.parquet`, so a crash at any moment leaves either the whole part or no
part visible. Names are unique per process and call, so several processes
(Ray workers, say) can append to one store at once.

Row groups are cut by bytes (<= 64 MB) and a part by bytes (<= 500 MB): the
Hub's dataset viewer refuses huge row groups, and partial reads stay cheap.
"""
from __future__ import annotations

import errno
import fcntl
import inspect
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_BYTES = 64 * 2**20
PART_BYTES = 500 * 2**20
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
WEIGHTS = "weights"


def new_part_name() -> str:
    return f"{PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(6)}{PART_SUFFIX}"


def is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def list_parts(folder: Path) -> list[Path]:
    """Visible parts of a table, oldest first (names sort by creation time)."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file() and is_part(e.name)]
    except FileNotFoundError:
        return []
    return [folder / n for n in sorted(names)]


def list_temp_files(folder: Path) -> list[Path]:
    try:
        return sorted(folder / e.name for e in os.scandir(folder) if e.name.startswith(TMP_PREFIX))
    except FileNotFoundError:
        return []


# ----- footer cache -----------------------------------------------------------
@dataclass
class PartInfo:
    path: Path
    num_rows: int = 0
    schema: pa.Schema | None = None
    row_group_rows: list[int] = field(default_factory=list)
    error: str | None = None  # why the footer could not be read

    @property
    def ok(self) -> bool:
        return self.error is None


_FOOTERS: dict[tuple[str, int, int], PartInfo] = {}


def part_info(path: Path) -> PartInfo:
    """Footer of a part (schema, rows, row groups), cached by (path, size, mtime): parts never change."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return PartInfo(path, error="file vanished (compacted by another process?)")
    key = (str(path), st.st_size, st.st_mtime_ns)
    hit = _FOOTERS.get(key)
    if hit is not None:
        return hit
    try:
        md = pq.read_metadata(path)
        info = PartInfo(path, md.num_rows, md.schema.to_arrow_schema(),
                        [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    except Exception as e:  # noqa: BLE001 - any failure to read a footer means "corrupt part"
        info = PartInfo(path, error=f"{type(e).__name__}: {e}")
    if len(_FOOTERS) > 100_000:
        _FOOTERS.clear()
    _FOOTERS[key] = info
    return info


def forget(path: Path) -> None:
    for k in [k for k in _FOOTERS if k[0] == str(path)]:
        del _FOOTERS[k]


# ----- locking ------------------------------------------------------------------
@contextmanager
def table_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on a table folder (flock), held while keys are checked and a part lands.

    Serialises appends from processes on one machine, so two writers of the
    same key cannot both pass the duplicate check. Where flock is not
    supported the lock is skipped; racing writers then leave exact duplicates,
    which `compact` removes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # pragma: no cover - e.g. some network filesystems
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ----- writing --------------------------------------------------------------------
def row_bytes(table: pa.Table) -> np.ndarray:
    """Approximate bytes each row takes: its weights cell plus an even share of the other columns."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64)
    other = sum(table.column(c).nbytes for c in table.column_names if c != WEIGHTS)
    sizes = np.full(n, max(1, other // n), dtype=np.int64)
    if WEIGHTS in table.column_names:
        col = table.column(WEIGHTS).combine_chunks()
        if pa.types.is_large_binary(col.type) or pa.types.is_binary(col.type):
            from store.codec import row_sizes

            sizes += row_sizes(col)
    return sizes


def split_by_bytes(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Cut rows [0, n) into consecutive [start, stop) ranges whose byte sum stays <= limit (>= 1 row each)."""
    out = []
    start, acc = 0, 0
    for i, s in enumerate(sizes.tolist()):
        if i > start and acc + s > limit:
            out.append((start, i))
            start, acc = i, 0
        acc += s
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def writer_options(schema: pa.Schema) -> dict:
    """The one Parquet writer policy: the store's parts and the Hub's shards (store/hub/shards.py) both use it.

    - binary columns (the weights, any other BLOB): PLAIN, no dictionary, no
      compression, no statistics. Weights are noise to a compressor, and this is the
      layout store/fastread.py reads with one copy per cell;
    - every other column: dictionary + zstd, with statistics (what filters prune on);
    - a page index and page checksums (readers skip pages by min/max; a flipped bit
      is an error, not a wrong value), the Arrow schema stored (types round-trip);
    - content-defined chunking where the installed pyarrow has it: page boundaries
      follow the content, so a grown zoo re-published (or a store uploaded as it is)
      re-uploads only the pages that changed (the Hub's Xet storage deduplicates
      pages).
    Row groups and files are cut by bytes by the callers (ROW_GROUP_BYTES, PART_BYTES).
    """
    names = schema.names
    binary = [c for c in names if pa.types.is_binary(schema.field(c).type) or pa.types.is_large_binary(schema.field(c).type)]
    other = [c for c in names if c not in binary]
    opts = dict(
        compression={c: ("none" if c in binary else "zstd") for c in names},
        use_dictionary=other,
        column_encoding={c: "PLAIN" for c in binary} or None,
        write_statistics=other,
        write_page_index=True,
        write_page_checksum=True,
        store_schema=True,
    )
    if _HAS_CDC:
        opts["use_content_defined_chunking"] = True
    return opts


_HAS_CDC = "use_content_defined_chunking" in inspect.signature(pq.ParquetWriter.__init__).parameters


def _weights_required(table: pa.Table) -> pa.Table:
    """Mark `weights` REQUIRED (no definition levels), the layout store/fastread.py reads without decoding."""
    if WEIGHTS not in table.column_names:
        return table
    i = table.schema.get_field_index(WEIGHTS)
    f = table.schema.field(i)
    if not f.nullable or table.column(i).null_count:
        return table
    return table.cast(table.schema.set(i, f.with_nullable(False)))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(fd)


# Test hook: called with the temp path after it is fully written and fsynced,
# just before the rename (a crash there must leave no visible rows).
_BEFORE_RENAME = None


def write_parts(folder: Path, table: pa.Table, row_group_bytes: int = ROW_GROUP_BYTES,
                part_bytes: int = PART_BYTES) -> list[Path]:
    """Write `table` as one or more new parts (each <= part_bytes, row groups <= row_group_bytes).

    All temporary files are written and fsynced first, then renamed in order,
    so a failure while writing exposes nothing; only a crash between two
    renames of a > 500 MB append exposes some of its parts (each whole, and a
    re-run of the append fills in the rest: appends are idempotent).
    """
    folder.mkdir(parents=True, exist_ok=True)
    table = _weights_required(table)
    sizes = row_bytes(table)
    pieces = split_by_bytes(sizes, part_bytes) if table.num_rows else [(0, 0)]
    temps: list[tuple[Path, Path]] = []
    try:
        for start, stop in pieces:
            name = new_part_name()
            tmp = folder / f"{TMP_PREFIX}{name}"
            sub = table.slice(start, stop - start)
            groups = split_by_bytes(sizes[start:stop], row_group_bytes) if stop > start else [(0, 0)]
            with open(tmp, "wb") as fh:
                temps.append((tmp, folder / name))
                with pq.ParquetWriter(fh, sub.schema, **writer_options(sub.schema)) as w:
                    for gs, ge in groups:
                        chunk = sub.slice(gs, ge - gs)
                        w.write_table(chunk, row_group_size=max(1, chunk.num_rows))
                fh.flush()
                os.fsync(fh.fileno())
        if _BEFORE_RENAME is not None:
            for tmp, _ in temps:
                _BEFORE_RENAME(tmp)
        for tmp, final in temps:
            os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return [final for _, final in temps]


def replace_parts(folder: Path, table: pa.Table, old: list[Path], **kw) -> list[Path]:
    """Atomically-enough swap `old` parts for new parts holding `table` (used by compaction).

    New parts are renamed into place first, then the old ones removed, so at
    every moment each row is visible at least once; a crash in between leaves
    exact duplicates, which the next compaction removes (and which key
    queries see as identical rows, never as a conflict).
    """
    new = write_parts(folder, table, **kw)
    for p in old:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        forget(p)
    _fsync_dir(folder)
    return new
