"""`wsl export --where SQL DIR`: any selection of checkpoints out of the store, one file (or folder) each.

    DIR/<checkpoint_id>.safetensors       --format safetensors (default): named tensors; the layout JSON and
                                          both rows (checkpoint, model) in the header
    DIR/<checkpoint_id>.pt                --format state-dict: torch.save of the state dict, for
                                          torch.load(weights_only=True) + load_state_dict users
    DIR/<model_id>/{config.json, model.safetensors, README.md}
                                          --format hf: one Hugging Face model folder per model with its chosen
                                          checkpoint (--checkpoint last|best), a card with hyperparameters,
                                          metrics, landscape values and provenance
    DIR/metadata.parquet                  one row per file: its path, ids, metrics and the model's columns
                                          (the sidecar `wsl store import folder DIR` reads back)

Nothing partial: every file (hf: every model folder) is written under a
hidden temporary name and renamed into place; metadata.parquet comes last.
Resumable: files already there are checked (their sha256 must be the
row's) and skipped. A folder that holds anything else is refused before
anything is written. The selection goes through store/filters.py (one pool,
our conditions as bound parameters). Weights are read in batches (verified
against their sha256) and written row by row.

Why safetensors files are written here, not by the safetensors library: a
stored row is one flat buffer in layout order, which is exactly a safetensors
data section, so a file is a header (8-byte length + JSON: each tensor's
dtype, shape and byte range, our metadata) plus the row's bytes as they are;
the library would copy every tensor first (safetensors.torch refuses views
that share storage; safetensors.numpy copies into its own buffer), which is
most of the per-file cost for small models. Tensors that are not slices of
the row (integer buffers) go through safetensors.numpy. The tests read every
exported file with safetensors itself.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import torch

from store import export_card, filters
from store.errors import UserError
from store.layout import ParamLayout, build_architecture

if TYPE_CHECKING:  # pragma: no cover
    from store.store import ZooStore

FORMATS = ("safetensors", "hf", "state-dict")
SIDECAR = "metadata.parquet"
SIDECAR_META = "wsl_export"
READ_BYTES = 256 << 20  # weights held in memory at once
MODEL_PREFIX = "models."
_TMP = ".tmp-"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


@dataclass
class ExportReport:
    format: str
    folder: str
    selected: int
    written: int
    skipped: int
    seconds: float

    def as_dict(self) -> dict:
        return {"format": self.format, "folder": self.folder, "selected": self.selected, "written": self.written,
                "already_there": self.skipped, "seconds": round(self.seconds, 3)}


class _Rows:
    """An Arrow table with a key column: rows by key as dicts (ints stay ints, NULL stays None)."""

    def __init__(self, table: pa.Table, key: str):
        self.table, self.key = table, key
        self.index: dict[str, int] = {}
        for i, k in enumerate(table.column(key).to_pylist()):
            self.index.setdefault(k, i)

    def __contains__(self, k) -> bool:
        return k in self.index

    def row(self, k: str) -> dict:
        return self.table.slice(self.index[k], 1).to_pylist()[0]

    def rows(self) -> dict[str, dict]:
        """Every row by key (the first of a repeated key), converted once."""
        out: dict[str, dict] = {}
        for r in self.table.to_pylist():
            out.setdefault(r[self.key], r)
        return out

    def take(self, keys: list) -> pa.Table:
        """Rows in `keys` order; a key that is None or missing gives a row of NULLs."""
        idx = pa.array([self.index.get(k) if k is not None else None for k in keys], pa.int64())
        return self.table.take(idx)


def file_name(key: str) -> str:
    """A key as a file name: itself when it is plain, else a readable part + a hash (never a path)."""
    if _SAFE.match(key) and key not in (".", ".."):
        return key
    import hashlib

    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", key)[:80].strip("._") + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def _choose(sel, checkpoint: str):
    """One row per model: its last checkpoint (highest epoch) or its best (highest test_acc)."""
    import pandas as pd

    if checkpoint not in ("last", "best"):
        raise UserError(f"unknown --checkpoint {checkpoint!r}", "use last or best")
    df = sel.copy()
    df["_e"] = pd.to_numeric(df["epoch"], errors="coerce").fillna(-1)
    if checkpoint == "best":
        if df["test_acc"].isna().all():
            raise UserError("--checkpoint best needs test_acc, and the selected checkpoints have none",
                            "use --checkpoint last, or select checkpoints that carry test_acc")
        df["_a"] = pd.to_numeric(df["test_acc"], errors="coerce").fillna(-np.inf)
        df = df.sort_values(["model_id", "_a", "_e", "checkpoint_id"])
    else:
        df = df.sort_values(["model_id", "_e", "checkpoint_id"])
    return df.groupby("model_id", sort=True).tail(1).drop(columns=[c for c in ("_e", "_a") if c in df]).reset_index(drop=True)


def _targets(df, fmt: str) -> list[str]:
    if fmt == "hf":
        names = [file_name(m) for m in df.model_id]
    else:
        ext = ".safetensors" if fmt == "safetensors" else ".pt"
        names = [file_name(c) + ext for c in df.checkpoint_id]
    if len(set(names)) != len(names):
        raise UserError("two selected keys map onto one file name", "export them in separate folders")
    return names


def _check_folder(out: Path, names: list[str]) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"export folder {out} is a file", "give a folder (new, empty, or an earlier export of this selection)")
    if not out.is_dir():
        return
    allowed = set(names) | {SIDECAR}
    other = sorted(p.name for p in out.iterdir() if p.name not in allowed and not p.name.startswith(_TMP))
    if other:
        raise UserError(f"export folder {out} holds other files ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''})",
                        "export into a new or empty folder (or into one an export of the same selection wrote)")


def _module_dtypes(layout: ParamLayout) -> dict[str, torch.dtype]:
    """The dtype each tensor has in the module (integer buffers such as num_batches_tracked stay integers)."""
    if layout.arch is None:
        return {}
    try:
        return {k: v.dtype for k, v in build_architecture(layout.arch).state_dict().items()}
    except UserError:
        return {}


def _safetensors_bytes(arrays: dict, meta: dict[str, str]) -> bytes:
    """numpy views serialize as they are; bfloat16 (no numpy dtype) goes through safetensors.torch with copies."""
    if all(isinstance(a, np.ndarray) for a in arrays.values()):
        from safetensors.numpy import save

        return save(arrays, metadata=meta)
    from safetensors.torch import save

    return save({k: torch.as_tensor(t).clone().contiguous() for k, t in arrays.items()}, metadata=meta)


def _write_bytes(path: Path, data, atomic: bool = True) -> None:
    """Write bytes (or a list of buffers) under a temporary name, then rename into place."""
    tmp = path.with_name(f"{_TMP}{path.name}") if atomic else path
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for buf in (data if isinstance(data, list) else [data]):
            view = memoryview(buf)
            while len(view):
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if atomic:
        os.replace(tmp, path)


def _sha_of_file(path: Path, fmt: str, layout: ParamLayout) -> str | None:
    """The weights sha256 an existing export file holds (None when it is not one of ours / unreadable)."""
    try:
        if fmt == "state-dict":
            sd = torch.load(path, map_location="cpu", weights_only=True)
            from store import codec

            dtype = {v.dtype for v in sd.values() if v.is_floating_point()}
            d = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype.pop(), "float32") if len(dtype) == 1 else "float32"
            flat = torch.cat([sd[n].reshape(-1).to(codec.STORED_DTYPES[d]) for n in layout.names])
            import hashlib

            return hashlib.sha256(flat.contiguous().view(torch.uint8).numpy()).hexdigest()
        from safetensors import safe_open

        target = path / "model.safetensors" if fmt == "hf" else path
        if fmt == "hf" and not all((path / f).is_file() for f in ("config.json", "README.md")):
            return None
        with safe_open(str(target), framework="pt") as fh:
            return (fh.metadata() or {}).get("sha256")
    except Exception:  # noqa: BLE001 - anything unreadable is "not ours"
        return None


def export(store: "ZooStore", where: str | None, out: str | os.PathLike, fmt: str = "safetensors",
           checkpoint: str = "last", batch_size: int = 1024, progress: Callable | None = None) -> ExportReport:
    """Export the checkpoints the filter selects (hf: one chosen checkpoint per selected model) into folder `out`."""
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise UserError(f"unknown export --format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    sel = filters.select_checkpoints(store, where, columns=filters.CHECKPOINT_COLUMNS + ", checkpoints.test_acc")
    if fmt == "hf":
        sel = _choose(sel, checkpoint)
    names = _targets(sel, fmt)
    _check_folder(out, names)
    params: dict[str, Any] = {}
    cond = filters.in_list("checkpoint_id", "ids", sel.checkpoint_id.tolist(), params)
    ckpts = _Rows(store.arrow(f"SELECT * EXCLUDE (weights) FROM checkpoints WHERE {cond}", params), "checkpoint_id")
    mparams: dict[str, Any] = {}
    mcond = filters.in_list("model_id", "ids", sorted(set(sel.model_id)), mparams)
    models = _Rows(store.arrow(f"SELECT * FROM models WHERE {mcond}", mparams), "model_id")
    land: dict[str, list[dict]] = {}
    if fmt == "hf" and store.count("landscape"):
        lparams: dict[str, Any] = {}
        lcond = filters.in_list("model_id", "ids", sorted(set(sel.model_id)), lparams)
        for r in store.arrow(f"SELECT * FROM landscape WHERE {lcond} ORDER BY model_id, epoch, recipe_id",
                             lparams).to_pylist():
            land.setdefault(r["model_id"], []).append(r)
    todo, skipped = [], 0
    layouts: dict[str, ParamLayout] = {}
    for i, (cid, lid) in enumerate(zip(sel.checkpoint_id, sel.layout_id)):
        layouts.setdefault(lid, store.layout(lid))
        target = out / names[i]
        if target.exists():
            have = _sha_of_file(target, fmt, layouts[lid])
            if have != ckpts.row(cid)["sha256"]:
                raise UserError(f"{target} exists but does not hold checkpoint {cid} (another export, or damaged)",
                                "remove it, or export into a new folder; nothing was written")
            skipped += 1
        else:
            todo.append(i)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():  # leftovers of a killed run
        if p.name.startswith(_TMP):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    writers = {lid: _LayoutWriter(lay) for lid, lay in layouts.items()}
    crows = ckpts.rows()
    mrows = models.rows()
    model_json: dict[str, str] = {}
    provenance_base = {"exported_by": f"wsl-zoo {_version()}", "store": str(store.path)}
    sel_ids = sel.checkpoint_id.tolist()
    position = {cid: i for i, cid in enumerate(sel_ids)}
    done = 0
    # one read per (layout, stored dtype): each row is written in the dtype its sha256 is of
    groups: dict[tuple, list[str]] = {}
    for i in todo:
        cid = sel_ids[i]
        groups.setdefault((crows[cid]["layout_id"], crows[cid]["dtype"]), []).append(cid)
    batches = []
    for (lid, dtype), ids in groups.items():  # at most batch_size rows and READ_BYTES per read (ResNet rows are MBs)
        per = max(1, min(batch_size, READ_BYTES // max(1, layouts[lid].num_params * (4 if dtype == "float32" else 2))))
        batches += [ids[s:s + per] for s in range(0, len(ids), per)]
    for ids in batches:
        for lid, (w, meta) in store.weights(ids, verify=True, grouped=True).items():
            wr = writers[lid]
            rows = w.numpy() if w.dtype != torch.bfloat16 else w
            for j, cid in enumerate(meta.checkpoint_id):
                crow = crows[cid]
                mid = crow["model_id"]
                mrow = mrows.get(mid, {"model_id": mid})
                if mid not in model_json:
                    model_json[mid] = json.dumps(export_card.row_dict(mrow), sort_keys=True)
                meta_h = wr.header(crow, model_json[mid])
                _write_one(out / names[position[cid]], fmt, wr, rows[j], meta_h, mrow, crow, land, provenance_base)
            done += len(meta)
            if progress is not None:
                progress(len(meta), len(todo), "writing")
    _write_sidecar(out, sel, names, ckpts, models, fmt, {lid: w.layout_json for lid, w in writers.items()})
    return ExportReport(fmt, str(out), len(sel), done, skipped, time.perf_counter() - t0)


class _LayoutWriter:
    """What every row of one layout shares: tensor slices, module dtypes, the layout JSON."""

    def __init__(self, layout: ParamLayout):
        from store.names import module_order

        self.layout = layout
        self.layout_json = layout.to_json()
        dtypes = _module_dtypes(layout)
        self.slices = [(e.name, e.offset, e.offset + e.numel, e.shape, dtypes.get(e.name)) for e in layout.entries]
        self.order = module_order(layout)
        # every tensor a slice of the stored row: the row's bytes are the file's data section as they are
        self.plain = all(dt is None or dt.is_floating_point for *_, dt in self.slices)
        self._headers: dict[str, str] = {}

    def safetensors(self, row, meta: dict[str, str]) -> bytes | list:
        """The file's bytes (or [header, data] buffers) for one stored row."""
        if not self.plain:
            return _safetensors_bytes(self.arrays(row), meta)
        data = row.view(torch.uint16).numpy() if isinstance(row, torch.Tensor) else row
        kind = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("uint16"): "BF16"}[data.dtype]
        item = data.dtype.itemsize
        if kind not in self._headers:  # the tensors' part of the header: the same for every row of this layout
            self._headers[kind] = ",".join(
                f"{json.dumps(name)}:{json.dumps({'dtype': kind, 'shape': list(shape), 'data_offsets': [a * item, b * item]})}"
                for name, a, b, shape, _ in self.slices)
        head = ("{" + json.dumps("__metadata__") + ":" + json.dumps(meta, sort_keys=True) + "," + self._headers[kind] + "}").encode()
        head += b" " * (-len(head) % 8)
        return [len(head).to_bytes(8, "little") + head, memoryview(np.ascontiguousarray(data)).cast("B")]

    def header(self, crow: dict, model_json: str) -> dict[str, str]:
        return {"format": "pt", "wsl_format": export_card.FORMAT, "checkpoint_id": str(crow["checkpoint_id"]),
                "model_id": str(crow["model_id"]), "layout_id": self.layout.layout_id, "layout_json": self.layout_json,
                "sha256": str(crow["sha256"]), "dtype": str(crow["dtype"]),
                "wsl_checkpoint": json.dumps(export_card.row_dict(crow), sort_keys=True), "wsl_model": model_json}

    def arrays(self, row) -> dict:
        """{name: view of the row} (numpy for float32/float16 rows, torch for bfloat16); integer buffers cast."""
        out = {}
        for name, a, b, shape, dt in self.slices:
            v = row[a:b].reshape(shape)
            if dt is not None and not dt.is_floating_point:
                v = v.astype(torch.empty(0, dtype=dt).numpy().dtype) if isinstance(v, np.ndarray) else v.to(dt)
            out[name] = v
        return out

    def tensors(self, row) -> "OrderedDict[str, torch.Tensor]":
        arrays = self.arrays(row)
        return OrderedDict((n, torch.as_tensor(arrays[n]).clone()) for n in self.order)


