"""`wsl store import folder PATH`: checkpoint files, optionally with a sidecar table of their metadata.

    PATH/
        metadata.parquet | metadata.csv | metadata.jsonl   optional sidecar (or --sidecar FILE), one row per file
        runs/a/epoch_3.pt, ...                           .safetensors / .pt / .pth / .bin / .ckpt

Sidecar columns: `file` (path relative to PATH, required), a model key
(`--key COL`; default `model_id`, else `model`; without one every file is its
own model), `epoch` (optional), and anything else: our standard names (`lr`,
`width`, `test_acc`, ...) fill those columns; other columns are model columns
when they are constant within every model, checkpoint columns otherwise.
`--name-regex` takes values from file names instead of (or besides) a
sidecar, as p-diff and RPG ship them (`.*acc_(?P<test_acc>[0-9.]+)\\.pth`):
every named group becomes a column, numbers are parsed.

A `model_id` / `checkpoint_id` column is kept as the key (a folder written
by `wsl export` imports under its original ids; a `sha256` column is checked
against the weights); other keys are hashed with the zoo name. The
architecture is `--arch`, else the sidecar's `arch_config`, else the
safetensors header our exports write, else a layout inferred from the names.
Without a sidecar or regex, every file is one model with one checkpoint,
keyed by its path (as `wsl store import DIR` always did).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from store.errors import UserError
from store.import_columns import (CHECKPOINT_REQUIRED, CHECKPOINT_SYNONYMS, MODEL_REQUIRED, MODEL_SYNONYMS, _CKPT_TYPES,
                                  _MODEL_TYPES, split_columns)
from store.import_plan import CheckpointSource, ImportReport, ModelSource, run_import, stable_id
from store.statedict import SUFFIXES, files_under

SIDECAR_NAMES = ("metadata.parquet", "metadata.csv", "metadata.jsonl")
# columns we compute (or check) ourselves
_COMPUTED = {"file", "layout_id", "num_params", "dtype", "sha256", "weights", "source", "import_format"}
MODEL_DIRECT = frozenset({"zoo", "architecture", "dataset", "dataset_id", "task", "width", "depth", "optimizer", "lr",
                          "momentum", "weight_decay", "batch_size", "epochs", "schedule", "seed", "status", "hparams"})
CHECKPOINT_DIRECT = frozenset({"step", "train_loss", "train_acc", "test_loss", "test_acc"})


def read_table(path: Path) -> list[dict[str, Any]]:
    """A CSV / JSON lines / Parquet file -> rows of plain Python values (NaN -> None)."""
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return [{str(k): _plain(v) for k, v in r.items()} for r in pq.read_table(path).to_pylist()]
        elif path.suffix == ".csv":
            df = pd.read_csv(path)
        elif path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            raise UserError(f"sidecar {path} is not .csv, .jsonl or .parquet", "give the table in one of those formats")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow parse errors of all kinds
        raise UserError(f"sidecar {path} cannot be read ({type(e).__name__}: {str(e)[:200]})", "fix the table") from None
    rows = []
    for rec in df.to_dict(orient="records"):
        rows.append({str(k): _plain(v) for k, v in rec.items()})
    return rows


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _from_names(files: list[str], regex: str) -> dict[str, dict]:
    try:
        pat = re.compile(regex)
    except re.error as e:
        raise UserError(f"--name-regex {regex!r} is not a regular expression ({e})", "fix the pattern") from None
    if not pat.groupindex:
        raise UserError(f"--name-regex {regex!r} has no named groups", "name what it captures, e.g. (?P<test_acc>[0-9.]+)")
    out = {}
    for f in files:
        m = pat.search(f)
        if m is None:
            raise UserError(f"{f} does not match --name-regex {regex!r}", "fix the pattern, or move the file out of PATH")
        out[f] = {k: _number(v) for k, v in m.groupdict().items() if v is not None}
    return out


def _find_sidecar(root: Path, sidecar) -> Path | None:
    """The sidecar: `sidecar` itself, else metadata.{parquet,csv,jsonl} in `root`; sidecar=False: none."""
    if sidecar is False:
        return None
    if sidecar is not None:
        p = Path(sidecar).expanduser()
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.is_file():
            raise UserError(f"sidecar {sidecar} does not exist", "give the path of the CSV / JSON lines / Parquet table")
        return p
    found = [root / n for n in SIDECAR_NAMES if (root / n).is_file()]
    if len(found) > 1:
        raise UserError(f"{root} has several sidecars ({', '.join(p.name for p in found)})", "choose one with --sidecar FILE")
    return found[0] if found else None


def plan(path: str | os.PathLike, *, sidecar=None, key: str | None = None,
         name_regex: str | None = None, zoo: str | None = None, arch: Mapping | None = None,
         dataset: str | None = None) -> tuple[list[ModelSource], list[str]]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder", "give a folder of .safetensors / .pt / .pth files")
    zoo_name = zoo or root.resolve().name
    side = _find_sidecar(root, sidecar)
    notes: list[str] = []
    if side is None:
        files = [p.relative_to(root).as_posix() for p in files_under(root)]
        if not files:
            raise UserError(f"no checkpoint files ({', '.join(SUFFIXES)}) under {root}", "point at the folder that holds them")
        if name_regex is None:  # one model per file, keyed by its path
            models = []
            for rel in files:
                mid = "imp-" + hashlib.sha256(f"{zoo_name}\0{rel}".encode()).hexdigest()[:16]
                cols = {"zoo": zoo_name, "dataset": dataset, "source": rel, "hparams": json.dumps({"source": rel})}
                models.append(ModelSource(mid, rel, cols, [CheckpointSource(root / rel, rel, f"{mid}-import", None)],
                                          dict(arch) if arch else None, "--arch" if arch else None))
            return models, notes
        rows = [{"file": f, **v} for f, v in _from_names(files, name_regex).items()]
    else:
        rows = read_table(side)
        exported = export_info(side)
        if exported is not None and not (zoo or key or name_regex):
            return _exported(root, rows, exported, side.name, arch, dataset), [f"rows as `wsl export` wrote them ({side.name})"]
        if not rows:
            raise UserError(f"sidecar {side} has no rows", "give one row per checkpoint file")
        if "file" not in rows[0]:
            raise UserError(f"sidecar {side} has no 'file' column (columns: {', '.join(list(rows[0])[:12])})",
                            "add a 'file' column with each checkpoint's path relative to PATH")
        if name_regex is not None:
            extra = _from_names([str(r["file"]) for r in rows], name_regex)
            rows = [{**extra[str(r["file"])], **r} for r in rows]
        notes.append(f"metadata from {side.name}")
    return _models(root, rows, side.name if side else "--name-regex", key, zoo_name, arch, dataset, notes), notes


def export_info(path: Path) -> dict | None:
    """The `wsl_export` block of a sidecar `wsl export` wrote (which columns are the model's), else None."""
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"wsl_export")
    try:
        info = json.loads(raw) if raw else None
    except ValueError:
        return None
    return info if isinstance(info, dict) and "model_columns" in info else None


