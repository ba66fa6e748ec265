"""The one way an import reaches the store: read and validate everything, then write.

Each format (store/import_modelzoos.py, import_folder.py, import_hf.py) only
describes what it found: models with their columns, each with its checkpoint
files and per-checkpoint columns. `run_import` then

1. reads every file (in parallel, store/statedict.py), finds its layout and
   the name mapping onto it (store/names.py), refuses NaN/inf and files whose
   tensors do not fit their model's layout;
2. builds the `models` / `checkpoints` rows with one type per column and
   checks them against the store's existing columns;
3. compares rows whose keys are already stored: identical ones are skipped
   (re-importing is a no-op), different ones are a conflict naming the file
   (a changed file, or another zoo under the same name);
4. only then creates the store if needed and writes layouts, models and
   checkpoints (batched: one part per layout and dtype, up to the part size).

So an import that fails writes nothing at all: no part and no `zoo.json`.
Weights of very large imports are not all held in memory: past
`memory_bytes`, values are dropped after validation and read again while
writing (their sha256 must match what was validated).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from store import codec, names
from store.errors import UserError
from store.import_columns import unify
from store.layout import ParamLayout
from store.schema import TABLES
from store.statedict import FileTensors, iter_read, natural_key

if TYPE_CHECKING:  # pragma: no cover
    from store.store import ZooStore

MEMORY_BYTES = 2 << 30
_BATCH_BYTES = 256 << 20
_FLOAT_KINDS = ("float16", "bfloat16")


@dataclass
class CheckpointSource:
    file: Path
    rel: str  # shown in messages, kept in the `source` column
    checkpoint_id: str
    epoch: int | None
    columns: dict[str, Any] = field(default_factory=dict)
    expected_sha: str | None = None  # a sidecar / card that names the weights' sha256: checked


@dataclass
class ModelSource:
    model_id: str
    rel: str  # the trial folder / key / repo, for messages and the `source` column
    columns: dict[str, Any]
    checkpoints: list[CheckpointSource]
    arch: dict | None = None
    arch_from: str | None = None
    exact: bool = False  # rows written by `wsl export`: columns taken as they are (no defaults added)
    layout_json: str | None = None  # the layout itself, when the source records it (a `wsl export` sidecar)


@dataclass
class ImportReport:
    format: str
    source: str
    store: str
    models: int
    checkpoints: int
    new_models: int
    new_checkpoints: int
    layouts: list[dict]
    notes: list[str]
    seconds: float

    def as_dict(self) -> dict:
        return {"format": self.format, "source": self.source, "store": self.store, "models": self.models,
                "checkpoints": self.checkpoints, "new_models": self.new_models,
                "new_checkpoints": self.new_checkpoints, "layouts": self.layouts, "notes": self.notes,
                "seconds": round(self.seconds, 3)}


def stable_id(*parts: str) -> str:
    """'imp-' + 16 hex of the parts: the same source always gets the same key."""
    return "imp-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def check_target(target) -> tuple["ZooStore | None", Path]:
    """(open store or None, its path); a UserError now (before reading anything) when the path cannot be a store."""
    from store.store import META_FILE, ZooStore

    if isinstance(target, ZooStore):
        return target, target.path
    path = Path(target).expanduser()
    if (path / META_FILE).exists():
        return ZooStore(path, create=False), path
    if path.exists() and not path.is_dir():
        raise UserError(f"store path {path} is a file", "give a directory for the store")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{path} is a non-empty directory without {META_FILE}, not a zoo store",
                        "give a new or empty directory, or the path of an existing store")
    return None, path


def _stored_dtype(choice: str | None, files: Sequence[FileTensors]) -> str:
    if choice is not None:
        return codec.check_dtype(choice)
    kinds = {f.dtype for f in files}
    return kinds.pop() if len(kinds) == 1 and next(iter(kinds)) in _FLOAT_KINDS else "float32"


def _inferred_layout(ft: FileTensors, rules) -> ParamLayout:
    """Layout of a file without an architecture: its floating tensors (renamed) in natural order."""
    new = names.apply_rules(list(ft.names), rules, ft.path) if rules else list(ft.names)
    floats = sorted(((n, s) for n, s, f in zip(new, ft.shapes, ft.floating) if f), key=lambda kv: natural_key(kv[0]))
    if not floats:
        raise UserError(f"{ft.path} holds no floating-point tensors", "import files of model weights")
    dtype = ft.dtype if ft.dtype in ("float32", "float16", "bfloat16", "float64") else "float32"
    return ParamLayout(floats, dtype=dtype, arch=None)


def _layout_for(model: ModelSource, first: FileTensors, rules, cache: dict) -> ParamLayout:
    if model.arch is not None:
        key = json.dumps(model.arch, sort_keys=True)
        if key not in cache:
            cache[key] = ParamLayout.from_config(model.arch)
        return cache[key]
    if model.layout_json and not rules:
        return ParamLayout.from_json(model.layout_json)
    if first.meta and first.meta.get("layout_json") and not rules:  # our own safetensors export says it
        return ParamLayout.from_json(first.meta["layout_json"])
    return _inferred_layout(first, rules)


def _sha(flat: np.ndarray, dtype: str, what: str) -> str:
    t = torch.from_numpy(flat)
    if dtype != "float32":
        t = t.to(codec.STORED_DTYPES[dtype])
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"{what} has values too large for {dtype} (inf after the cast)", "import with --dtype float32")
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy()).hexdigest()


@dataclass
class _Planned:
    model: ModelSource
    ckpt: CheckpointSource
    layout: ParamLayout
    dtype: str
    sha: str
    values: np.ndarray | None
    mapping: names.NameMap


def _plan_files(models: Sequence[ModelSource], rules, dtype: str | None, workers: int | None,
                progress: Callable | None, memory_bytes: int) -> list[_Planned]:
    files = [c.file for m in models for c in m.checkpoints]
    tick = (lambda k: progress(k, len(files), "reading")) if progress else None
    read = iter_read(files, workers=workers, progress=tick)
    planned: list[_Planned] = []
    layouts: dict = {}
    maps: dict = {}
    kept = 0
    for m in models:
        fts = [next(read) for _ in m.checkpoints]
        layout = _layout_for(m, fts[0], rules, layouts)
        stored = _stored_dtype(dtype, fts)
        for c, ft in zip(m.checkpoints, fts):
            key = (layout.layout_id, ft.signature)
            if key not in maps:
                what = f"{c.rel}" + (f" (model {m.rel}, layout from {m.arch_from})" if m.arch_from else f" (model {m.rel})")
                maps[key] = names.find_mapping(ft.names, ft.shapes, ft.floating, layout, rules, what)
            nm = maps[key]
            flat = names.flat_values(ft.values, nm)
            if not np.isfinite(flat).all():
                bad = [n for n, e in zip(layout.names, layout.entries)
                       if not np.isfinite(flat[e.offset:e.offset + e.numel]).all()]
                raise UserError(f"{c.rel} contains NaN or inf (tensors {bad[:5]})",
                                "drop that checkpoint (or its model) from the folder, or repair it")
            sha = _sha(flat, stored, c.rel)
            if c.expected_sha and c.expected_sha != sha:
                raise UserError(f"{c.rel}: its weights do not have the sha256 its metadata gives ({c.expected_sha[:12]}...)",
                                "the file was changed or damaged after export: restore it, or drop its sha256 from the metadata")
            keep = kept + flat.nbytes <= memory_bytes
            kept += flat.nbytes if keep else 0
            planned.append(_Planned(m, c, layout, stored, sha, np.ascontiguousarray(flat) if keep else None, nm))
            ft.values = None  # free the file's buffer
    return planned


def _rows(planned: Sequence[_Planned], models: Sequence[ModelSource], zoo_format: str) -> tuple[pa.Table, pa.Table]:
    layout_of = {}
    for p in planned:
        layout_of.setdefault(p.model.model_id, p.layout)
    mrows = []
    for m in models:
        lay = layout_of[m.model_id]
        if m.exact:  # the row as `wsl export` wrote it: an export imported into its own store is a no-op
            row = {k: v for k, v in m.columns.items() if v is not None}
            row.update(model_id=m.model_id, layout_id=lay.layout_id)
            mrows.append(row)
            continue
        arch = lay.arch or {}
        row = {"model_id": m.model_id, "architecture": arch.get("name"), "arch_config": json.dumps(lay.arch, sort_keys=True)
               if lay.arch else None, "layout_id": lay.layout_id, "status": "imported",
               "width": arch.get("width") if isinstance(arch.get("width"), int) else None,
               "depth": arch.get("depth") if isinstance(arch.get("depth"), int) else None}
        for k, v in m.columns.items():
            if k not in ("model_id", "layout_id") and not (k in ("width", "depth", "architecture", "arch_config") and v is None):
                row[k] = v
        row.setdefault("source", m.rel)
        row["import_format"] = zoo_format
        mrows.append(row)
    crows = []
    for p in planned:
        row = {"checkpoint_id": p.ckpt.checkpoint_id, "model_id": p.model.model_id, "epoch": p.ckpt.epoch}
        row.update({k: v for k, v in p.ckpt.columns.items() if k not in row and not (p.model.exact and v is None)})
        if not p.model.exact:
            row.setdefault("source", p.ckpt.rel)
        row.update({"layout_id": p.layout.layout_id, "dtype": p.dtype, "num_params": p.layout.num_params, "sha256": p.sha})
        crows.append(row)
    for r in mrows:
        for c, _ in TABLES["models"].columns:
            r.setdefault(c, None)
    for r in crows:
        for c, _ in TABLES["checkpoints"].columns:
            if c != "weights":
                r.setdefault(c, None)
    mschema = dict(TABLES["models"].columns)
    cschema = {c: t for c, t in TABLES["checkpoints"].columns if c != "weights"}
    return unify(mrows, mschema), unify(crows, cschema)


def _check_types(store: "ZooStore", table: str, t: pa.Table) -> None:
    """Extra columns must cast to the type earlier parts gave them (else the append would fail half-way)."""
    existing = store.schema(table)
    for f in t.schema:
        if f.name in existing.names and f.name not in TABLES[table].column_names:
            old = existing.field(f.name).type
            if pa.types.is_null(old) or old == f.type:
                continue
            try:
                t.column(f.name).cast(old)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise UserError(f"{table}.{f.name} holds {old} values in store {store.path}, this import has {f.type} ones",
                                "import into another store, or under names that do not clash") from None


def _stored_rows(store: "ZooStore", table: str, key: str, ids: list[str]) -> pa.Table:
    cols = "* EXCLUDE (weights)" if TABLES[table].has_weights else "*"
    return store.arrow(f"SELECT {cols} FROM {table} WHERE {key} IN (SELECT unnest($ids))", {"ids": ids})


def _same(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise equality where null == null and NaN == NaN (the store's own rule for idempotent appends)."""
    from store.store import _same as same

    return same(a, b)


