"""`wsl store import model-zoos PATH`: raw Ray Tune trial folders, as the Model Zoos dataset ships them.

A trial folder, as Ray Tune writes it (one per model):

    NN_tune_trainable_<trial>_<n>_seed=1_<date>/
        params.json            the trial's config (hyperparameters), JSON
        params.pkl             the same, pickled: never read
        result.json            one JSON object per line, one line per training iteration
                               (the trainable's metrics + Ray's own keys: training_iteration, trial_id, ...)
        progress.csv           the same as CSV: not needed
        checkpoint_000001/     (older Ray: checkpoint_1/) one folder per checkpointed iteration
            checkpoints        torch.save(model.state_dict()), read with torch.load(weights_only=True)
            .tune_metadata     pickled Ray state: never read

Every checkpoint folder becomes one `checkpoints` row of the trial's model,
its epoch the folder's number, which is the `training_iteration` of the
result line whose metrics it gets (lines are matched by that field, not by
position: Model Zoos' trainables log the untrained model as iteration 0,
older zoos start at 1). Ray 2 numbers checkpoint folders by checkpoint and
names the folder in the result line (`checkpoint_dir_name`): when lines
carry that key, it decides the epoch. The config's hyperparameters become `models`
columns (store/import_columns.py). The Model Zoos trainables log -999 for the
train metrics of the untrained model (`missing_values`): those cells are NULL.

The architecture is `--arch`, or recognised from the config (Model Zoos'
`model::type` MLP with its `model::*` keys maps onto our `mlp`); tensor names
are mapped onto the layout by store/names.py (`module_list.0.weight` ->
`layers.0.weight`, in order and by shape).

Bad input is an error naming the folder: no result.json, a checkpoint folder
without its weights file or without a result line, a checkpoint missing
between others (epochs 1, 2, 4 with result lines for 1-4). `skip_incomplete`
skips such trial folders instead (they are listed in the report's notes).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from store.errors import UserError
from store.import_columns import (CHECKPOINT_REQUIRED, CHECKPOINT_SYNONYMS, MODEL_REQUIRED, MODEL_SYNONYMS,
                                  RAY_RESULT_KEYS, _CKPT_TYPES, _MODEL_TYPES, flatten, split_columns)
from store.import_plan import CheckpointSource, ImportReport, ModelSource, run_import, stable_id
from store.statedict import SUFFIXES

CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
WEIGHTS_FILE = "checkpoints"  # what Model Zoos' trainables write into each checkpoint folder
MISSING_VALUES = (-999,)
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "gelu": "gelu", "sigmoid": "sigmoid", "silu": "silu",
                "leakyrelu": "leaky_relu", "leaky_relu": "leaky_relu"}


def is_trial(folder: Path) -> bool:
    if (folder / "params.json").is_file() or (folder / "result.json").is_file():
        return True
    try:
        return any(CHECKPOINT_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())
    except OSError:
        return False


def find_trials(root: Path) -> list[Path]:
    """Trial folders at or below `root` (hidden folders skipped), sorted."""
    if is_trial(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and is_trial(here):
            found.append(here)
            dirnames[:] = []
    return sorted(found)


def read_results(path: Path) -> dict[int, dict]:
    """result.json -> {training_iteration: line}; a repeated iteration (a restored trial) keeps its last line."""
    out: dict[int, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e})", "restore the file from the zoo's download") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {i} is not JSON ({e.msg})", "restore the file from the zoo's download") from None
        if not isinstance(rec, dict) or "training_iteration" not in rec:
            raise UserError(f"{path} line {i} has no training_iteration", "give result.json as Ray Tune writes it")
        try:
            out[int(rec["training_iteration"])] = rec
        except (TypeError, ValueError):
            raise UserError(f"{path} line {i}: training_iteration {rec['training_iteration']!r} is not a number",
                            "give result.json as Ray Tune writes it") from None
    if not out:
        raise UserError(f"{path} has no result lines", "the trial never reported a result: leave it out")
    return out


def recognise(config: Mapping[str, Any]) -> tuple[dict | None, str | None]:
    """(our architecture config, None) for a Model Zoos config we can rebuild exactly, else (None, why not)."""
    kind = config.get("model::type")
    if kind is None:
        return None, "the config has no model::type"
    if kind != "MLP":
        return None, (f"model::type {kind!r}: no built-in architecture computes the same function "
                      "(give --arch of a registered architecture with the same tensors)")
    try:
        h = config["model::h_dim"]
        hidden = [int(x) for x in (h if isinstance(h, list) else [h])]
        i_dim, o_dim = int(config["model::i_dim"]), int(config["model::o_dim"])
    except (KeyError, TypeError, ValueError) as e:
        return None, f"MLP config without usable model::i_dim / h_dim / o_dim ({e})"
    if len(set(hidden)) != 1:
        return None, f"MLP hidden sizes {hidden} differ per layer (our mlp has one width)"
    if config.get("model::use_bias", True) is False:
        return None, "MLP without biases (our mlp has biases)"
    act = _ACTIVATIONS.get(str(config.get("model::nlin", "relu")).lower())
    if act is None:
        return None, f"activation {config.get('model::nlin')!r} has no counterpart in our mlp"
    return ({"name": "mlp", "in_features": i_dim, "out_features": o_dim, "width": hidden[0], "depth": len(hidden),
             "activation": act, "dropout": float(config.get("model::dropout", 0.0) or 0.0)}, None)


def _weights_file(ckpt_dir: Path, name: str | None) -> Path:
    if name is not None:
        return ckpt_dir / name
    if (ckpt_dir / WEIGHTS_FILE).is_file():
        return ckpt_dir / WEIGHTS_FILE
    cands = [p for p in sorted(ckpt_dir.iterdir()) if p.is_file() and p.suffix in SUFFIXES
             and not p.name.startswith((".", "optim"))]
    if len(cands) == 1:
        return cands[0]
    return ckpt_dir / WEIGHTS_FILE  # reported as missing below


def _stride(epochs: list[int]) -> int:
    diffs = Counter(b - a for a, b in zip(epochs, epochs[1:]))
    top = max(diffs.values())
    return min(d for d, n in diffs.items() if n == top)


def _missing_value(v: Any, missing: Sequence[float]) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v in missing


def parse_trial(trial: Path, root: Path, zoo: str | None, arch: Mapping | None, dataset: str | None,
                checkpoint_file: str | None, missing: Sequence[float], notes: list[str]) -> ModelSource:
    rel = trial.relative_to(root).as_posix() if trial != root else trial.name
    result_path = trial / "result.json"
    if not result_path.is_file():
        raise UserError(f"trial folder {trial} has no result.json", "restore it from the zoo's download, or move the trial "
                        "folder out of PATH (or pass --skip-incomplete) to import the others")
    results = read_results(result_path)
    if (trial / "params.json").is_file():
        try:
            config = json.loads((trial / "params.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{trial / 'params.json'} is not readable JSON ({e})", "restore it from the zoo's download") from None
    else:
        config = next(iter(results.values())).get("config")
    if not isinstance(config, dict):
        raise UserError(f"trial folder {trial} has no params.json and result.json carries no config",
                        "restore params.json from the zoo's download")
    # Ray 2 numbers checkpoint folders by checkpoint, not by iteration, and names each in its result line
    named = {line["checkpoint_dir_name"]: it for it, line in results.items()
             if isinstance(line.get("checkpoint_dir_name"), str) and line["checkpoint_dir_name"]}
    ckpts: dict[int, Path] = {}
    for p in sorted(trial.iterdir()):
        m = CHECKPOINT_DIR.match(p.name)
        if m and p.is_dir():
            if named and p.name not in named:
                raise UserError(f"{p} is named by no line of {result_path} (checkpoint_dir_name)",
                                "restore result.json, or move the trial folder out of PATH (or pass --skip-incomplete)")
            e = named[p.name] if named else int(m.group(1))
            if e in ckpts:
                raise UserError(f"{ckpts[e].name} and {p.name} in {trial} are both epoch {e}", "keep one of them")
            ckpts[e] = p
    if not ckpts:
        raise UserError(f"trial folder {trial} has no checkpoint_N folders", "leave it out (or pass --skip-incomplete)")
    epochs = sorted(ckpts)
    weights = {e: _weights_file(ckpts[e], checkpoint_file) for e in epochs}
    for e in epochs:
        f = weights[e]
        if not f.is_file():
            raise UserError(f"epoch {e} of {trial}: {f} is missing",
                            "restore it, or move the trial folder out of PATH (or pass --skip-incomplete); "
                            "--checkpoint-file NAME if the weights file has another name")
        if e not in results:
            raise UserError(f"epoch {e} of {trial}: {ckpts[e].name} has no line with training_iteration {e} in result.json",
                            "restore result.json, or move the trial folder out of PATH (or pass --skip-incomplete)")
    if len(epochs) > 1:
        s = _stride(epochs)
        expected = [e for e in results if epochs[0] <= e <= epochs[-1] and (e - epochs[0]) % s == 0]
        gone = sorted(set(expected) - set(epochs))
        if gone:
            raise UserError(f"epoch {gone[0]} of {trial} is missing: result.json has it, but there is no "
                            f"checkpoint_{gone[0]:06d} (or checkpoint_{gone[0]}) between the others",
                            "restore it, or move the trial folder out of PATH (or pass --skip-incomplete)")
    zoo_name = zoo or (trial.parent.name if trial != root else trial.name)
    model_id = stable_id("model-zoos", zoo_name, trial.name)
    hp = flatten(config)
    standard, extra = split_columns(hp, MODEL_SYNONYMS, _MODEL_TYPES, MODEL_REQUIRED, notes=notes, what=rel)
    chosen, why = (dict(arch), None) if arch is not None else recognise(config)
    if chosen is None:
        notes.append(f"architecture not recognised ({why}); layout inferred from tensor names")
    columns = {**extra, **standard, "zoo": zoo_name, "dataset": dataset, "source": rel,
               "hparams": json.dumps(config, sort_keys=True, default=str)}
    columns.setdefault("epochs", max(results))
    task = hp.get("training::task")
    columns["task"] = task if task in ("classification", "regression") else None
    checkpoints = []
    nulled = 0
    for e in epochs:
        line = {k: v for k, v in flatten(results[e]).items() if k.split(".")[0] not in RAY_RESULT_KEYS}
        for k, v in list(line.items()):
            if _missing_value(v, missing):
                line[k] = None
                nulled += 1
        std, ext = split_columns(line, CHECKPOINT_SYNONYMS, _CKPT_TYPES, CHECKPOINT_REQUIRED, notes=notes, what=f"{rel} epoch {e}")
        f = weights[e]
        checkpoints.append(CheckpointSource(f, f.relative_to(root).as_posix() if trial != root else f"{trial.name}/"
                                            f"{f.relative_to(trial).as_posix()}", f"{model_id}-e{e:04d}", e, {**ext, **std}))
    if nulled:
        notes.append(f"metric values equal to {list(missing)} (the trainable's 'not measured') stored as NULL")
    return ModelSource(model_id, rel, columns, checkpoints, chosen,
                       "--arch" if arch is not None else ("params.json" if chosen else None))


def plan(path: str | os.PathLike, zoo: str | None = None, arch: Mapping | None = None, dataset: str | None = None,
         checkpoint_file: str | None = None, missing_values: Sequence[float] = MISSING_VALUES,
         skip_incomplete: bool = False) -> tuple[list[ModelSource], list[str]]:
    """The models and checkpoints a Model Zoos folder holds (nothing read but the JSON files)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder", "give the folder of Ray Tune trial folders (a Model Zoos zoo)")
    trials = find_trials(root)
    if not trials:
        raise UserError(f"no Ray Tune trial folders under {root} (folders with params.json, result.json or checkpoint_N/)",
                        "point at the zoo's experiment folder")
    notes: list[str] = []
    models = []
    skipped = []
    for t in trials:
        try:
            models.append(parse_trial(t, root, zoo, arch, dataset, checkpoint_file, tuple(missing_values), notes))
        except UserError as e:
            if not skip_incomplete:
                raise
            skipped.append(f"skipped {t.relative_to(root).as_posix() if t != root else t.name}: {e.message}")
    if skipped and not models:
        raise UserError(f"every trial folder under {root} is incomplete ({skipped[0]})", "point at a complete zoo")
    counted = [f"{n} ({k} trial folders)" if k > 1 else n for n, k in Counter(notes).items()]
    return models, skipped + counted


def import_model_zoos(target, path: str | os.PathLike, *, zoo: str | None = None, arch: Mapping | None = None,
                      dataset: str | None = None, rename=None, dtype: str | None = None,
                      checkpoint_file: str | None = None, missing_values: Sequence[float] = MISSING_VALUES,
                      skip_incomplete: bool = False, workers: int | None = None,
                      progress: Callable | None = None) -> ImportReport:
    """Import a Model Zoos / Ray Tune folder into `target` (a ZooStore or a store path); see the module docstring."""
    models, notes = plan(path, zoo, arch, dataset, checkpoint_file, missing_values, skip_incomplete)
    return run_import(target, models, fmt="model-zoos", source=str(path), rename=rename, dtype=dtype,
                      workers=workers, progress=progress, notes=notes)
