"""What travels with an exported checkpoint: safetensors header metadata, config.json and the model card.

The header (every format that writes safetensors) holds the layout JSON and
the checkpoint's and model's rows as JSON strings, so one file is enough to
rebuild the module and know where it came from. A Hugging Face folder's
config.json is the architecture config (what `PyTorchModelHubMixin`-style
loaders pass to the constructor); its README.md is a model card whose YAML
front matter carries the same rows structured (`wsl.model`, `wsl.checkpoint`,
`wsl.landscape`, `wsl.provenance`) for `huggingface_hub.ModelCard.load`, and
`wsl store import hf` reads them back.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from store.layout import ParamLayout

FORMAT = "wsl-zoo-checkpoint"
_TAGS = ["weight-space-learning", "model-zoo", "wsl-zoo"]


def clean(value: Any) -> Any:
    """A cell as plain JSON/YAML: numpy scalars unwrapped, NaN/inf -> None, timestamps -> text."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def row_dict(row: Mapping[str, Any], drop: Sequence[str] = ("weights",)) -> dict:
    """Non-null cells of a row, cleaned."""
    out = {}
    for k, v in row.items():
        if k in drop:
            continue
        v = clean(v)
        if v is not None:
            out[str(k)] = v
    return out


def header(layout: ParamLayout, model: Mapping[str, Any], ckpt: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata (str -> str): ids, sha256, layout JSON, and both rows as JSON."""
    return {"format": "pt", "wsl_format": FORMAT, "checkpoint_id": str(ckpt["checkpoint_id"]),
            "model_id": str(ckpt["model_id"]), "layout_id": layout.layout_id, "layout_json": layout.to_json(),
            "sha256": str(ckpt["sha256"]), "dtype": str(ckpt["dtype"]),
            "wsl_checkpoint": json.dumps(row_dict(ckpt), sort_keys=True),
            "wsl_model": json.dumps(row_dict(model), sort_keys=True)}


def config_json(layout: ParamLayout) -> dict:
    """config.json of a Hugging Face folder: the architecture config (the layout itself when there is none)."""
    return dict(layout.arch) if layout.arch else {"wsl_layout": layout.to_dict()}


def _table(d: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    rows = [f"| `{k}` | {json.dumps(v) if isinstance(v, (list, dict)) else v} |" for k, v in d.items() if k not in skip]
    return "| name | value |\n| --- | --- |\n" + "\n".join(rows) if rows else "(none)"


def model_card(layout: ParamLayout, model: Mapping[str, Any], ckpt: Mapping[str, Any],
               landscape: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """README.md of an exported model: structured front matter, then a short human-readable page."""
    from huggingface_hub import ModelCardData

    m, c = row_dict(model), row_dict(ckpt)
    land = [row_dict(r) for r in landscape]
    data = ModelCardData(library_name="wsl-zoo", tags=list(_TAGS),
                         wsl={"model": m, "checkpoint": c, "landscape": land, "provenance": clean(dict(provenance))})
    hp = {k: v for k, v in m.items() if k not in ("hparams", "arch_config")}
    metrics = {k: v for k, v in c.items() if k not in ("model_id",)}
    arch = json.dumps(layout.arch, sort_keys=True) if layout.arch else None
    load = ("```python\nimport json\nfrom safetensors.torch import load_file\nfrom store import ParamLayout\n\n"
            "config = json.load(open(\"config.json\"))\n"
            "module = ParamLayout.from_config(config).build_module()   # pip install wsl-zoo\n"
            "module.load_state_dict(load_file(\"model.safetensors\"))\n```\n") if arch else (
            "This layout has no architecture config: `model.safetensors` holds the named tensors "
            "(`safetensors.torch.load_file`), config.json the layout.\n")
    lines = [f"# {c.get('checkpoint_id', m.get('model_id', 'model'))}", "",
             f"One checkpoint of model `{m.get('model_id')}` from the zoo `{m.get('zoo')}`, exported by `wsl export` "
             f"(wsl-zoo). Architecture: `{arch or 'none recorded'}`.", "",
             "## Load it", "", load,
             "## Hyperparameters", "", _table(hp), "",
             "## Checkpoint and metrics", "", _table(metrics), ""]
    if land:
        lines += ["## Loss landscape", ""]
        for r in land:
            lines += [_table(r), ""]
    lines += ["## Provenance", "", _table(dict(provenance)), ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
