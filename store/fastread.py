"""Read selected weight cells straight from the part files into the output tensor.

Why: on small machines the cost of reading weights is dominated by copies
and by touching freshly allocated memory, not by Parquet decoding. A generic
reader decodes a whole row group into an Arrow buffer (one copy, one fresh
allocation), and turning that into [N, P] costs another. We write the
`weights` column in the one layout where no decoding is needed at all:
REQUIRED (no definition levels), PLAIN encoding (each value is a 4-byte
little-endian length then the bytes), no dictionary, no compression. Then
the file offset of every cell follows from the page headers and the cell
sizes (num_params x itemsize, from the metadata columns), and `os.preadv`
copies each selected cell from the page cache into its row of the output,
reading its 4-byte length prefix alongside as a check, and hashes it
(XXH3-64) against the checksum stored beside it while it is still in cache.

Everything is verified before it is trusted: every data page must be PLAIN,
uncompressed and level-free, and the cell sizes must add up to exactly each
page's size; each cell's length prefix must match. A part that does not
qualify (written by another tool, say) returns None from `cell_index`, and
the caller falls back to the Arrow reader. The page headers are Thrift
compact structs, parsed by the small reader below (only what a PageHeader
needs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from store import codec

WEIGHTS = "weights"

# Thrift compact protocol type ids
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_PLAIN = 0
_DATA_PAGE, _INDEX_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 1, 2, 3


class _Bad(Exception):
    """The part is not in the layout the fast path reads."""


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _Bad("page header runs past the buffer")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise _Bad("bad varint")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, ttype: int) -> None:
        if ttype in (_TRUE, _FALSE):
            return
        if ttype == _BYTE:
            self.pos += 1
        elif ttype in (_I16, _I32, _I64):
            self.varint()
        elif ttype == _DOUBLE:
            self.pos += 8
        elif ttype == _BINARY:
            self.pos += self.varint()
        elif ttype in (_LIST, _SET):
            head = self.byte()
            size, etype = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                if etype in (_TRUE, _FALSE):
                    self.pos += 1  # bools inside containers take one byte
                else:
                    self.skip(etype)
        elif ttype == _MAP:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif ttype == _STRUCT:
            self.struct(lambda fid, t: self.skip(t))
        else:
            raise _Bad(f"unknown thrift type {ttype}")

    def struct(self, on_field) -> None:
        last = 0
        while True:
            head = self.byte()
            ttype = head & 0x0F
            if ttype == _STOP:
                return
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            on_field(fid, ttype)


def _int_field(r: _Reader, ttype: int) -> int:
    if ttype not in (_I32, _I64, _I16):
        raise _Bad("unexpected field type")
    return r.zigzag()


def parse_page_header(buf: bytes) -> dict:
    """The PageHeader fields the fast path needs; 'header_len' is where the page body starts."""
    r = _Reader(buf)
    out: dict = {}

    def data_page(fid, t):  # DataPageHeader: 1 num_values, 2 encoding
        if fid == 1:
            out["num_values"] = _int_field(r, t)
        elif fid == 2:
            out["encoding"] = _int_field(r, t)
        else:
            r.skip(t)

    def data_page_v2(fid, t):  # 1 num_values, 2 num_nulls, 3 num_rows, 4 encoding, 5 def len, 6 rep len, 7 is_compressed
        if fid in (1, 2, 3, 4, 5, 6):
            out[{1: "num_values", 2: "num_nulls", 3: "num_rows", 4: "encoding", 5: "def_len", 6: "rep_len"}[fid]] = _int_field(r, t)
        elif fid == 7:
            out["is_compressed"] = t == _TRUE
        else:
            r.skip(t)

    def header(fid, t):
        if fid == 1:
            out["type"] = _int_field(r, t)
        elif fid == 2:
            out["uncompressed"] = _int_field(r, t)
        elif fid == 3:
            out["compressed"] = _int_field(r, t)
        elif fid == 5 and t == _STRUCT:
            r.struct(data_page)
        elif fid == 8 and t == _STRUCT:
            r.struct(data_page_v2)
        else:
            r.skip(t)

    r.struct(header)
    out["header_len"] = r.pos
    return out


@dataclass
class CellIndex:
    """Where each row's weights cell lies in a part file."""
    offsets: np.ndarray  # int64 file offset of each row's bytes (after its 4-byte length)
    sizes: np.ndarray  # int64 bytes of each row


_CACHE: dict[tuple[str, int, int], CellIndex | None] = {}