def _conflicts(store: "ZooStore", table: str, key: str, t: pa.Table, where_from: Mapping[str, str]) -> np.ndarray:
    """Mask of rows already stored identically; a UserError for a key stored with other values."""
    ids = t.column(key).to_pylist()
    old = _stored_rows(store, table, key, ids)
    stored = np.zeros(t.num_rows, dtype=bool)
    if old.num_rows == 0:
        return stored
    pos = {k: i for i, k in enumerate(old.column(key).to_pylist())}
    hit = np.array([i for i, k in enumerate(ids) if k in pos], dtype=np.int64)
    if not len(hit):
        return stored
    new = t.take(pa.array(hit))
    prev = old.take(pa.array([pos[ids[i]] for i in hit]))
    for c in t.column_names:
        if c in (key, "xxh3"):  # xxh3 is computed from the weights at append; their sha256 is compared
            continue
        a = new.column(c).combine_chunks()
        diff = (~_same(a, prev.column(c).combine_chunks())) if c in prev.column_names else a.is_valid().to_numpy(zero_copy_only=False)
        if diff.any():
            j = int(np.nonzero(diff)[0][0])
            k = ids[int(hit[j])]
            why = "its file changed since it was imported" if c == "sha256" else f"column {c!r} differs"
            raise UserError(f"conflict: {table} row {key}={k!r} from {where_from.get(k, k)} is already stored in "
                            f"{store.path} with other values ({why})",
                            "import changed files under another --zoo, or into another store; nothing was written")
    stored[hit] = True
    return stored


