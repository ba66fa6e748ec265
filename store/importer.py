"""`ZooStore.import_dir` / `export_safetensors`: the first, one-file-per-model import and the one-file export.

Kept for the API and `wsl store import DIR` they back; the formats live in
store/import_modelzoos.py, import_folder.py and import_hf.py (all through
store/import_plan.py), bulk export in store/export.py. `import_dir` is the
folder format without a sidecar: each file one model and one checkpoint,
keyed by the zoo name and the file's path, so importing a folder twice is a
no-op and a file whose content changed is a conflict.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from store.layout import ParamLayout
from store.statedict import SUFFIXES, load_state_dict, natural_key

__all__ = ["SUFFIXES", "load_state_dict", "infer_layout", "import_dir", "export_safetensors"]

if TYPE_CHECKING:  # pragma: no cover
    from store.store import ZooStore


def infer_layout(sd: Mapping[str, torch.Tensor], arch: Mapping[str, Any] | None = None) -> ParamLayout:
    """Layout of a state dict: its floating-point tensors in natural name order; with `arch`, the architecture's."""
    if arch is not None:
        return ParamLayout.from_config(arch)
    floats = sorted(((k, tuple(v.shape)) for k, v in sd.items() if v.is_floating_point()), key=lambda kv: natural_key(kv[0]))
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtypes.pop(), "float32") if len(dtypes) == 1 else "float32"
    return ParamLayout(floats, dtype=dtype, arch=None)


def import_dir(store: "ZooStore", folder: str | os.PathLike, arch: Mapping[str, Any] | None = None,
               zoo: str | None = None, dtype: str | None = None) -> dict[str, int]:
    """Import every checkpoint file under `folder`; returns counts {files, models, checkpoints, layouts} (new rows)."""
    from store.import_folder import import_folder

    rep = import_folder(store, folder, sidecar=False, zoo=zoo, arch=arch, dtype=dtype)
    return {"files": rep.checkpoints, "models": rep.new_models, "checkpoints": rep.new_checkpoints,
            "layouts": len(rep.layouts)}


def export_safetensors(store: "ZooStore", checkpoint_id: str, out: str | os.PathLike, table: str = "checkpoints") -> Path:
    """Write one stored checkpoint as a safetensors file of named tensors (layout and ids in its metadata)."""
    from safetensors.torch import save_file

    out = Path(out)
    w, meta = store.weights([checkpoint_id], table=table, verify=True)
    row = meta.iloc[0]
    layout = store.layout(row["layout_id"])
    tensors = OrderedDict((k, v.clone().contiguous()) for k, v in layout.unflatten(w[0]).items())
    info = {"checkpoint_id": checkpoint_id, "layout_id": layout.layout_id, "layout_json": layout.to_json(),
            "sha256": str(row["sha256"]), "format": "wsl-zoo"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, out)
    return out
