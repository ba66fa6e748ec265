"""Selected weight cells -> one [n, P] tensor, every cell checked on the way.

Why a module of its own: a read is only as good as its check. What is
verified, by default, on every `ZooStore.weights` / `iter_weights` /
`WeightLoader` read:

- fast path (our own parts, store/fastread.py): each cell's 4-byte length
  prefix, and its bytes against the `xxh3` checksum stored beside it at write
  time, hashed right after the copy while the cell is still in cache;
- slow path (parts in another layout, and any cell the fast path rejects):
  pyarrow decodes the row group with the Parquet page CRCs checked
  (`page_checksum_verification`), then the same per-cell checksum;
- rows of older parts that have no `xxh3` value fall back to their sha256;
  `verify="sha256"` recomputes the sha256 of every row as well (slow; what
  `wsl store check` does), `verify=False` checks nothing but the layout (only
  for measuring what verification costs: benchmarks/store_read.py).

A cell that fails is not returned as data: the caller (store.ZooStore._fetch)
raises `damaged_error` naming the part and the fix, or, with skip_damaged,
leaves the row out and reports it. Which check failed is kept per row, so
the message says whether a page checksum, a length prefix or a cell checksum
caught it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from store import codec, fastread, pool
from store.errors import UserError

WEIGHTS = "weights"
_READ_THREADS = 2
_PARALLEL_BYTES = 16 * 2**20


class DamagedRowsSkipped(UserWarning):
    """Warned when a read with skip_damaged=True left damaged rows out (commands report them themselves)."""


@dataclass(frozen=True)
class Damaged:
    """One row a read refused: which table and key, in which part file, and what check failed."""

    table: str
    key: str
    part: str
    why: str

    def as_dict(self) -> dict:
        return {"table": self.table, "key": self.key, "part": self.part, "why": self.why}


# What re-creates the rows of each weights table once the damaged part is quarantined.
REPAIR = {
    "checkpoints": "re-run the same `wsl zoo train SPEC` command that wrote them: it rewrites exactly the missing "
                   "checkpoints",
    "optimizer_states": "re-run the same `wsl zoo train SPEC` command that wrote them: it rewrites exactly the missing "
                        "optimizer states",
    "samples": "re-run the `wsl generate sample` / `wsl generate eval` command that wrote them",
}


def damaged_error(table: str, damaged: list[Damaged]) -> UserError:
    """The error a read raises on damaged rows: what, where, and the fix."""
    parts = sorted({d.part for d in damaged})
    keys = [d.key for d in damaged[:5]]
    more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
    return UserError(
        f"damaged data: {len(damaged)} {table} row(s) fail their integrity check ({damaged[0].why}) in part "
        f"{', '.join(parts[:3])}{more}; rows {keys}{' ...' if len(damaged) > 5 else ''}",
        f"run `wsl store check --quarantine` to set the damaged part aside, then {REPAIR.get(table, 're-run the command that wrote it')}; "
        "or pass --skip-damaged (skip_damaged=True) to read the other rows")


def skipped_message(damaged: list[Damaged]) -> str:
    """One line for commands that skipped damaged rows on request."""
    parts = sorted({d.part for d in damaged})
    tables = sorted({d.table for d in damaged})
    return (f"skipped {len(damaged)} damaged {'/'.join(tables)} row(s) in {len(parts)} part(s) ({', '.join(parts[:3])}"
            f"{' ...' if len(parts) > 3 else ''}); results cover the other rows. Repair: `wsl store check --quarantine`, "
            f"then {REPAIR.get(tables[0], 're-run the command that wrote them')}")


def read_weights(files: np.ndarray, rows: np.ndarray, dtype: str, p: int, xxh3: list, sha256: list,
                 verify: bool | str = True) -> tuple[torch.Tensor, dict[int, tuple[str, str]]]:
    """Cells (file, row number) -> ([n, P] tensor of `dtype`, {output row: (part, why) for rows that failed}).

    Output row i = cell i. xxh3 / sha256: the stored digests of each cell
    (None where a part has none). Rows that failed hold undefined values: the
    caller must not hand them out.
    """
    if verify not in (True, False, "sha256"):
        raise UserError(f"verify={verify!r}", "pass verify=True (default), 'sha256' or False")
    n = len(rows)
    row_bytes = p * codec.ITEMSIZE[dtype]
    # memory from the pool (store/pool.py) is already mapped; numpy allocates new big buffers with
    # transparent huge pages, whose first touch is much cheaper than torch.empty's
    buf = pool.take(n * row_bytes)
    out_np = np.ndarray((n, row_bytes), dtype=np.uint8, buffer=buf)
    flat = memoryview(buf)[: n * row_bytes]
    expect = np.array(xxh3, dtype=object) if verify else None
    order = np.argsort(files, kind="stable")
    sorted_files = files[order]
    bounds = np.nonzero(np.r_[True, sorted_files[1:] != sorted_files[:-1]])[0].tolist() + [n]
    jobs = [(str(sorted_files[a]), rows[order[a:b]], order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    threads = min(_READ_THREADS, os.cpu_count() or 1)
    if threads > 1 and n * row_bytes >= _PARALLEL_BYTES:
        # preadv releases the GIL: split the cells so each thread copies (and first-touches) half the output
        split = []
        for path, file_rows, out_rows in jobs:
            step = max(1, -(-len(file_rows) // threads))
            split += [(path, file_rows[i:i + step], out_rows[i:i + step]) for i in range(0, len(file_rows), step)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as executor:
            slow = list(executor.map(lambda j: _read_fast(*j, flat, row_bytes, expect), split))
    else:
        slow = [_read_fast(*j, flat, row_bytes, expect) for j in jobs]
    bad: dict[int, tuple[str, str]] = {}
    for job in slow:  # cells the fast path could not read, or that failed its checks: pyarrow, page CRCs on
        if job is not None:
            bad.update(_read_with_arrow(*job, out_np, row_bytes, expect))
    if verify:
        idx = range(n) if verify == "sha256" else [i for i in range(n) if xxh3[i] is None]
        for i in idx:
            if i not in bad and hashlib.sha256(out_np[i]).hexdigest() != sha256[i]:
                bad[i] = (str(files[i]), "sha256 mismatch")
    del out_np, flat
    view = pool.array(buf, (n, p), {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}[dtype])
    t = torch.from_numpy(view)
    return (t.view(torch.bfloat16) if dtype == "bfloat16" else t), bad


def _read_fast(path: str, file_rows: np.ndarray, out_rows: np.ndarray, flat: memoryview, row_bytes: int,
               expect: np.ndarray | None):
    """Read what the fast path can; returns the (path, file_rows, out_rows) left for the slow path, or None."""
    index = fastread.cell_index(path)
    if index is None:
        return path, file_rows, out_rows
    ok = fastread.read_cells(path, index, file_rows, out_rows, flat, row_bytes,
                             None if expect is None else expect[out_rows])
    if ok is None:
        return path, file_rows, out_rows
    if ok.all():
        return None
    return path, file_rows[~ok], out_rows[~ok]


def _read_with_arrow(path: str, file_rows: np.ndarray, out_rows: np.ndarray, out_np: np.ndarray, row_bytes: int,
                     expect: np.ndarray | None) -> dict[int, tuple[str, str]]:
    """Slow path: decode the row groups that hold the rows (page CRCs checked); returns the rows that failed."""
    import pyarrow.parquet as pq

    bad: dict[int, tuple[str, str]] = {}
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=bool(expect is not None))
        rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    except Exception as e:  # noqa: BLE001 - any failure to open the part: every wanted row is unreadable
        return {int(o): (path, f"unreadable part ({type(e).__name__})") for o in out_rows.tolist()}
    bounds = np.cumsum([0] + rg_rows)
    rg_of = np.searchsorted(bounds, file_rows, side="right") - 1
    for rg in np.unique(rg_of).tolist():
        m = rg_of == rg
        want = list(zip((file_rows[m] - bounds[rg]).tolist(), out_rows[m].tolist()))
        note = ""
        try:
            col = pf.read_row_group(rg, columns=[WEIGHTS]).column(0).combine_chunks()
        except Exception as e:  # noqa: BLE001 - a damaged page: read it again unchecked to tell which cells
            note = f"page checksum: {type(e).__name__}; "
            try:
                col = pq.ParquetFile(path).read_row_group(rg, columns=[WEIGHTS]).column(0).combine_chunks()
            except Exception as e2:  # noqa: BLE001
                bad.update({o: (path, f"{note}unreadable page ({type(e2).__name__})") for _, o in want})
                continue
        data, offs = codec.chunk_bytes(col)
        for r, o in want:
            cell = data[offs[r]:offs[r + 1]] if r + 1 < len(offs) else b""
            if len(cell) != row_bytes:
                bad[o] = (path, f"{note}cell of {len(cell)} bytes, expected {row_bytes}")
            elif expect is not None and expect[o] is not None and codec.xxh3(cell) != expect[o]:
                bad[o] = (path, f"{note}xxh3 checksum mismatch")
            else:  # (a row without xxh3 in a page that failed its CRC is judged by its sha256 next)
                out_np[o] = cell
    return bad