def _exported(root: Path, rows: list[dict], info: dict, where: str, arch: Mapping | None,
              dataset: str | None) -> list[ModelSource]:
    """A `wsl export` folder: both rows of every file come back exactly (ids, columns, sha256 checked)."""
    mcols = [c for c in info["model_columns"] if c != "model_id"]
    computed = {"file", "layout_id", "num_params", "dtype", "sha256", "weights"}
    ccols = [c for c in info.get("checkpoint_columns", []) if c not in ("checkpoint_id", "model_id", "epoch") and c not in computed]
    models: dict[str, ModelSource] = {}
    for i, r in enumerate(rows):
        f = r.get("file")
        if not isinstance(f, str) or not (root / f).is_file():
            raise UserError(f"{where} row {i + 1} names {f}, which is not a file under {root}",
                            "restore the file (or export again); nothing was written")
        mid = str(r["model_id"])
        if mid not in models:
            cols = {(c[len("models."):] if c.startswith("models.") else c): r.get(c) for c in mcols}
            cols.pop("layout_id", None)
            if dataset is not None:
                cols["dataset"] = dataset
            layout_json = (info.get("layouts") or {}).get(r.get("layout_id"))
            model_arch, arch_from = (dict(arch), "--arch") if arch else (None, f"{where} layouts" if layout_json else None)
            if model_arch is None and not layout_json and cols.get("arch_config"):
                model_arch, arch_from = json.loads(cols["arch_config"]), f"{where} arch_config"
            models[mid] = ModelSource(mid, mid, cols, [], model_arch, arch_from, exact=arch is None,
                                      layout_json=layout_json)
        epoch = r.get("epoch")
        ckpt_cols = {c: r.get(c) for c in ccols}
        models[mid].checkpoints.append(CheckpointSource(root / f, f, str(r["checkpoint_id"]),
                                                        None if epoch is None else int(epoch), ckpt_cols, r.get("sha256")))
    return list(models.values())


