"""A zoo's own hyperparameter and metric names -> `models` / `checkpoints` columns you can query.

Imported zoos name things their way (`optim::lr`, `training::batchsize`,
`test_accuracy`). Every value is kept twice: under its own name, made a SQL
identifier (`optim::lr` -> `optim_lr`, nested dicts joined with `_`), and,
when its last name part is a well-known synonym, in our standard column too
(`lr`, `batch_size`, `test_acc`, ...). The original dict is kept as JSON in
`models.hparams`. A synonym found twice with different values fills no
standard column (the report says so) rather than guessing.

Types are unified per column over all rows: ints and floats -> float64,
anything mixed with text -> text (JSON for lists), so one import writes one
schema.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import pyarrow as pa

from store.errors import UserError
from store.schema import TABLES

# Ray Tune's own bookkeeping in every result line (ray.tune.result): not metrics of the model.
RAY_RESULT_KEYS = frozenset({
    "done", "timesteps_total", "episodes_total", "training_iteration", "trial_id", "experiment_id", "date",
    "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "timesteps_since_restore", "iterations_since_restore", "warmup_time", "experiment_tag", "should_checkpoint",
    "checkpoint_dir_name", "timesteps_this_iter", "episodes_this_iter", "perf", "neg_mean_loss",
})

# standard models column <- the last part of a hyperparameter's name (lower case)
MODEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "lr": ("lr", "learning_rate"),
    "momentum": ("momentum",),
    "weight_decay": ("weight_decay", "wd"),
    "batch_size": ("batch_size", "batchsize"),
    "optimizer": ("optimizer", "optim"),
    "seed": ("seed",),
    "epochs": ("epochs", "epochs_train", "num_epochs", "max_epochs"),
    "schedule": ("schedule", "scheduler", "lr_schedule"),
}
_MODEL_TYPES = {"lr": float, "momentum": float, "weight_decay": float, "batch_size": int, "optimizer": str,
                "seed": int, "epochs": int, "schedule": str}
CHECKPOINT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss",),
    "train_acc": ("train_acc", "train_accuracy"),
    "test_loss": ("test_loss",),
    "test_acc": ("test_acc", "test_accuracy"),
    "step": ("step", "global_step"),
}
_CKPT_TYPES = {"train_loss": float, "train_acc": float, "test_loss": float, "test_acc": float, "step": int}

MODEL_REQUIRED = frozenset(TABLES["models"].column_names)
CHECKPOINT_REQUIRED = frozenset(TABLES["checkpoints"].column_names)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level, keys joined with '.' ({"optim": {"lr": 1}} -> {"optim.lr": 1})."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def identifier(key: str) -> str:
    """A hyperparameter name as a SQL identifier: letters, digits and '_' (`optim::lr` -> `optim_lr`)."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", str(key)).strip("_") or "value"
    return f"hp_{name}" if name[0].isdigit() else name


def _last(key: str) -> str:
    return re.split(r"::|[./:]", str(key))[-1].strip().lower().replace("-", "_")


def _scalar(v: Any) -> Any:
    """JSON-able cell value: lists/tuples/dicts as JSON text, non-finite floats as None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True, default=str)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _cast(v: Any, kind: type) -> Any:
    if v is None or isinstance(v, bool):
        return None
    try:
        if kind is float:
            f = float(v)
            return f if math.isfinite(f) else None
        if kind is int:
            f = float(v)
            return int(f) if f.is_integer() else None
        return v if isinstance(v, str) else None
    except (TypeError, ValueError):
        return None


_PLANS: dict[tuple, list[tuple[str, str | None, str | None, bool]]] = {}


def _plan(keys: tuple[str, ...], synonyms: Mapping[str, tuple[str, ...]], required: frozenset,
          skip: frozenset, direct: frozenset) -> list[tuple[str, str | None, str | None, bool]]:
    """Per key: (key, standard column it may fill, extra column name, taken directly). Cached: zoos repeat their keys."""
    ck = (keys, id(synonyms), required, skip, direct)
    hit = _PLANS.get(ck)
    if hit is not None:
        return hit
    plan, taken = [], set()
    for key in keys:
        if key in skip:
            continue
        if key in direct:
            plan.append((key, key, None, True))
            continue
        last = _last(key)
        col = next((c for c, names in synonyms.items() if last in names and not (c in direct and c in keys)), None)
        name = identifier(key)
        if name in required:
            name = None if name in synonyms else f"hp_{name}"
        if name is not None:
            base, i = name, 2
            while name in taken:
                name = f"{base}_{i}"
                i += 1
            taken.add(name)
        plan.append((key, col, name, False))
    if len(_PLANS) > 10_000:
        _PLANS.clear()
    _PLANS[ck] = plan
    return plan


def split_columns(values: Mapping[str, Any], synonyms: Mapping[str, tuple[str, ...]], types: Mapping[str, type],
                  required: frozenset, skip: Iterable[str] = (), notes: list[str] | None = None,
                  what: str = "", direct: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(standard columns, extra columns) from one flat dict of a zoo's values.

    `direct`: standard column names taken as they are (a table that already
    uses our names, such as the sidecar `wsl export` writes).
    """
    standard: dict[str, Any] = {}
    ambiguous: set[str] = set()
    extra: dict[str, Any] = {}
    for key, col, name, is_direct in _plan(tuple(values), synonyms, required, frozenset(skip), frozenset(direct)):
        raw = values[key]
        if is_direct:
            standard[key] = _scalar(raw)
            continue
        if col is not None:
            cast = _cast(raw, types[col])
            if cast is not None:
                if col in standard and standard[col] != cast:
                    ambiguous.add(col)
                standard.setdefault(col, cast)
        if name is not None:
            extra[name] = _scalar(raw)
    for col in ambiguous:
        standard.pop(col, None)
        if notes is not None:
            notes.append(f"{what}: several values for {col} ({', '.join(synonyms[col])}); left {col} empty")
    return standard, extra


def unify(rows: Sequence[Mapping[str, Any]], schema: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """Rows of dicts -> an Arrow table with one type per column (required types from `schema`)."""
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    schema = dict(schema or {})
    arrays, fields = [], []
    for name in names:
        vals = [r.get(name) for r in rows]
        if name in schema:
            typ = schema[name]
        else:
            typ = _infer(vals)
            if typ == pa.string():
                vals = [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in vals]
            elif typ == pa.float64():
                vals = [None if v is None else float(v) for v in vals]
        try:
            arrays.append(pa.array(vals, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            bad = next((v for v in vals if v is not None), None)
            raise UserError(f"column {name!r} must hold {typ} values, got e.g. {bad!r} ({e})",
                            f"give {name} as {typ} (or leave it empty)") from None
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _infer(vals: Sequence[Any]) -> pa.DataType:
    kinds = {type(v) for v in vals if v is not None}
    if not kinds:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds == {str}:
        return pa.string()
    return pa.string()
