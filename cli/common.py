"""Pieces every `wsl` subcommand shares: the store option, output formats, progress bars."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from store.errors import UserError

DEFAULT_STORE = "./wsl-store"
FORMATS = ("table", "csv", "json", "parquet")

# Set by the root callback from the global `wsl --store DIR`; a command's own --store wins.
_GLOBAL_STORE: Optional[str] = None


def set_global_store(path: Optional[str]) -> None:
    global _GLOBAL_STORE
    _GLOBAL_STORE = path


def store_path(store: Optional[Path] = None) -> Path:
    """The store a command uses: its --store, else the global --store, else $WSL_STORE, else ./wsl-store."""
    if store is not None:
        return Path(store)
    if _GLOBAL_STORE:
        return Path(_GLOBAL_STORE)
    return Path(os.environ.get("WSL_STORE") or DEFAULT_STORE)


StoreOption = typer.Option(None, "--store", help="Store directory (default: global --store, $WSL_STORE, ./wsl-store).")
FormatOption = typer.Option("table", "--format", "-f", help="Output format: table, csv, json (parquet where a command says so).")


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt not in allowed:
        raise UserError(f"unknown --format {fmt!r}", f"use one of: {', '.join(allowed)}")
    return fmt


def emit(data: Any, fmt: str = "table", title: str | None = None, out: Optional[Path] = None) -> None:
    """Print a DataFrame or a dict/list as a rich table, CSV or JSON; parquet goes to `out`."""
    import pandas as pd

    check_format(fmt)
    df = data if isinstance(data, pd.DataFrame) else None
    if fmt == "json":
        if df is not None:
            sys.stdout.write(df.to_json(orient="records", default_handler=str) + "\n")
        else:
            sys.stdout.write(json.dumps(data, default=_json_default) + "\n")
        return
    if df is None and isinstance(data, dict) and fmt == "table":
        # one record reads better as a key / value table
        df = pd.DataFrame({"field": list(data), "value": [_cell(v) for v in data.values()]})
    if df is None:
        df = pd.DataFrame([data] if isinstance(data, dict) else data)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "parquet":
        if out is None:
            raise UserError("--format parquet writes a file", "give --out FILE.parquet")
        tmp = Path(str(out) + ".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
        typer.echo(f"wrote {len(df)} rows to {out}")
    else:
        print_table(df, title)


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy/torch scalars -> Python numbers, recursively, so JSON stays valid."""
    import math

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return json_safe(obj.item())
        except (ValueError, AttributeError, TypeError):
            return obj
    return obj


def print_summary(summary: dict[str, Any], title: str) -> None:
    """One summary dict as a key / value table; nested values shown as JSON."""
    import pandas as pd

    flat = {k: (json.dumps(json_safe(v)) if isinstance(v, (dict, list)) else json_safe(v)) for k, v in summary.items()}
    print_table(pd.DataFrame({"": list(flat), "value": list(flat.values())}), title)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, bytes):
        return f"<{len(o)} bytes>"
    return str(o)


def print_table(df, title: str | None = None, max_rows: int = 50) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(str(c), overflow="fold")
    for _, row in df.head(max_rows).iterrows():
        table.add_row(*[_cell(v) for v in row.tolist()])
    console = Console()
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows (use --format csv or json for all)")


def _cell(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "models") -> Iterator[Any]:
    """A rich progress bar on stderr; yields an `update(advance=1, **fields)` callable.

    The bar appears at the first update, so a command that fails its input checks
    before any work prints its one error line and nothing else.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{unit}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    p = Progress(*columns, console=Console(stderr=True), transient=False)
    task = p.add_task(description, total=total, info="")

    def update(advance: float = 1, total: int | None = None, info: str | None = None) -> None:
        if not p.live.is_started:
            p.start()
        kw: dict[str, Any] = {"advance": advance}
        if total is not None:
            kw["total"] = total
        if info is not None:
            kw["info"] = info
        p.update(task, **kw)

    try:
        yield update
    finally:
        if p.live.is_started:
            p.stop()
