"""`wsl query` and `wsl store ...`: SQL over the zoo store, and its upkeep.

    wsl query "SELECT phase, count(*) FROM landscape GROUP BY phase" [--format json]
    wsl store tables | check | compact | import DIR | export CHECKPOINT_ID OUT.safetensors
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli import common
from store.errors import UserError

store_app = typer.Typer(help="Inspect and maintain the zoo store: tables, check, compact, import, export.",
                        no_args_is_help=True)


def _open(store: Optional[Path]):
    from store.store import ZooStore

    return ZooStore(common.store_path(store), create=False)


def query(
    sql: str = typer.Argument(..., help='A SELECT over the store\'s tables, e.g. "SELECT * FROM models LIMIT 5".'),
    store: Optional[Path] = common.StoreOption,
    fmt: Optional[str] = common.OutFormatOption,
    out: Optional[Path] = common.OutOption,
) -> None:
    """Run a read-only SQL query over the store (tables: models, checkpoints, landscape, ...)."""
    from cli import output

    fmt = output.resolve(out, fmt)  # a clash or an unknown extension fails before the query runs
    zs = _open(store)
    result = zs.arrow(sql)
    if out is not None:
        n = output.write(result, out, fmt)
        typer.echo(f"wrote {n} rows to {out} ({fmt})")
        return
    output.emit_stdout(result, fmt)


@store_app.command("tables")
def tables(store: Optional[Path] = common.StoreOption, fmt: str = common.FormatOption) -> None:
    """List the tables with their row and part counts."""
    from store.schema import TABLES

    zs = _open(store)
    rows = [{"table": t, "rows": zs.count(t), "parts": len(zs.part_files(t)),
             "columns": len(zs.schema(t)), "about": TABLES[t].doc} for t in zs.tables()]
    common.emit(rows, fmt, title=f"store {zs.path}")


@store_app.command("check")
def check(
    store: Optional[Path] = common.StoreOption,
    fmt: str = common.FormatOption,
    quarantine: bool = typer.Option(False, "--quarantine", help="Move damaged parts to STORE/_quarantine/ so the rest stays queryable."),
    no_weights: bool = typer.Option(False, "--no-weights", help="Skip recomputing every weights sha256 and xxh3 (faster; page checksums are still read)."),
) -> None:
    """Read every part: footers, page checksums, schema, weights sha256 and xxh3. Exit 1 when something is damaged.

    --quarantine moves damaged parts to STORE/_quarantine/ and says what re-creates their rows (for
    checkpoints: re-running the same `wsl zoo train SPEC`, which rewrites exactly the missing ones).
    """
    zs = _open(store)
    report = zs.check(verify_weights=not no_weights, quarantine=quarantine)
    if fmt == "json":
        common.emit(report.as_dict(), "json")
    else:
        common.check_format(fmt)
        rows = [{"table": t, **s} for t, s in report.tables.items() if s["parts"]]
        common.emit(rows or [{"table": "(empty store)", "parts": 0, "rows": 0, "bytes": 0}], fmt, title=f"store {zs.path}")
        for p in report.problems:
            typer.echo(f"DAMAGED {p.path}: {p.problem}", err=True)
        for p in report.warnings:
            typer.echo(f"warning {p.path}: {p.problem}", err=True)
        for q in report.quarantined:
            typer.echo(f"moved to {q}", err=True)
        for line in report.repair:
            typer.echo(f"repair: {line}", err=True)
        if report.ok:
            typer.echo("ok: every part readable, schema right, weights match their sha256 and xxh3")
        elif not quarantine:
            typer.echo("damaged parts found: restore them from a copy, or run `wsl store check --quarantine` to set "
                       "them aside and then re-run the command that wrote them (for checkpoints: the same "
                       "`wsl zoo train SPEC`, which rewrites exactly the missing ones); until then reads of the "
                       "damaged rows fail (--skip-damaged reads the rest)", err=True)
    if not report.ok:
        raise typer.Exit(1)


@store_app.command("compact")
def compact(
    store: Optional[Path] = common.StoreOption,
    table: Optional[str] = typer.Option(None, "--table", help="Only this table (default: all)."),
    fmt: str = common.FormatOption,
) -> None:
    """Merge small parts into few large ones (atomically; drops only exact duplicate rows)."""
    zs = _open(store)
    report = zs.compact(table)
    if fmt == "json":
        common.emit(report.as_dict(), "json")
        return
    rows = [{"table": t, **s} for t, s in report.tables.items()]
    common.emit(rows or [{"table": "(nothing to do)"}], fmt, title="compaction")
    for t, n in report.conflicts.items():
        typer.echo(f"warning: {t} has {n} keys stored with different values (kept; see `wsl store check`)", err=True)
    for p in report.skipped_corrupt:
        typer.echo(f"warning: left unreadable part alone: {p}", err=True)


@store_app.command("import")
def import_(
    folder: Path = typer.Argument(..., help="Folder of .safetensors / .pt / .pth state dicts (searched recursively)."),
    store: Optional[Path] = common.StoreOption,
    arch: Optional[str] = typer.Option(None, "--arch", help='Architecture config JSON, e.g. \'{"name": "mlp", "in_features": 64, "out_features": 10, "width": 32, "depth": 2}\'. Default: a layout inferred from tensor names and shapes.'),
    zoo: Optional[str] = typer.Option(None, "--zoo", help="Zoo name for the imported models (default: the folder's name)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Store weights as float32, float16 or bfloat16 (default: the files' dtype)."),
    fmt: str = common.FormatOption,
) -> None:
    """Import a folder of checkpoint files (read as data: safetensors or torch.load(weights_only=True))."""
    from store.store import ZooStore

    arch_cfg = None
    if arch is not None:
        try:
            arch_cfg = json.loads(arch)
        except json.JSONDecodeError as e:
            raise UserError(f"--arch is not valid JSON ({e})", 'give e.g. --arch \'{"name": "mlp", "width": 32}\'') from None
    zs = ZooStore(common.store_path(store), create=True)
    counts = zs.import_dir(folder, arch=arch_cfg, zoo=zoo, dtype=dtype)
    common.emit({"store": str(zs.path), **counts}, fmt, title="import")


@store_app.command("export")
def export(
    checkpoint_id: str = typer.Argument(..., help="The checkpoint_id to export."),
    out: Path = typer.Argument(..., help="Output .safetensors file."),
    store: Optional[Path] = common.StoreOption,
    table: str = typer.Option("checkpoints", "--table", help="checkpoints, samples or optimizer_states."),
) -> None:
    """Write one stored checkpoint as named tensors to a .safetensors file."""
    if out.suffix != ".safetensors":
        raise UserError(f"output {out} does not end in .safetensors", "name the file OUT.safetensors")
    zs = _open(store)
    path = zs.export_safetensors(checkpoint_id, out, table=table)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("query")(query)
    app.add_typer(store_app, name="store")
