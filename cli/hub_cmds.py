"""`wsl publish` and `wsl pull`: a zoo store to a Hugging Face Hub dataset and back (store/hub/ does the work).

    wsl publish --repo-id my-lab/digits-zoo [--where "lr > 0.01"] [--tables models,checkpoints] [--private]
    wsl publish --dry-run zoo-hub            # writes the repo's folder (card + Parquet shards), uploads nothing
    wsl publish --repo-id my-lab/digits-zoo --generators "method = 'diffusion'"   # which generators go along
    wsl pull my-lab/digits-zoo --store zoo [--weights] [--tables models,landscape] [--revision v1]
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from cli import common


@contextmanager
def _rows_bar(description: str):
    """store.hub's progress callback (rows done, rows in all, table) drawing the shared rich bar."""
    with common.progress_bar(description, unit="rows") as update:
        yield lambda rows, total, table: update(advance=rows, total=total or None, info=table)


def publish(
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Dataset repo ORG/NAME (optional with --dry-run)."),
    store: Optional[Path] = common.StoreOption,
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    where: Optional[str] = typer.Option(None, "--where", help='Publish only the models matching this SQL filter over models, e.g. "lr > 0.01", and the rows that depend on them.'),
    tables: Optional[List[str]] = typer.Option(None, "--tables", help="Tables to publish, comma-separated or repeated (default: every non-empty one)."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write the repo's folder (README card + Parquet shards) to this new directory; upload nothing."),
    license: str = typer.Option("cc-by-4.0", "--license", help="License id for the dataset card (Hub license ids: cc-by-4.0, mit, apache-2.0, ...)."),
    generators: Optional[str] = typer.Option(None, "--generators", help="Generators to publish with the zoo (folders + rows + reports): 'none', or a SQL condition over the generators table (default: every generator fit on the selected models)."),
    fmt: str = common.FormatOption,
) -> None:
    """Publish the zoo store as a Hugging Face Hub dataset: Parquet shards per table, its generators, a dataset card.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed or written.
    """
    from store import hub
    from store.hub.card import format_bytes
    from store.store import ZooStore

    common.check_format(fmt)
    zs = ZooStore(common.store_path(store), create=False)
    with _rows_bar("writing shards") as progress:
        report = hub.publish(zs, repo_id, where=where, tables=tables, private=private, license=license,
                             dry_run=dry_run, progress=progress, generators=generators)
    rows = [{k: (format_bytes(v) if k == "bytes" else v) for k, v in r.items()} for r in report.rows()]
    if fmt == "json":
        common.emit({"published": report.published, "repo_id": report.repo_id, "url": report.url,
                     "license": report.build.manifest["license"],
                     "folder": str(dry_run) if dry_run is not None else None, "method": report.method,
                     "bytes": report.bytes, "files": report.num_files, "tables": report.rows(),
                     "generators": sorted(report.build.manifest.get("generators", {})),
                     "notes": report.build.notes}, "json")
        return
    common.emit(rows, fmt, title="dataset folder" if dry_run is not None else f"published {report.repo_id}")
    for note in report.build.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"license: {report.build.manifest['license']} (choose another with --license)")
    if report.published:
        typer.echo(f"published {report.repo_id}: {report.url} ({report.num_files} files, {format_bytes(report.bytes)}, "
                   f"{report.method})")
        typer.echo(f"load it: datasets.load_dataset(\"{report.repo_id}\", \"models\") or `wsl pull {report.repo_id}`")
    else:
        typer.echo(f"dry run: wrote {dry_run} ({report.num_files} files, {format_bytes(report.bytes)}); nothing uploaded")
        typer.echo(f"load it: datasets.load_dataset(\"{dry_run}\", \"models\"), or `wsl pull {dry_run} --store DIR`")


def pull(
    source: str = typer.Argument(..., help="Dataset repo ORG/NAME on the Hub, or a local folder written by `wsl publish --dry-run`."),
    store: Optional[Path] = common.StoreOption,
    tables: Optional[List[str]] = typer.Option(None, "--tables", help="Tables to pull, comma-separated or repeated (default: all published)."),
    weights: bool = typer.Option(False, "--weights/--no-weights", help="Also pull the weights tables (checkpoints, optimizer_states, samples); default: metadata only."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of the repo (default: main)."),
    generators: bool = typer.Option(True, "--generators/--no-generators", help="Also pull the published generators (their folders into STORE/generators/, their rows and reports)."),
    fmt: str = common.FormatOption,
) -> None:
    """Download a published zoo into a store that `wsl query` opens (metadata first; weights with --weights)."""
    from store import hub

    common.check_format(fmt)
    path = common.store_path(store)
    with _rows_bar("importing") as progress:
        report = hub.pull(source, path, tables=tables, weights=weights, revision=revision, progress=progress,
                          generators=generators)
    if fmt == "json":
        common.emit({"source": report.source, "store": str(report.store), "tables": report.tables,
                     "skipped": report.skipped, "generators": report.generators}, "json")
        return
    common.emit(report.rows(), fmt, title=f"pulled {source} into {report.store}")
    new = sum(t["new"] for t in report.tables.values())
    typer.echo(f"{new} new rows in {report.store}; query it: wsl query \"SELECT * FROM models LIMIT 5\" --store {report.store}")
    for gid in report.generators:
        typer.echo(f"generator {gid} in {report.store / 'generators' / gid}; sample it: "
                   f"wsl generate sample {gid} --store {report.store} --dataset ...")
    if report.skipped:
        typer.echo("skipped " + "; ".join(f"{t} ({why})" for t, why in report.skipped.items()), err=True)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("pull")(pull)
