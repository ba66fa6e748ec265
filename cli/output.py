"""Results as files and streams that are what they say: `-o FILE` writes the format its extension names.

    fmt = resolve(out, fmt)        # before any work: a clash or an unknown extension is a UserError
    ...
    write(result, out, fmt)        # atomic: a temp file in the same folder, then a rename

Formats: `table` (text for people; `.txt` / `.table`), `csv`, `json` (one JSON array of
records; `.json`), `jsonl` (one record per line; `.jsonl`), `parquet` (`.parquet`; binary
columns such as `weights` keep their bytes). `--format` and the extension must agree
(`--format json` with `.jsonl` writes JSON lines: the extension refines it); a file name
with another extension, or none, is refused, so `y.parquet` never holds JSON.

csv, json and parquet keep full precision (floats round-trip exactly); tables round to
4 significant digits. In csv and json a binary cell is written as `<N bytes>` (text
formats cannot hold raw bytes; parquet can). SQL NULL is an empty csv field and JSON null.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from store.errors import UserError

EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".txt": "table",
              ".table": "table"}
FILE_FORMATS = ("table", "csv", "json", "jsonl", "parquet")
# --format X with extension E is fine when X == EXTENSIONS[E] or (X, EXTENSIONS[E]) is here
_COMPATIBLE = {("json", "jsonl")}


def resolve(out: Optional[Path], fmt: Optional[str], allowed: Iterable[str] = FILE_FORMATS,
            stdout_allowed: Iterable[str] | None = None) -> str:
    """The format to produce: --format (default table) for stdout, the extension for `-o FILE`.

    Raises a UserError (before anything runs or is written) when the extension is unknown,
    when it and --format disagree, or when parquet is asked for without a file.
    """
    allowed = tuple(allowed)
    stdout_allowed = tuple(stdout_allowed) if stdout_allowed is not None else tuple(f for f in allowed if f != "parquet")
    if fmt is not None and fmt not in allowed:
        raise UserError(f"unknown --format {fmt!r}", f"use one of: {', '.join(allowed)}")
    if out is None:
        f = fmt or "table"
        if f == "parquet":
            raise UserError("--format parquet writes a file", "give --out FILE.parquet (-o FILE.parquet)")
        if f not in stdout_allowed:
            raise UserError(f"--format {f} is not printed to the terminal", f"give -o FILE, or use one of: "
                            f"{', '.join(stdout_allowed)}")
        return f
    ext = Path(out).suffix.lower()
    named = EXTENSIONS.get(ext)
    exts = ", ".join(e for e, f in EXTENSIONS.items() if f in allowed)
    if named is None:
        what = f"extension {ext!r}" if ext else "no extension"
        raise UserError(f"output file {out} has {what}, which names no format",
                        f"name it with one of: {exts}")
    if named not in allowed:
        raise UserError(f"output file {out} asks for {named}, which this command does not write",
                        f"name it with one of: {exts}")
    if fmt is not None and fmt != named and (fmt, named) not in _COMPATIBLE:
        raise UserError(f"--format {fmt} clashes with the output file {out}, whose extension {ext} means {named}",
                        f"drop --format (the extension decides), or name the file *.{fmt if fmt != 'table' else 'txt'}")
    parent = Path(out).parent
    if not parent.is_dir():
        raise UserError(f"folder {parent} of the output file {out} does not exist", "create it first")
    if Path(out).is_dir():
        raise UserError(f"output file {out} is a folder", "give a file name, e.g. results.parquet")
    return named


# --------------------------------------------------------------------------- conversions
def to_arrow(data):
    """A pyarrow Table from a pyarrow Table, a DataFrame, a dict of one record, or a list of records."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, pd.DataFrame):
        data = pd.DataFrame(list(data))
    return pa.Table.from_pandas(data, preserve_index=False)


def blobs_as_text(tbl):
    """Binary columns -> '<N bytes>' strings (NULL stays NULL): what csv / json / tables show."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for col in tbl.columns:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            lengths = pc.binary_length(col)
            col = pc.binary_join_element_wise("<", pc.cast(lengths, pa.string()), " bytes>", "", null_handling="emit_null")
        cols.append(col)
    return pa.Table.from_arrays(cols, names=tbl.column_names)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    return v


def json_records(tbl) -> list[dict]:
    """Records with full-precision floats; NaN/inf and NULL -> null; dates and decimals as text."""
    return [{k: _json_value(v) for k, v in r.items()} for r in tbl.to_pylist()]


def text(data, fmt: str, title: str | None = None) -> str:
    """The csv / json / jsonl / table text of a result."""
    tbl = blobs_as_text(to_arrow(data))
    if fmt == "json":
        return json.dumps(json_records(tbl), default=str) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r, default=str) + "\n" for r in json_records(tbl))
    if fmt == "csv":
        return _csv(tbl)
    if fmt == "table":
        from cli.tables import render_text

        return render_text(tbl, title)
    raise ValueError(f"no text form for {fmt!r}")


def _csv(tbl) -> str:
    """RFC 4180 csv: header, then rows; NULL is an empty field, floats as repr (they round-trip),
    nested values as JSON. Python's csv module, because pyarrow's writer quotes every header and
    has no nested types, and pandas turns integer columns with a NULL into floats."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(tbl.column_names)
    for r in tbl.to_pylist():
        w.writerow(["" if v is None else json.dumps(v, default=str) if isinstance(v, (dict, list))
                    else repr(v) if isinstance(v, float) else v for v in r.values()])
    return buf.getvalue()


# --------------------------------------------------------------------------- writing
def write(data, out: Path, fmt: str, title: str | None = None) -> int:
    """Write a result to `out` in `fmt` (from `resolve`) atomically; returns the rows written."""
    out = Path(out)
    tbl = to_arrow(data)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(tbl, tmp)
        else:
            tmp.write_text(text(tbl, fmt, title))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return tbl.num_rows


def emit_stdout(data, fmt: str, title: str | None = None) -> None:
    """Print a result: a table fitting the terminal, or csv / json / jsonl text."""
    if fmt == "table":
        from cli.tables import print_table

        print_table(blobs_as_text(to_arrow(data)), title)
        return
    sys.stdout.write(text(data, fmt, title))