def run_import(target, models: Sequence[ModelSource], *, fmt: str, source: str, rename=None, dtype: str | None = None,
               workers: int | None = None, progress: Callable | None = None, notes: list[str] | None = None,
               memory_bytes: int | None = None) -> ImportReport:
    """Validate every model and file, then write them to the store `target` (a ZooStore or a path)."""
    t0 = time.perf_counter()
    memory_bytes = MEMORY_BYTES if memory_bytes is None else memory_bytes
    notes = list(notes or [])
    store, path = check_target(target)
    if not models:
        raise UserError(f"nothing to import from {source}", "point at the folder that holds the checkpoints")
    seen: dict[str, str] = {}
    for m in models:
        if not m.checkpoints:
            raise UserError(f"{m.rel} has no checkpoint files", "remove it from the input, or add its checkpoints")
        if m.model_id in seen:
            raise UserError(f"{m.rel} and {seen[m.model_id]} would be the same model ({m.model_id})",
                            "give them different keys (or import them under different --zoo names)")
        seen[m.model_id] = m.rel
    seen = {}
    for m in models:
        for c in m.checkpoints:
            if c.checkpoint_id in seen:
                raise UserError(f"{c.rel} and {seen[c.checkpoint_id]} are the same checkpoint of model {m.rel} "
                                f"(epoch {c.epoch})", "keep one file per model and epoch")
            seen[c.checkpoint_id] = c.rel
    rules = names.parse_rules(rename)
    planned = _plan_files(models, rules, dtype, workers, progress, memory_bytes)
    mtable, ctable = _rows(planned, models, fmt)
    new_m = np.ones(mtable.num_rows, dtype=bool)
    new_c = np.ones(ctable.num_rows, dtype=bool)
    if store is not None:
        for table, t in (("models", mtable), ("checkpoints", ctable)):
            _check_types(store, table, t)
        new_m = ~_conflicts(store, "models", "model_id", mtable, {m.model_id: m.rel for m in models})
        new_c = ~_conflicts(store, "checkpoints", "checkpoint_id", ctable, {p.ckpt.checkpoint_id: p.ckpt.rel for p in planned})
    # ----- everything is valid: write
    if store is None:
        from store.store import ZooStore

        store = ZooStore(path, create=True)
    layouts = {}
    for p in planned:
        layouts.setdefault(p.layout.layout_id, p.layout)
    for lay in layouts.values():
        store.add_layout(lay)
    if new_m.any():
        store.append("models", mtable.filter(pa.array(new_m)))
    _write_checkpoints(store, planned, ctable, new_c, progress)
    summary = []
    for lid, lay in layouts.items():
        mine = [p for p in planned if p.layout.layout_id == lid]
        maps = {json.dumps(p.mapping.as_dict(), sort_keys=True): p.mapping.as_dict() for p in mine}
        summary.append({"layout_id": lid, "architecture": (lay.arch or {}).get("name"), "num_params": lay.num_params,
                        "models": len({p.model.model_id for p in mine}), "checkpoints": len(mine),
                        "arch_from": mine[0].model.arch_from or ("file header" if lay.arch else "inferred: no architecture"),
                        "mapping": list(maps.values())})
        if lay.arch is None:
            notes.append(f"layout {lid} has no architecture (inferred from tensor names): its models can be queried "
                         "and exported but not evaluated; import with --arch to evaluate them")
    return ImportReport(fmt, str(source), str(store.path), len(models), len(planned), int(new_m.sum()), int(new_c.sum()),
                        summary, notes, time.perf_counter() - t0)