def _write_one(target: Path, fmt: str, wr: _LayoutWriter, row, meta: dict, mrow: dict, crow: dict, land,
               provenance: dict) -> None:
    if fmt == "safetensors":
        _write_bytes(target, wr.safetensors(row, meta))
    elif fmt == "state-dict":
        tmp = target.with_name(f"{_TMP}{target.name}")
        torch.save(wr.tensors(row), tmp)
        os.replace(tmp, target)
    else:
        tmp = target.with_name(f"{_TMP}{target.name}")
        tmp.mkdir()
        _write_bytes(tmp / "model.safetensors", wr.safetensors(row, meta), atomic=False)
        (tmp / "config.json").write_text(json.dumps(export_card.config_json(wr.layout), indent=2, sort_keys=True) + "\n")
        rows = [r for r in land.get(crow["model_id"], []) if r.get("epoch") == crow.get("epoch")]
        prov = {**provenance, "model_id": crow["model_id"], "checkpoint_id": crow["checkpoint_id"],
                "layout_id": wr.layout.layout_id, "sha256": crow["sha256"]}
        (tmp / "README.md").write_text(export_card.model_card(wr.layout, mrow, crow, rows, prov))
        os.replace(tmp, target)


def _write_sidecar(out: Path, sel, names: list[str], ckpts, models, fmt: str, layouts: dict[str, str]) -> None:
    """metadata.parquet: one row per exported file (checkpoint columns, then the model's), written last.

    A model column whose name a checkpoint column has too is `models.<name>`;
    the schema metadata (`wsl_export`) says which columns belong to which
    table and holds the layouts, so `wsl store import folder` restores both
    rows exactly.
    """
    import pyarrow.parquet as pq

    rel = [f"{n}/model.safetensors" if not n.endswith((".safetensors", ".pt")) else n for n in names]
    c = ckpts.take(sel.checkpoint_id.tolist())
    m = models.take([mid if mid in models else None for mid in c.column("model_id").to_pylist()])
    cols = [pa.array(rel, pa.string())] + list(c.columns)
    fields = ["file"] + c.column_names
    for name, col in zip(m.column_names, m.columns):
        if name == "model_id":
            continue
        cols.append(col)
        fields.append(f"{MODEL_PREFIX}{name}" if name in c.column_names else name)
    t = pa.Table.from_arrays(cols, names=fields)
    info = {"format": fmt, "file_column": "file", "model_columns": ["model_id"] + fields[len(c.column_names) + 1:],
            "checkpoint_columns": c.column_names, "layouts": layouts}
    t = t.replace_schema_metadata({SIDECAR_META: json.dumps(info)})
    tmp = out / f"{_TMP}{SIDECAR}"
    pq.write_table(t, tmp)
    os.replace(tmp, out / SIDECAR)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wsl-zoo")
    except Exception:  # noqa: BLE001  pragma: no cover
        return "unknown"
