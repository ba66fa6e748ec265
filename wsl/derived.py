"""Keep what weight-space operations make: averaged and pruned weights as new models with their lineage.

    ids = save_derived(store, weights, layout, parents=[["m0-e0018", "m0-e0019", "m0-e0020"]],
                       operation="average", params=[{"mode": "last-k", "k": 3}], scores=[...])

Each result becomes one `models` row and one `checkpoints` row (so SQL can
select, evaluate, export and publish it like a trained model):

- `model_id` = "drv-" + hash of (operation, params, parent checkpoint ids):
  the same operation on the same parents is the same model, so `--save`
  twice is a no-op;
- the parents' model columns where all parents agree (zoo, architecture,
  dataset, width, lr, ...; differing ones such as `seed` are NULL),
  `status` = "derived", and the lineage columns `parent_checkpoint_ids`
  (list of strings, in the operation's order), `operation` and
  `operation_params` (JSON);
- checkpoint `<model_id>-derived` with NULL epoch; its test_loss / test_acc
  when it was scored on its models' dataset's test split, and every score
  also as an `evaluations` row (dataset, split, loss, accuracy).

    SELECT model_id, operation, operation_params, test_acc FROM models JOIN checkpoints USING (model_id)
    WHERE operation = 'prune' AND list_contains(parent_checkpoint_ids, 'm0-e0020')
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import pyarrow as pa
import torch

from store.errors import UserError
from store.layout import ParamLayout
from store.schema import TABLES

LINEAGE = ("parent_checkpoint_ids", "operation", "operation_params")
_NOT_INHERITED = {"model_id", "layout_id", "status", "hparams", "source", "import_format", *LINEAGE}


def derived_id(operation: str, params: Mapping[str, Any], parents: Sequence[str]) -> str:
    key = json.dumps({"operation": operation, "params": params, "parents": list(parents)}, sort_keys=True, default=str)
    return "drv-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _shared(rows: Sequence[dict]) -> dict[str, Any]:
    """Columns on which every parent model agrees (NULL where they differ)."""
    out: dict[str, Any] = {}
    for k in rows[0]:
        if k in _NOT_INHERITED:
            continue
        v = rows[0][k]
        out[k] = v if all(_equal(r.get(k), v) for r in rows[1:]) else None
    return out


def save_derived(store, weights: torch.Tensor, layout: ParamLayout, parents: Sequence[Sequence[str]], operation: str,
                 params: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any] | None] | None = None) -> list[str]:
    """Append M derived models ([M, P] weights) with their lineage; returns their checkpoint ids.

    scores[i]: {"dataset", "dataset_id", "split", "loss", "accuracy"} of result i (or None).
    """
    w = layout.check_flat(weights if weights.dim() == 2 else weights.unsqueeze(0), what=f"{operation} results")
    m = w.shape[0]
    if len(parents) != m or len(params) != m or (scores is not None and len(scores) != m):
        raise UserError(f"{m} {operation} results but {len(parents)} parent lists / {len(params)} parameter sets",
                        "give one of each per result")
    all_parents = sorted({p for ps in parents for p in ps})
    if not all_parents or any(not ps for ps in parents):
        raise UserError(f"every {operation} result needs its parent checkpoints", "pass the checkpoint ids it came from")
    pc = store.sql("SELECT checkpoint_id, model_id FROM checkpoints WHERE checkpoint_id IN (SELECT unnest($ids))",
                   {"ids": all_parents})
    owner = dict(zip(pc.checkpoint_id, pc.model_id))
    missing = [p for p in all_parents if p not in owner]
    if missing:
        raise UserError(f"parent checkpoints {missing[:5]} are not in store {store.path}", "save results of stored checkpoints")
    mrows = {r["model_id"]: r for r in store.arrow("SELECT * FROM models WHERE model_id IN (SELECT unnest($ids))",
                                                   {"ids": sorted(set(owner.values()))}).to_pylist()}
    models, ckpts, evals = [], [], []
    for i in range(m):
        mid = derived_id(operation, params[i], parents[i])
        parent_models = [mrows[owner[p]] for p in parents[i] if owner[p] in mrows]
        row = _shared(parent_models) if parent_models else {}
        row.update(model_id=mid, layout_id=layout.layout_id, status="derived",
                   hparams=json.dumps({"operation": operation, **params[i]}, sort_keys=True, default=str),
                   parent_checkpoint_ids=list(parents[i]), operation=operation,
                   operation_params=json.dumps(params[i], sort_keys=True, default=str))
        if layout.arch is not None:
            row.setdefault("architecture", layout.arch.get("name"))
        models.append(row)
        cid = f"{mid}-derived"
        crow = {"checkpoint_id": cid, "model_id": mid, "epoch": None, "step": None, "train_loss": None,
                "train_acc": None, "test_loss": None, "test_acc": None}
        s = scores[i] if scores is not None else None
        if s is not None:
            if s.get("split") == "test" and s.get("dataset") is not None and s.get("dataset") == row.get("dataset"):
                crow["test_loss"], crow["test_acc"] = s.get("loss"), s.get("accuracy")
            evals.append({"checkpoint_id": cid, "model_id": mid, "dataset": s.get("dataset"),
                          "dataset_id": s.get("dataset_id"), "split": s.get("split"), "loss": s.get("loss"),
                          "accuracy": s.get("accuracy")})
        ckpts.append(crow)
    for r in models:
        for c, _ in TABLES["models"].columns:
            r.setdefault(c, None)
    table = pa.Table.from_pylist(models)
    lineage = pa.array([r["parent_checkpoint_ids"] for r in models], pa.list_(pa.string()))
    table = table.set_column(table.schema.get_field_index("parent_checkpoint_ids"), "parent_checkpoint_ids", lineage)
    store.append("models", table)
    store.append_weights("checkpoints", w, ckpts, layout)
    if evals:
        store.append("evaluations", evals)
    return [c["checkpoint_id"] for c in ckpts]