def _write_checkpoints(store: "ZooStore", planned: Sequence[_Planned], ctable: pa.Table, new: np.ndarray,
                       progress: Callable | None) -> None:
    """Append the new checkpoints: one append per (layout, dtype) batch of up to _BATCH_BYTES."""
    from store.statedict import read_tensors

    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(planned):
        if new[i]:
            groups.setdefault((p.layout.layout_id, p.dtype), []).append(i)
    total = int(new.sum())
    meta = ctable.drop_columns(["layout_id", "dtype", "num_params", "sha256"])
    for (lid, dtype), idx in groups.items():
        layout = planned[idx[0]].layout
        per = max(1, _BATCH_BYTES // max(1, layout.num_params * 4))
        for s in range(0, len(idx), per):
            batch = idx[s:s + per]
            w = np.empty((len(batch), layout.num_params), dtype=np.float32)
            for r, i in enumerate(batch):
                p = planned[i]
                if p.values is None:  # dropped after validation (memory budget): read again, must be the same
                    flat = names.flat_values(read_tensors(p.ckpt.file).values, p.mapping)
                    if _sha(flat, p.dtype, p.ckpt.rel) != p.sha:
                        raise UserError(f"{p.ckpt.rel} changed while it was being imported",
                                        "re-run the import (what was written is kept: appends are idempotent)")
                    w[r] = flat
                else:
                    w[r] = p.values
            rows = meta.take(pa.array(batch))
            store.append_weights("checkpoints", torch.from_numpy(w), rows, layout, dtype=dtype)
            if progress is not None:
                progress(len(batch), total, "writing")
