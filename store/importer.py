"""Import a folder of checkpoint files into a store, and export a stored checkpoint to safetensors.

Existing zoos ship one file per checkpoint. We read them as data, never as
code: `.safetensors` through safetensors, `.pt` / `.pth` / `.bin` through
`torch.load(weights_only=True)`, which refuses pickled objects other than
tensors and plain containers. A file that needs arbitrary unpickling is an
error naming the file, not a risk.

Each file becomes one `models` row and one `checkpoints` row. Keys are
derived from the zoo name and the file's path inside the folder, so
importing the same folder twice is a no-op, and a file whose content
changed is a conflict error.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from store.errors import UserError
from store.layout import ParamLayout

if TYPE_CHECKING:  # pragma: no cover
    from store.store import ZooStore

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "params", "weights")


def load_state_dict(path: Path) -> "OrderedDict[str, torch.Tensor]":
    """A checkpoint file -> {name: tensor}, without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e})", "re-export it or remove it from the folder") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError for zip damage, EOFError...
            raise UserError(f"{path} cannot be read as plain tensors with torch.load(weights_only=True) "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            "save the model's state_dict() (not the pickled module), or convert it to safetensors") from None
    sd = _unwrap(obj)
    if sd is None:
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors",
                        "save model.state_dict() (a dict of name -> tensor)")
    return sd


def _unwrap(obj: Any):
    if isinstance(obj, Mapping):
        tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
        if tensors and any(v.is_floating_point() for v in tensors.values()):
            return tensors
        for key in _WRAPPERS:
            if key in obj:
                inner = _unwrap(obj[key])
                if inner is not None:
                    return inner
    return None


def _natural(name: str) -> tuple:
    """Sort key giving module order for usual names: layers by number, weight before bias."""
    parts = name.split(".")
    key = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts[:-1]]
    last = {"weight": (0, 0, ""), "bias": (0, 1, "")}.get(parts[-1], (1, 0, parts[-1]))
    return (*key, last)


def infer_layout(sd: Mapping[str, torch.Tensor], arch: Mapping[str, Any] | None = None) -> ParamLayout:
    """Layout of a state dict: its floating-point tensors in natural name order; with `arch`, the architecture's.

    A canonical order (not the file's) makes the same model saved as .pt and
    as .safetensors (which sorts names) land under one layout_id.
    """
    if arch is not None:
        return ParamLayout.from_config(arch)
    floats = sorted(((k, tuple(v.shape)) for k, v in sd.items() if v.is_floating_point()), key=lambda kv: _natural(kv[0]))
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtypes.pop(), "float32") if len(dtypes) == 1 else "float32"
    return ParamLayout(floats, dtype=dtype, arch=None)


def import_dir(store: "ZooStore", folder: str | os.PathLike, arch: Mapping[str, Any] | None = None,
               zoo: str | None = None, dtype: str | None = None) -> dict[str, int]:
    """Import every checkpoint file under `folder`; returns counts {files, models, checkpoints, layouts}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder", "give a folder of .safetensors / .pt / .pth files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise UserError(f"no checkpoint files ({', '.join(SUFFIXES)}) under {folder}", "point at the folder that holds them")
    zoo = zoo or folder.resolve().name
    groups: dict[str, tuple[ParamLayout, list, list, list]] = {}
    for path in files:  # read and validate everything before writing anything
        sd = load_state_dict(path)
        layout = infer_layout(sd, arch)
        floats = OrderedDict((k, v) for k, v in sd.items() if v.is_floating_point())
        flat = layout.flatten(floats)  # names / shapes must match the layout; NaN/inf refused
        rel = path.relative_to(folder).as_posix()
        model_id = "imp-" + hashlib.sha256(f"{zoo}\0{rel}".encode()).hexdigest()[:16]
        model = {"model_id": model_id, "zoo": zoo,
                 "architecture": (layout.arch or {}).get("name", "imported"),
                 "arch_config": json.dumps(layout.arch) if layout.arch else None,
                 "layout_id": layout.layout_id, "dataset": None, "dataset_id": None, "task": None,
                 "width": (layout.arch or {}).get("width"), "depth": (layout.arch or {}).get("depth"),
                 "optimizer": None, "lr": None, "momentum": None, "weight_decay": None, "batch_size": None,
                 "epochs": None, "schedule": None, "seed": None, "status": "imported",
                 "hparams": json.dumps({"source": rel}), "source": rel}
        ckpt = {"checkpoint_id": f"{model_id}-import", "model_id": model_id, "epoch": None, "step": None,
                "train_loss": None, "train_acc": None, "test_loss": None, "test_acc": None, "source": rel}
        g = groups.setdefault(layout.layout_id, (layout, [], [], []))
        g[1].append(flat)
        g[2].append(model)
        g[3].append(ckpt)
    counts = {"files": len(files), "models": 0, "checkpoints": 0, "layouts": len(groups)}
    for layout, flats, models, ckpts in groups.values():
        stored = dtype or (layout.dtype if layout.dtype in ("float32", "float16", "bfloat16") else "float32")
        counts["models"] += store.append("models", models)
        counts["checkpoints"] += store.append_weights("checkpoints", torch.stack(flats), ckpts, layout, dtype=stored)
    return counts


def export_safetensors(store: "ZooStore", checkpoint_id: str, out: str | os.PathLike, table: str = "checkpoints") -> Path:
    """Write one stored checkpoint as a safetensors file of named tensors (layout and ids in its metadata)."""
    from safetensors.torch import save_file

    out = Path(out)
    w, meta = store.weights([checkpoint_id], table=table, verify=True)
    row = meta.iloc[0]
    layout = store.layout(row["layout_id"])
    tensors = {k: v.clone().contiguous() for k, v in layout.unflatten(w[0]).items()}
    info = {"checkpoint_id": checkpoint_id, "layout_id": layout.layout_id, "layout_json": layout.to_json(),
            "sha256": str(row["sha256"]), "format": "wsl-zoo"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, out)
    return out
