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
# for commands that also take -o FILE: no default, so a --format that clashes with the file's extension is caught
OutFormatOption = typer.Option(None, "--format", "-f", help="Output format: table (default), csv, json, jsonl, "
                               "parquet (parquet needs -o). With -o the file's extension names the format; "
                               "a --format that disagrees is an error.")
OutOption = typer.Option(None, "--out", "-o", help="Write the results to FILE instead of the terminal, in the format "
                         "its extension names: .parquet, .csv, .json, .jsonl, .txt (or .table).")
WHERE_HELP = ("SQL condition over the pool models FULL JOIN checkpoints USING (model_id): any column of models "
              "(zoo, dataset, width, lr, seed, status, ...) or checkpoints (epoch, test_acc, ...), bare or qualified "
              "(models.seed, checkpoints.epoch), e.g. \"width = 32 AND epoch = epochs\"; or a whole SELECT returning "
              "model_id")
WHERE_SEE = "See docs/store.md, \"Filtering with --where\"."


def where_option(default_note: str = "default: all") -> Any:
    """The --where/-w option with the shared help text (docs/store.md documents the pool)."""
    return typer.Option(None, "--where", "-w", help=f"{WHERE_HELP} ({default_note}). {WHERE_SEE}")


ARCH_EXAMPLE = '\'{"name": "mlp", "width": 32}\''


def arch_config(arch: str, label: str = "--arch") -> dict:
    """An architecture config given as JSON on the command line (`--arch`, `wsl info layout`); else a UserError."""
    try:
        cfg = json.loads(arch)
    except json.JSONDecodeError as e:
        raise UserError(f"{label} is not valid JSON ({e.msg}): {arch!r}", f"write it as JSON, e.g. {ARCH_EXAMPLE}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{label} {arch!r} is not a JSON object", f"write it as JSON, e.g. {ARCH_EXAMPLE}")
    return cfg


def name_list(items, limit: int = 4) -> str:
    """'a, b, c, d and 2 more': a list in a message whose count and names agree."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt not in allowed:
        raise UserError(f"unknown --format {fmt!r}", f"use one of: {', '.join(allowed)}")
    return fmt


def emit(data: Any, fmt: str = "table", title: str | None = None, out: Optional[Path] = None) -> None:
    """Print a DataFrame or a dict/list as a table, CSV or JSON; with `out`, write it there (cli/output.py).

    JSON keeps full precision (NaN/inf become null); tables fit the terminal (cli/tables.py).
    """
    import pandas as pd

    from cli import output

    if out is not None:
        fmt = output.resolve(out, None if fmt == "table" else fmt)
        n = output.write(pd.DataFrame([data]) if isinstance(data, dict) else data, out, fmt, title)
        typer.echo(f"wrote {n} rows to {out}")
        return
    check_format(fmt, FORMATS + ("jsonl",))
    df = data if isinstance(data, pd.DataFrame) else None
    if fmt in ("json", "jsonl"):
        records = df.to_dict(orient="records") if df is not None else data
        if fmt == "jsonl" and isinstance(records, list):
            sys.stdout.write("".join(json.dumps(json_safe(r), default=_json_default) + "\n" for r in records))
        else:
            sys.stdout.write(json.dumps(json_safe(records), default=_json_default) + "\n")
        return
    if df is None and isinstance(data, dict) and fmt == "table":
        # one record reads better as a key / value table
        print_summary(data, title)
        return
    if df is None:
        df = pd.DataFrame([data] if isinstance(data, dict) else data)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "parquet":
        raise UserError("--format parquet writes a file", "give --out FILE.parquet")
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


def print_summary(summary: dict[str, Any], title: str | None) -> None:
    """One summary dict as a key / value table; nested values shown as JSON, long values wrapped."""
    import pandas as pd

    flat = {k: (json.dumps(json_safe(v), default=_json_default) if isinstance(v, (dict, list)) else json_safe(v))
            for k, v in summary.items()}
    values = pd.Series(list(flat.values()), dtype=object)
    print_table(pd.DataFrame({"": list(flat), "value": values}), title, fold_last=True)


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


def print_table(df, title: str | None = None, max_rows: int = 50, fold_last: bool = False) -> None:
    """A table that fits the terminal: columns that do not fit are named under it (cli/tables.py)."""
    from cli.tables import print_table as _print

    _print(df, title, max_rows=max_rows, fold_last=fold_last)


def make_progress(description: str, total: int | None = None, unit: str = "models", console=None):
    """(rich Progress, task id) laid out so that count and ETA survive an 80-column terminal.

    The columns are description (at most 24 characters), a bar that shrinks first, done/total,
    the unit, elapsed, remaining, and last the command's own info text, which takes what is
    left and ends in an ellipsis when it does not fit.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.table import Column

    fixed = dict(no_wrap=True)
    columns = [TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=24)),
               BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6, max_width=30)),
               MofNCompleteColumn(table_column=Column(**fixed)),
               TextColumn(unit.replace("[", "\\["), table_column=Column(**fixed)),
               TimeElapsedColumn(table_column=Column(**fixed)),
               TextColumn("ETA", table_column=Column(**fixed)),
               TimeRemainingColumn(table_column=Column(**fixed)),
               TextColumn("{task.fields[info]}", markup=False,
                          table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis", min_width=0))]
    p = Progress(*columns, console=console or Console(stderr=True), transient=False, expand=True)
    task = p.add_task(description, total=total, info="")
    return p, task


@contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "models") -> Iterator[Any]:
    """A rich progress bar on stderr; yields an `update(advance=1, total=None, info=None)` callable.

    The bar appears at the first update, so a command that fails its input checks
    before any work prints its one error line and nothing else.
    """
    p, task = make_progress(description, total, unit)

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
