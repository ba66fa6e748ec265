"""Pulling from the Hub: a published zoo (dataset repo, or a local folder) into a store; snapshots pinned by commit.

    pull("my-org/my-zoo", "other-store", weights=True)     # Hub (or a local folder) -> store
    folder = snapshot("my-org/gen", repo_type="model", revision=None, allow_patterns=["config.json"])

Metadata tables first, weights last; every row goes through ZooStore.append, so keys
make a second pull a no-op and weights are checked against their sha256.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from store.errors import UserError
from store.hub import credentials
from store.hub.credentials import check_repo_id, hub_endpoint, hub_error
from store.hub.folder import CARD, MANIFEST
from store.hub.selection import parse_tables
from store.hub.shards import DATA, Progress
from store.schema import SCHEMA_VERSION, TABLES

# Metadata first, weights last (pull imports in this order; layouts before the tables that use them).
IMPORT_ORDER = ["layouts", "datasets", "models", "landscape", "evaluations", "generators",
                "generator_reports", "checkpoints", "optimizer_states", "samples"]
WEIGHT_TABLES = [t for t, s in TABLES.items() if s.has_weights]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


GENERATOR_TABLES = ("generators", "generator_reports", "samples")


@dataclass
class PullReport:
    source: str
    store: Path
    tables: dict[str, dict]
    skipped: dict[str, str]
    generators: list[str] = field(default_factory=list)  # generator folders now in STORE/generators/

    def rows(self) -> list[dict]:
        out = [{"table": t, **i, "note": ""} for t, i in self.tables.items()]
        out += [{"table": t, "rows": "", "new": 0, "files": 0, "note": why} for t, why in self.skipped.items()]
        return out


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def snapshot(repo_id: str, *, repo_type: str = "dataset", revision: str | None, allow_patterns: list[str]) -> str:
    """huggingface_hub.snapshot_download of the files matching `allow_patterns` (cached; works offline once cached)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                             endpoint=hub_endpoint())


def _hub_download(repo_id: str, *, revision: str | None, allow_patterns: list[str]) -> str:
    return snapshot(repo_id, repo_type="dataset", revision=revision, allow_patterns=allow_patterns)


def pinned(folder: str | os.PathLike, revision: str | None) -> str | None:
    """The commit a snapshot folder belongs to (huggingface_hub names it snapshots/<commit>/), else `revision`.

    Later downloads of the same pull or load use it, so every file comes from one commit
    even if the repo gets a new version in between.
    """
    name = Path(folder).name
    return name if _COMMIT.match(name) else revision


def _table_files(root: Path, table: str) -> list[Path]:
    return sorted(p for p in (root / DATA / table).rglob("*.parquet") if not p.name.startswith("."))


def _check_target(path: Path) -> bool:
    """True when `path` is already a store; a UserError when it cannot become one (before anything is downloaded)."""
    if (path / "zoo.json").exists():
        return True
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} is not a zoo store (no zoo.json) and not empty",
                        "pull into a new directory or an existing store (--store DIR)")
    return False


def _conform(store, table: str, tbl: pa.Table) -> pa.Table:
    """Rows from a repo, ready for ZooStore.append: required columns an older publish lacked are added as nulls,
    and generators rows the store already has are left as they are (their folder may live elsewhere here)."""
    for name, typ in TABLES[table].columns:
        if name not in tbl.column_names:
            tbl = tbl.append_column(pa.field(name, typ), pa.nulls(tbl.num_rows, typ))
    if table == "generators" and store.count("generators") and tbl.num_rows:
        have = set(store.sql("SELECT generator_id FROM generators")["generator_id"])
        keep = [i for i, g in enumerate(tbl.column("generator_id").to_pylist()) if g not in have]
        tbl = tbl.take(pa.array(keep, pa.int64()))
    return tbl


def _place_generators(root: Path, manifest: dict, store_path: Path, source: str) -> list[str]:
    """Copy each published generator folder into STORE/generators/<id>/ (whole or not at all); returns the ids."""
    placed = []
    for gid, info in sorted((manifest.get("generators") or {}).items()):
        src = root / info["folder"]
        missing = [f for f in info["files"] if not (root / f).is_file()]
        if missing:
            raise UserError(f"{source}: generator {gid} lacks {len(missing)} of its files ({missing[:3]})",
                            "re-run the pull (a download was incomplete)")
        dst = store_path / "generators" / gid
        if (dst / "config.json").is_file():
            placed.append(gid)  # already here (a second pull): the folder is not touched
            continue
        tmp = dst.parent / f".partial-gen-{gid}-{secrets.token_hex(4)}"
        try:
            for f in info["files"]:
                rel = Path(f).relative_to(info["folder"])
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f, tmp / rel)
            os.replace(tmp, dst)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        placed.append(gid)
    return placed