def cell_index(path: str) -> CellIndex | None:
    """The cell index of a part (cached: parts never change), or None if the fast path cannot read it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        if len(_CACHE) > 100_000:
            _CACHE.clear()
        try:
            _CACHE[key] = _build(path)
        except (_Bad, OSError, ValueError, KeyError, IndexError):
            _CACHE[key] = None
    return _CACHE[key]


def _build(path: str) -> CellIndex:
    pf = pq.ParquetFile(path)
    md = pf.metadata
    names = md.schema.names
    if WEIGHTS not in names:
        raise _Bad("no weights column")
    col_idx = names.index(WEIGHTS)
    if md.schema.column(col_idx).max_definition_level != 0 or md.schema.column(col_idx).max_repetition_level != 0:
        raise _Bad("weights column is nullable or repeated")
    meta = pf.read(columns=["num_params", "dtype"])
    nparams = meta.column("num_params").to_numpy(zero_copy_only=False).astype(np.int64)
    item = np.array([codec.ITEMSIZE.get(d, 0) for d in meta.column("dtype").to_pylist()], dtype=np.int64)
    if (item == 0).any():
        raise _Bad("unknown dtype")
    sizes = nparams * item
    offsets = np.empty(md.num_rows, dtype=np.int64)
    row = 0
    with open(path, "rb") as fh:
        fd = fh.fileno()
        for rg in range(md.num_row_groups):
            cc = md.row_group(rg).column(col_idx)
            if cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page:
                raise _Bad("compressed or dictionary-encoded weights")
            pos = cc.data_page_offset
            end = pos + cc.total_compressed_size
            rows_left = md.row_group(rg).num_rows
            while rows_left > 0:
                if pos >= end:
                    raise _Bad("ran out of pages")
                head = os.pread(fd, 256, pos)
                h = parse_page_header(head)
                body = pos + h["header_len"]
                if h["type"] == _DATA_PAGE:
                    pass
                elif h["type"] == _DATA_PAGE_V2:
                    if h.get("def_len", 0) or h.get("rep_len", 0) or h.get("is_compressed", True) or h.get("num_nulls", 0):
                        raise _Bad("v2 page with levels or compression")
                else:
                    raise _Bad(f"page type {h['type']}")
                n = h["num_values"]
                if h.get("encoding") != _PLAIN or h["compressed"] != h["uncompressed"] or n <= 0 or n > rows_left:
                    raise _Bad("not a plain uncompressed page")
                s = sizes[row:row + n]
                if int((s + 4).sum()) != h["compressed"]:
                    raise _Bad("cell sizes do not add up to the page size")
                starts = np.cumsum(s + 4) - s  # after each cell's 4-byte length
                offsets[row:row + n] = body + starts
                row += n
                rows_left -= n
                pos = body + h["compressed"]
    if row != md.num_rows:
        raise _Bad("row count mismatch")
    return CellIndex(offsets, sizes)


# Cells copied per preadv call: about 1 MB, so each cell is still in the CPU cache when it is hashed.
_RUN_BYTES = 1 << 20


def read_cells(path: str, index: CellIndex, rows: np.ndarray, out_rows: np.ndarray, out_flat: memoryview,
               row_bytes: int, expect: np.ndarray | None = None) -> np.ndarray | None:
    """Copy cells `rows` of the part into rows `out_rows` of out_flat (bytes of an [N, P] tensor).

    Returns `ok`, one bool per given row (in the order given): the cell was
    read whole, its 4-byte length prefix agrees, and, where `expect[i]` is a
    hex XXH3-64 (not None), the copied bytes hash to it. Each cell is hashed
    right after its run is copied, while it is still in the CPU cache, which
    is what keeps verification cheap. None if a cell has another size than
    row_bytes (the caller then reads those rows another way).

    Runs of cells that are adjacent in the file go in one preadv call.
    """
    n = len(rows)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return ok
    order = np.argsort(index.offsets[rows], kind="stable")
    rows_s, out_s = rows[order], out_rows[order]
    offs = index.offsets[rows_s]
    sizes = index.sizes[rows_s]
    if not np.all(sizes == row_bytes):
        return None
    want = None if expect is None else [expect[i] for i in order.tolist()]
    prefixes = np.zeros(n, dtype="<u4")
    pv = memoryview(prefixes).cast("B")
    offs_l, out_l = offs.tolist(), out_s.tolist()
    stride = row_bytes + 4
    run_cap = max(1, min(512, _RUN_BYTES // stride))  # 512: two iovecs a cell, IOV_MAX is 1024
    got = np.zeros(n, dtype=bool)
    fd = os.open(path, os.O_RDONLY)
    try:
        i = 0
        while i < n:
            # a cell continues the run if it starts right after the previous cell and the next length prefix
            j = i + 1
            while j < n and j - i < run_cap and offs_l[j] == offs_l[j - 1] + stride:
                j += 1
            bufs = []
            for k in range(i, j):
                r = out_l[k] * row_bytes
                bufs.append(pv[4 * k:4 * k + 4])
                bufs.append(out_flat[r:r + row_bytes])
            if os.preadv(fd, bufs, offs_l[i] - 4) == (j - i) * stride:
                got[i:j] = True
                if want is not None:
                    for k in range(i, j):
                        h = want[k]
                        if h is not None and codec.xxh3(bufs[2 * (k - i) + 1]) != h:  # the cell just copied
                            got[k] = False
            i = j
    finally:
        os.close(fd)
    got &= prefixes.astype(np.int64) == sizes
    ok[order] = got
    return ok
