"""The dataset repo's folder: shards per table, the manifest `wsl pull` reads, the card people read.

    report = build_folder(store, "zoo-hub", where="lr > 0.01")   # what `wsl publish --dry-run zoo-hub` writes

    README.md                       dataset card (card.py): configs, license, tags, schema, summary
    wsl-zoo.json                    manifest: schema version, every table's files, rows, columns,
                                    every generator folder's files
    data/<table>/<table>-00000-of-00003.parquet      shards (shards.py)
    generators/<generator_id>/      a generator's folder as saved (config.json, model.safetensors,
                                    training_set.json, ...), its report/ (JSON + PNGs) when it has one,
                                    and reports/<report_id>.json for every report the store recorded

The folder appears whole or not at all: it is written next to its destination under a
temporary name and renamed into place at the end.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from store.errors import UserError
from store.hub import card
from store.hub.credentials import check_license, check_repo_id
from store.hub.selection import Selection, select
from store.hub.shards import (DATA, FILE_BYTES, MAX_FILES_PER_FOLDER, ROW_GROUP_BYTES, Progress, final_names,
                              write_table)
from store.hub.summary import summarize
from store.schema import SCHEMA_VERSION, TABLES

log = logging.getLogger(__name__)

HUB_FORMAT = "wsl-zoo-hub"
HUB_FORMAT_VERSION = 1
MANIFEST = "wsl-zoo.json"
CARD = "README.md"
DEFAULT_LICENSE = "cc-by-4.0"


@dataclass
class BuildReport:
    """What `build_folder` wrote: the folder, its manifest (tables, files, rows) and notes."""

    folder: Path
    manifest: dict
    notes: list[str]

    @property
    def files(self) -> list[str]:
        return ([CARD, MANIFEST] + [f for t in self.manifest["tables"].values() for f in t["files"]]
                + [f for g in self.manifest.get("generators", {}).values() for f in g["files"]])

    def rows(self) -> list[dict]:
        out = [{"table": t, "rows": i["rows"], "files": len(i["files"]), "row_groups": i["row_groups"],
                "bytes": i["bytes"]} for t, i in self.manifest["tables"].items()]
        out += [{"table": g["folder"], "rows": "", "files": len(g["files"]), "row_groups": "", "bytes": g["bytes"]}
                for g in self.manifest.get("generators", {}).values()]
        return out


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) of everything under `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wsl-zoo")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


GENERATORS = "generators"


def _copy_generators(store, selection: Selection, folder: Path) -> dict[str, dict]:
    """Each chosen generator's folder into generators/<id>/ (hidden files left out), plus the store's reports of it."""
    out: dict[str, dict] = {}
    for gid, src in sorted(selection.generators.items()):
        dst = folder / GENERATORS / gid
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if p.is_dir() or any(part.startswith(".") for part in rel.parts):
                continue
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / rel)
        if store.count("generator_reports"):
            reports = store.sql("SELECT report_id, report FROM generator_reports WHERE generator_id = $id ORDER BY report_id",
                                {"id": gid})
            for rid, text in zip(reports["report_id"], reports["report"]):
                (dst / "reports").mkdir(parents=True, exist_ok=True)
                (dst / "reports" / f"{rid}.json").write_text(text + "\n")
        files = sorted(p.relative_to(folder).as_posix() for p in dst.rglob("*") if p.is_file())
        out[gid] = {"folder": f"{GENERATORS}/{gid}", "files": files,
                    "bytes": sum((folder / f).stat().st_size for f in files)}
        log.info("copied generator %s: %d files", gid, len(files))
    return out


def _fill_folder(store, selection: Selection, folder: Path, repo_id: str | None, license: str,
                 row_group_bytes: int, file_bytes: int, max_files_per_folder: int, progress: Progress | None) -> dict:
    tables: dict[str, dict] = {}
    total = sum(selection.counts.values())
    for t in selection.tables:
        tmp_dir = folder / DATA / t
        w = write_table(store, t, selection.queries[t], selection.query_params(t), tmp_dir, row_group_bytes, file_bytes,
                        progress, total)
        names, glob = final_names(t, w.files, max_files_per_folder)
        for src, dst in zip(w.files, names):
            (folder / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, folder / dst)
        tables[t] = {
            "path_glob": glob,
            "rows": w.rows,
            "row_groups": w.row_groups,
            "files": names,
            "bytes": sum((folder / n).stat().st_size for n in names),
            "key": list(TABLES[t].key),
            "has_weights": TABLES[t].has_weights,
            "columns": [[f.name, str(f.type)] for f in w.schema],
        }
        log.info("wrote %s: %d rows in %d files", t, w.rows, len(names))
    manifest = {
        "format": HUB_FORMAT,
        "format_version": HUB_FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "created_with": f"wsl-zoo {_version()}",
        "repo_id": repo_id,
        "where": selection.where,
        "license": license,
        "limits": {"row_group_bytes": row_group_bytes, "file_bytes": file_bytes,
                   "max_files_per_folder": max_files_per_folder},
        "tables": tables,
        "generators": _copy_generators(store, selection, folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    summary = summarize(folder, manifest)
    (folder / CARD).write_text(card.render(manifest, summary, repo_id, license))
    return manifest


def build_folder(store, out: str | os.PathLike, *, repo_id: str | None = None, where: str | None = None,
                 tables: Iterable[str] | str | None = None, license: str = DEFAULT_LICENSE,
                 row_group_bytes: int = ROW_GROUP_BYTES, file_bytes: int = FILE_BYTES,
                 max_files_per_folder: int = MAX_FILES_PER_FOLDER, selection: Selection | None = None,
                 progress: Progress | None = None, generators: str | None = None) -> BuildReport:
    """Write the dataset repo's folder to `out` (new or empty): what `wsl publish --dry-run DIR` does.

    The folder appears whole or not at all: it is written next to `out` under
    a temporary name and renamed into place at the end.
    """
    out = Path(out).expanduser()
    if repo_id is not None:
        repo_id = check_repo_id(repo_id)
    license = check_license(license)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty directory", "give a new directory for the dataset folder")
    selection = selection or select(store, where, tables, generators)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        manifest = _fill_folder(store, selection, tmp, repo_id, license, row_group_bytes, file_bytes,
                                max_files_per_folder, progress)
        if out.exists():
            out.rmdir()  # empty (checked above): rename over it
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(out, manifest, selection.notes)