def _models(root: Path, rows: list[dict], where: str, key: str | None, zoo_name: str, arch: Mapping | None,
            dataset: str | None, notes: list[str]) -> list[ModelSource]:
    cols = list(rows[0]) if rows else []
    for r in rows:
        cols += [c for c in r if c not in cols]
    key = key or next((c for c in ("model_id", "model") if c in cols), None)
    if key is not None and key not in cols:
        raise UserError(f"--key {key!r} is not a column of {where} (columns: {', '.join(cols[:12])})", "name the model key column")
    groups: dict[Any, list[dict]] = {}
    for i, r in enumerate(rows):
        f = r.get("file")
        if not isinstance(f, str) or not f:
            raise UserError(f"{where} row {i + 1} has no file", "give every row the checkpoint file's path")
        if not (root / f).is_file():
            raise UserError(f"{where} row {i + 1} names {f}, which is not a file under {root}",
                            "fix the row or restore the file; nothing was written")
        k = r.get(key) if key else f
        if k is None:
            raise UserError(f"{where} row {i + 1} ({f}) has no {key}", f"give every row its {key}")
        groups.setdefault(k, []).append(r)
    reserved = {"file", key, "epoch", "checkpoint_id", "model_id"} | _COMPUTED
    free = [c for c in cols if c not in reserved]
    per_ckpt = {c for c in free if c in CHECKPOINT_DIRECT or c in CHECKPOINT_SYNONYMS}
    for c in free:
        if c in per_ckpt:
            continue
        varies = any(len({json.dumps(r.get(c), sort_keys=True, default=str) for r in g}) > 1 for g in groups.values())
        if varies and c in MODEL_DIRECT:
            g = next(g for g in groups.values() if len({json.dumps(r.get(c), default=str) for r in g}) > 1)
            raise UserError(f"{where}: {c} differs between the rows of model {g[0].get(key)!r}",
                            f"a model has one {c}: give its files one value (or use another --key)")
        if varies:
            per_ckpt.add(c)
    model_cols = [c for c in free if c not in per_ckpt]
    if per_ckpt:
        notes.append(f"per-checkpoint columns: {', '.join(sorted(per_ckpt))}")
    models = []
    for k, g in groups.items():
        first = g[0]
        mid = str(k) if key == "model_id" else stable_id("folder", zoo_name, str(k))
        values = {c: first.get(c) for c in model_cols}
        std, ext = split_columns({c: v for c, v in values.items() if c != "arch_config"}, MODEL_SYNONYMS, _MODEL_TYPES,
                                 MODEL_REQUIRED, direct=MODEL_DIRECT, notes=notes, what=f"model {k}")
        columns = {**ext, **std}
        columns.setdefault("zoo", zoo_name)
        if dataset is not None:
            columns["dataset"] = dataset
        columns.setdefault("hparams", json.dumps({c: v for c, v in values.items() if c not in MODEL_DIRECT},
                                                 sort_keys=True, default=str))
        columns["source"] = str(k)
        model_arch, arch_from = (dict(arch), "--arch") if arch else (None, None)
        if model_arch is None and isinstance(first.get("arch_config"), str) and first["arch_config"].strip():
            try:
                model_arch, arch_from = json.loads(first["arch_config"]), f"{where} arch_config"
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: arch_config of model {k!r} is not JSON ({e})", "fix it, or pass --arch") from None
        ckpts = []
        for r in g:
            epoch = r.get("epoch")
            if epoch is not None:
                try:
                    epoch = int(epoch)
                except (TypeError, ValueError):
                    raise UserError(f"{where}: epoch {epoch!r} of {r['file']} is not a whole number", "fix the row") from None
            cid = r.get("checkpoint_id")
            if not cid:
                cid = f"{mid}-e{epoch:04d}" if epoch is not None else f"{mid}-" + hashlib.sha256(r["file"].encode()).hexdigest()[:8]
            cstd, cext = split_columns({c: r.get(c) for c in per_ckpt}, CHECKPOINT_SYNONYMS, _CKPT_TYPES,
                                       CHECKPOINT_REQUIRED, direct=CHECKPOINT_DIRECT, what=r["file"])
            sha = r.get("sha256") if isinstance(r.get("sha256"), str) else None
            ckpts.append(CheckpointSource(root / r["file"], r["file"], str(cid), epoch, {**cext, **cstd}, sha))
        models.append(ModelSource(mid, str(k), columns, ckpts, model_arch, arch_from))
    return models


def import_folder(target, path: str | os.PathLike, *, sidecar=None, key: str | None = None,
                  name_regex: str | None = None, zoo: str | None = None, arch: Mapping | None = None,
                  dataset: str | None = None, rename=None, dtype: str | None = None, workers: int | None = None,
                  progress: Callable | None = None) -> ImportReport:
    """Import a folder of checkpoint files (with a sidecar table / file-name regex) into `target`."""
    models, notes = plan(path, sidecar=sidecar, key=key, name_regex=name_regex, zoo=zoo, arch=arch, dataset=dataset)
    return run_import(target, models, fmt="folder", source=str(path), rename=rename, dtype=dtype, workers=workers,
                      progress=progress, notes=notes)
