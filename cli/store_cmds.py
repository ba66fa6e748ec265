"""`wsl query` and `wsl store ...`: SQL over the zoo store, and its upkeep.

    wsl query "SELECT phase, count(*) FROM landscape GROUP BY phase" [--format json]
    wsl store tables | check | compact | export CHECKPOINT_ID OUT.safetensors
    wsl store import model-zoos|folder|hf PATH [--arch JSON] [--rename REGEX=REPL] ...
    wsl export --where SQL DIR [--format safetensors|hf|state-dict]
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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


IMPORT_FORMATS = ("model-zoos", "folder", "hf")


class _Phases:
    """store progress callbacks (advance, total, phase) -> one rich bar per phase (reading, then writing)."""

    def __init__(self, unit: str):
        import contextlib

        self.unit, self.phase, self.stack, self.update = unit, None, contextlib.ExitStack(), None

    def __call__(self, advance: int, total: int, phase: str) -> None:
        if phase != self.phase:
            self.stack.close()
            self.phase = phase
            self.update = self.stack.enter_context(common.progress_bar(phase, total=total, unit=self.unit))
        self.update(advance, total=total)

    def close(self) -> None:
        self.stack.close()


def _only(fmt: str, allowed: str, **given) -> None:
    for name, value in given.items():
        if value not in (None, False, []):
            raise UserError(f"--{name.replace('_', '-')} applies to the {allowed} format, not {fmt}",
                            f"leave it out, or import with `wsl store import {allowed} PATH`")


def _print_import(report, fmt: str) -> None:
    d = report.as_dict()
    if fmt == "json":
        common.emit(d, "json")
        return
    common.check_format(fmt, ("table", "csv"))
    summary = {k: v for k, v in d.items() if k not in ("layouts", "notes")}
    common.emit(summary, fmt, title="import")
    if fmt == "table" and d["layouts"]:
        import pandas as pd

        common.print_table(pd.DataFrame([{k: v for k, v in lay.items() if k != "mapping"} for lay in d["layouts"]]),
                           "layouts")
        rows = [{"layout_id": lay["layout_id"], "method": m["method"], "file tensor": src, "layout tensor": dst}
                for lay in d["layouts"] for m in lay["mapping"]
                for src, dst in (m["names"].items() if isinstance(m["names"], dict) else [("(same names)", "")])]
        rows += [{"layout_id": lay["layout_id"], "method": m["method"], "file tensor": n, "layout tensor": "(left out)"}
                 for lay in d["layouts"] for m in lay["mapping"] for n in m["ignored"]]
        common.print_table(pd.DataFrame(rows), "tensor names: file -> layout")
    for n in d["notes"]:
        typer.echo(f"note: {n}", err=True)


@store_app.command("import")
def import_(
    args: List[str] = typer.Argument(..., metavar="FORMAT PATH...", help="FORMAT PATH...: model-zoos DIR | folder DIR | hf DIR-or-ORG/NAME ... "
                                               "(a lone DIR: one model per file, as before)."),
    store: Optional[Path] = common.StoreOption,
    arch: Optional[str] = typer.Option(None, "--arch", help='Architecture config JSON, e.g. \'{"name": "mlp", "in_features": 64, "out_features": 10, "width": 32, "depth": 2}\'. Default: recognised from the zoo\'s config, else a layout inferred from tensor names.'),
    zoo: Optional[str] = typer.Option(None, "--zoo", help="Zoo name for the imported models (default: the folder's name)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name to record in models.dataset (e.g. digits)."),
    rename: List[str] = typer.Option([], "--rename", help="REGEX=REPL applied to every tensor name (repeatable), e.g. '^module_list\\.=layers.'. Default: names mapped automatically by order and shape."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Store weights as float32, float16 or bfloat16 (default: the files' dtype)."),
    sidecar: Optional[Path] = typer.Option(None, "--sidecar", help="folder: CSV / JSON lines / Parquet table, one row per file (default: PATH/metadata.*)."),
    key: Optional[str] = typer.Option(None, "--key", help="folder: the sidecar column naming each file's model (default: model_id, else model)."),
    name_regex: Optional[str] = typer.Option(None, "--name-regex", help="folder: regex with named groups read from each file's path, e.g. 'acc_(?P<test_acc>[0-9.]+)'."),
    checkpoint_file: Optional[str] = typer.Option(None, "--checkpoint-file", help="model-zoos: weights file inside each checkpoint_N/ (default: 'checkpoints', else the one .pt/.pth/.safetensors)."),
    skip_incomplete: bool = typer.Option(False, "--skip-incomplete", help="model-zoos: skip (and list) trial folders with missing files or epochs instead of stopping."),
    missing_value: List[float] = typer.Option([], "--missing-value", help="model-zoos: metric value meaning 'not measured', stored as NULL (default: -999, the Model Zoos trainable's)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="hf: branch, tag or commit of a Hub repo."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes parsing files (default: the CPUs, for many files)."),
    fmt: str = common.FormatOption,
) -> None:
    """Import a zoo: Model Zoos / Ray Tune trial folders, checkpoint files with a sidecar table, or Hugging Face models.

    Everything is read and validated before anything is written; a failed import writes nothing (not even zoo.json).
    Re-importing is a no-op; a file that changed since is a conflict.
    """
    arch_cfg = None if arch is None else common.arch_config(arch)
    kind, paths = (args[0], args[1:]) if args[0] in IMPORT_FORMATS else ("dir", args)
    if not paths:
        raise UserError(f"`wsl store import {kind}` needs a PATH", f"e.g. wsl store import {kind} ./my-zoo")
    if kind != "hf" and len(paths) > 1:
        raise UserError(f"the {kind} format imports one PATH, got {len(paths)}", "import the folders one by one")
    if kind == "dir" and not Path(paths[0]).is_dir():
        raise UserError(f"{paths[0]} is not a folder (nor one of the formats {', '.join(IMPORT_FORMATS)})",
                        "give FORMAT PATH, e.g. wsl store import model-zoos ./zoo, or a folder of checkpoint files")
    if kind != "folder":
        _only(kind, "folder", sidecar=sidecar, key=key, name_regex=name_regex)
    if kind != "model-zoos":
        _only(kind, "model-zoos", checkpoint_file=checkpoint_file, skip_incomplete=skip_incomplete, missing_value=missing_value)
    if kind != "hf":
        _only(kind, "hf", revision=revision)
    target = common.store_path(store)
    bar = _Phases("files")
    try:
        common_kw = dict(zoo=zoo, arch=arch_cfg, dataset=dataset, rename=rename or None, dtype=dtype, progress=bar)
        if kind == "model-zoos":
            from store.import_modelzoos import MISSING_VALUES, import_model_zoos

            report = import_model_zoos(target, paths[0], checkpoint_file=checkpoint_file, skip_incomplete=skip_incomplete,
                                       missing_values=tuple(missing_value) or MISSING_VALUES, workers=workers, **common_kw)
        elif kind in ("folder", "dir"):
            from store.import_folder import import_folder

            report = import_folder(target, paths[0], sidecar=False if kind == "dir" else sidecar, key=key,
                                   name_regex=name_regex, workers=workers, **common_kw)
        else:
            from store.import_hf import import_hf

            report = import_hf(target, paths, revision=revision, workers=workers, **common_kw)
    finally:
        bar.close()
    _print_import(report, fmt)


def export_cmd(
    out: Path = typer.Argument(..., metavar="DIR", help="Folder to write (new, empty, or an earlier export of the same selection: resumed)."),
    where: Optional[str] = typer.Option(None, "--where", "-w", help='SQL condition over models LEFT JOIN checkpoints, e.g. "width = 32 AND epoch = epochs" (default: every checkpoint).'),
    export_format: str = typer.Option("safetensors", "--format", help="safetensors (one file per checkpoint), hf (one Hugging Face model folder per model) or state-dict (torch.save files)."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="hf: which checkpoint of each model: last (highest epoch) or best (highest test_acc)."),
    store: Optional[Path] = common.StoreOption,
    report_fmt: str = typer.Option("table", "--report", help="How to print the summary: table or json."),
) -> None:
    """Export the selected checkpoints with their metadata: safetensors, Hugging Face model folders or state dicts."""
    from store.export import FORMATS, export

    if export_format not in FORMATS:
        raise UserError(f"unknown export --format {export_format!r}", f"use one of: {', '.join(FORMATS)}")
    common.check_format(report_fmt, ("table", "json"))
    zs = _open(store)
    with common.progress_bar(f"export {export_format}", unit="models" if export_format == "hf" else "checkpoints") as update:
        rep = export(zs, where, out, fmt=export_format, checkpoint=checkpoint,
                     progress=lambda k, total, _: update(k, total=total))
    common.emit(rep.as_dict(), report_fmt, title="export")


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
    app.command("export")(export_cmd)
    app.add_typer(store_app, name="store")