def pull(source: str, store_path: str | os.PathLike, *, tables: Iterable[str] | str | None = None,
         weights: bool = False, revision: str | None = None, generators: bool = True,
         download: Callable[..., str] | None = None, progress: Progress | None = None) -> PullReport:
    """Import a published zoo (Hub repo ORG/NAME, or a local folder such as a --dry-run one) into a store.

    Metadata tables are downloaded and imported first; the weights tables
    (checkpoints, optimizer_states, samples) only with weights=True: the store
    keeps weights and their rows together, so without weights those tables
    are skipped (query their metadata remotely with DuckDB instead, see
    docs/hub.md). Every row goes through ZooStore.append: keys make a second
    pull a no-op, and weights are checked against their sha256. A local
    directory named like ORG/NAME wins over the Hub (as with datasets).
    `download(repo_id, revision=..., allow_patterns=[...]) -> folder` is
    injectable; by default huggingface_hub.snapshot_download (cached, so
    HF_HUB_OFFLINE=1 works for a repo pulled before). Every download after the
    first is pinned to the commit the first one resolved.

    generators: the published generator folders come along with the `generators`
    table (into STORE/generators/<id>/, before their rows, so `wsl generate sample
    <id>` works on the pulled store); False leaves out the folders and the
    generators, generator_reports and samples tables.
    """
    from store.store import ZooStore

    chosen = parse_tables(tables)
    store_path = Path(store_path).expanduser()
    exists = _check_target(store_path)
    local = _is_local(source)
    token = None
    if local:
        root = Path(source).expanduser()

        def fetch(patterns: list[str]) -> Path:
            return root
    else:
        try:
            repo_id = check_repo_id(source)
        except UserError as e:
            raise UserError(f"{source!r} is neither a local folder nor a Hub repo id ({e.message})",
                            "give ORG/NAME, or the path of a folder written by `wsl publish --dry-run`") from None
        token = credentials.token()
        endpoint = hub_endpoint()
        dl = download or _hub_download

        def fetch(patterns: list[str]) -> Path:
            nonlocal revision
            failure = None
            try:
                folder = Path(dl(repo_id, revision=revision, allow_patterns=patterns))
                revision = pinned(folder, revision)
                return folder
            except Exception as e:  # noqa: BLE001 - scrubbed one-line UserError
                failure = hub_error(e, f"downloading {repo_id}", endpoint, repo_id, token)
            raise failure  # outside the except block: the original exception is not attached

    root = fetch([CARD, MANIFEST])
    manifest = None
    if (root / MANIFEST).exists():
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except ValueError as e:
            raise UserError(f"{source}: {MANIFEST} is not valid JSON ({e})", "re-publish the zoo with `wsl publish`") from None
        if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise UserError(f"{source} has store schema version {manifest['schema_version']}, newer than this wsl "
                            f"understands ({SCHEMA_VERSION})", "upgrade wsl-zoo (pip install -U wsl-zoo)")
    available = [t for t in IMPORT_ORDER if manifest is None or t in manifest.get("tables", {})]
    if chosen is not None:
        missing = [t for t in chosen if t not in available]
        if missing:
            raise UserError(f"{source} does not publish table(s) {missing}", f"choose among: {', '.join(available)}")
    wanted = [t for t in available if chosen is None or t in chosen]
    skipped: dict[str, str] = {}
    if not generators:
        for t in wanted:
            if t in GENERATOR_TABLES:
                skipped[t] = "generator table: pulled with the generators (leave out --no-generators)"
        wanted = [t for t in wanted if t not in skipped]
    if not weights:
        for t in wanted:
            if TABLES[t].has_weights:
                skipped[t] = "weights table: pull with --weights to get it"
        wanted = [t for t in wanted if t not in skipped]
    elif any(TABLES[t].has_weights for t in wanted) and "layouts" in available and "layouts" not in wanted:
        wanted = [t for t in available if t in wanted or t == "layouts"]
    if not wanted:
        raise UserError(f"nothing to pull from {source} with these options ({', '.join(skipped) or 'no tables'})",
                        "add --weights to pull the weights tables, or choose other --tables")

    total_rows = sum(manifest["tables"][t]["rows"] for t in wanted) if manifest else 0
    meta = [t for t in wanted if not TABLES[t].has_weights]
    heavy = [t for t in wanted if TABLES[t].has_weights]
    store = None
    placed: list[str] = []
    results: dict[str, dict] = {}
    for group in (meta, heavy):
        if not group:
            continue
        folder = fetch([f"{DATA}/{t}/*" for t in group])
        found = {t: _table_files(folder, t) for t in group}
        if manifest is None and not any(found.values()):
            raise UserError(f"{source} holds no zoo tables (no {DATA}/<table>/*.parquet)",
                            "pull a dataset published with `wsl publish`")
        if store is None:
            store = ZooStore(store_path, create=not exists)
        if "generators" in group and manifest is not None and manifest.get("generators"):
            placed = _place_generators(fetch(["generators/*"]), manifest, store_path, str(source))
        for t in group:
            files = found[t]
            if manifest is not None and len(files) != len(manifest["tables"][t]["files"]):
                raise UserError(f"{source}: {t} has {len(files)} files, its manifest lists "
                                f"{len(manifest['tables'][t]['files'])}", "re-run the pull (a download was incomplete)")
            rows = new = 0
            for f in files:
                tbl = pq.read_table(f)
                rows += tbl.num_rows
                new += store.append(t, _conform(store, t, tbl))
                if progress is not None:
                    progress(tbl.num_rows, total_rows, t)
            results[t] = {"rows": rows, "new": new, "files": len(files)}
    return PullReport(str(source), store_path, results, skipped, placed)
