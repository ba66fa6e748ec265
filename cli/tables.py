"""Tables people read: results that fit the terminal, NULL shown as NULL, floats to 4 significant digits.

A query like `SELECT * FROM models` has ~20 columns; rich's default layout folds every
one of them into a 1-character-wide column at 80 columns, which reads as an empty grid.
So `print_table` lays the table out itself:

- each column gets its natural width (header and cells), capped at `MAX_CELL` characters
  only when the whole table does not fit (longer cells end in an ellipsis);
- columns are kept from the left while they fit the console width; the rest are left
  out, and a note under the table names them and says that `--format csv` or `json`
  shows everything (a table is for reading; csv/json/parquet keep every value at full
  precision);
- rows beyond `max_rows` are counted in the same note.

Cells: SQL NULL prints as `NULL` (also in string columns), a float NaN as `NaN`, floats
with 4 significant digits, binary cells as `<N bytes>`. Given an Arrow table the
difference between NULL and NaN is exact; in a pandas DataFrame a missing value (None,
NaN, NaT, pd.NA) is pandas' one missing marker and prints as NULL.

`render_text` writes the same table with every row and column (for `-o FILE.txt`).
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

MAX_CELL = 24  # widest a column may be when the table is too wide for the console
MAX_ROWS = 50


def format_cell(v: Any, missing_is_null: bool = False) -> str:
    """One value as a table shows it."""
    if v is None:
        return "NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if hasattr(v, "dtype") and hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy scalar
        v = v.item()
        if isinstance(v, bool):
            return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NULL" if missing_is_null else "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, separators=(", ", ": "))
    if missing_is_null:
        try:
            import pandas as pd

            if pd.isna(v):
                return "NULL"
        except (TypeError, ValueError):
            pass
    return str(v).replace("\r\n", " ").replace("\n", " ")


def cells(data) -> tuple[list[str], list[list[str]], int, list[bool]]:
    """(header, formatted rows, total row count, which columns are numeric) of a pyarrow Table,
    a DataFrame or a list of dicts."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        header = [str(c) for c in data.column_names]
        rows = [[format_cell(v) for v in r.values()] for r in data.to_pylist()] if data.num_columns else []
        numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                   for t in data.schema.types]
        return header, rows, data.num_rows, numeric
    import pandas as pd

    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    header = [str(c) for c in df.columns]
    rows = [[format_cell(v, missing_is_null=True) for v in r] for r in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in df.dtypes]
    return header, rows, len(df), numeric


def fit_columns(header: Sequence[str], rows: Sequence[Sequence[str]], width: int,
                max_cell: int = MAX_CELL) -> tuple[list[int], list[int]]:
    """(indices of the columns shown, their widths) so that a rich table of them fits `width`.

    A rich table with the default box and padding takes 3 characters per column plus 1.
    """
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    if sum(w + 3 for w in natural) + 1 <= width:
        return list(range(len(header))), natural
    capped = [max(1, min(w, max_cell)) for w in natural]
    keep: list[int] = []
    widths: list[int] = []
    used = 1
    for i, w in enumerate(capped):
        room = width - used - 3
        if w <= room:
            keep.append(i)
            widths.append(w)
            used += w + 3
            continue
        if room >= min(8, w) or not keep:  # the last column that fits at all, shortened
            keep.append(i)
            widths.append(max(1, room))
            used = width
        break
    if keep and used < width:  # the last kept column may use what is left (up to its natural width)
        widths[-1] = min(natural[keep[-1]], widths[-1] + width - used)
    return keep, widths


def build(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None, title: str | None = None,
          fold_last: bool = False, numeric: Sequence[bool] | None = None, plain: bool = False):
    """(rich Table, names of the columns left out). width=None: every column at its natural width.

    plain: no borders (columns separated by spaces), for text files that tools read back.
    """
    from rich import box
    from rich.table import Table

    if width is None:
        keep = list(range(len(header)))
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    elif fold_last and header:
        # key / value tables: every column is shown, the last one wraps in what is left
        keep = list(range(len(header)))
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
        if sum(w + 3 for w in widths[:-1]) > width // 2:
            widths[:-1] = [min(w, MAX_CELL) for w in widths[:-1]]
        room = width - sum(w + 3 for w in widths[:-1]) - 4
        widths[-1] = max(8, min(widths[-1], room))
    else:
        keep, widths = fit_columns(header, rows, width)
    table = Table(title=title, show_lines=False, expand=False, box=None if plain else box.HEAVY_HEAD,
                  pad_edge=not plain)
    for j, (i, w) in enumerate(zip(keep, widths)):
        wrap = fold_last and j == len(keep) - 1
        table.add_column(header[i], width=w, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis",
                         justify="right" if numeric and numeric[i] else "left")
    for r in rows:
        table.add_row(*[r[i] for i in keep])
    left_out = [header[i] for i in range(len(header)) if i not in set(keep)]
    return table, left_out


def notes(left_out: Sequence[str], shown_rows: int, total_rows: int) -> list[str]:
    """What the table does not show, and how to see it."""
    out = []
    if left_out:
        names = ", ".join(left_out)
        out.append(f"{len(left_out)} more column{'s' if len(left_out) != 1 else ''} not shown to fit "
                   f"the terminal: {names}")
    if total_rows > shown_rows:
        out.append(f"{total_rows - shown_rows} more row{'s' if total_rows - shown_rows != 1 else ''} not shown")
    if out:
        out.append("use --format csv or --format json to see every column and row (or select fewer columns)")
    return out


def print_table(data, title: str | None = None, max_rows: int = MAX_ROWS, console=None, fold_last: bool = False) -> None:
    """Print a table that fits the console (see the module docstring), then what it left out."""
    from rich.console import Console

    console = console or Console()
    header, rows, total, numeric = cells(data)
    shown = rows[:max_rows]
    table, left_out = build(header, shown, console.width, title, fold_last=fold_last, numeric=numeric)
    console.print(table)
    for line in notes(left_out, len(shown), total):
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def render_text(data, title: str | None = None) -> str:
    """The whole table (every row and column, nothing elided, no borders) as plain text.

    Columns are separated by two spaces and padded to their width, so
    `pandas.read_fwf` reads the file back; a title, when given, is the first line.
    """
    import io

    from rich.console import Console

    header, rows, _, numeric = cells(data)
    table, _ = build(header, rows, None, None, numeric=numeric, plain=True)
    width = sum(max([len(h)] + [len(r[i]) for r in rows]) + 2 for i, h in enumerate(header)) + 2
    buf = io.StringIO()
    Console(file=buf, width=max(width, 20), color_system=None, force_terminal=False, highlight=False,
            legacy_windows=False).print(table)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    return "\n".join(([title] if title else []) + lines) + "\n"
