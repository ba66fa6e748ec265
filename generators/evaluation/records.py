"""The rows a generator leaves in a store: `generators` (one per generator), `generator_reports`, `samples`.

    path = keep(store, gen)                   # at fit: STORE/generators/<id>/ (or out=DIR) + its generators row
    record(store, gen, report, path)          # every sample of a report + the report + the generator's row
    record_generator(store, gen, path, rep)   # the generator's row (once) and the report (every one)
    rows = sample_rows(gen, condition, dataset_id, seed, kind, scores)   # `wsl generate sample`'s rows
    gen, path = open_generator("3f2a...", store)   # a folder, a generator id of the store, or ORG/NAME

The generators row says what the generator was fit on (its training_set.json): method,
options, layout(s), zoo, the exact checkpoint ids with their count and digest, the
protocol's held-out tasks, fit seconds, library versions, and where its folder is: a path
relative to the store (`generators/<id>`, so a copied or pulled store still finds it), an
absolute path (`--out`), or `hf://ORG/NAME@commit`. A samples row is only written after
its generator's row. The store is append-only with deterministic keys: re-recording the
same report or the same samples appends nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from generators.evaluation.report import Report, json_default
from generators.interface import WeightGenerator
from store.errors import UserError


def sample_id(generator_id: str, condition: str, seed: int, n: int, kind: str, idx: int) -> str:
    """Deterministic: the same generator, condition, seed and run size give the same ids (re-runs append nothing)."""
    h = hashlib.sha256(f"{condition}".encode()).hexdigest()[:8]
    return f"{generator_id}-{h}-s{seed}-n{n}-{kind}-{idx:05d}"


def sample_kind(kind: str, select: int = 1) -> str:
    """The samples.kind of a run: generated models filtered by training loss are 'generated-select{k}'.

    The raw samples a selected report keeps beside them ('generated-raw') are what a run
    with select=1 gives: kind 'generated'. Baselines keep their names (noise-0.06, ...,
    retrieval-select, retrieval-nearest, shuffled-condition, fresh).
    """
    if kind == "generated-raw":
        return "generated"
    return f"{kind}-select{select}" if kind == "generated" and select > 1 else kind


def sample_rows(gen: WeightGenerator, condition: str, dataset_id: str, seed: int, kind: str,
                scores: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    n = len(scores["test_acc"])
    return [{"sample_id": sample_id(gen.generator_id, condition, seed, n, kind, i), "generator_id": gen.generator_id,
             "kind": kind, "condition": condition, "dataset_id": dataset_id, "seed": int(seed), "idx": i,
             "test_loss": _f(scores["test_loss"][i]), "test_acc": _f(scores["test_acc"][i]),
             "nn_l2": _f(scores["nn_l2"][i])} for i in range(n)]


def _f(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


STORE_FOLDER = "generators"  # STORE/generators/<generator_id>/ (beside the table's parts, which are files)


def store_folder(store, generator_id: str) -> Path:
    return Path(store.path) / STORE_FOLDER / generator_id


def path_for_row(store, path: str | os.PathLike | None) -> str | None:
    """How a row names a folder: relative to the store when inside it, else absolute; hf:// URLs as they are."""
    if path is None:
        return None
    if str(path).startswith("hf://"):
        return str(path)
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(Path(store.path).resolve()).as_posix()
    except ValueError:
        return str(p)


def generator_row(gen: WeightGenerator, path: str | None, report: Report | None) -> dict[str, Any]:
    t = gen.training or {}
    layouts = t.get("layout_ids") or [gen.layout.layout_id]
    return {"generator_id": gen.generator_id, "method": gen.method, "layout_id": gen.layout.layout_id,
            "fit_where": t.get("where", gen.fit_info.get("where")), "num_train": int(gen.fit_info.get("num_train", 0)),
            "config": json.dumps(gen.config_dict(), sort_keys=True), "path": path,
            "report": json.dumps(report.to_dict(timings=False), sort_keys=True, default=json_default) if report else None,
            "layout_ids": json.dumps(list(layouts)), "zoo": ",".join(t.get("zoo") or []) or None,
            "fit_params": json.dumps(t.get("params") or {}, sort_keys=True, default=str),
            "checkpoint_ids": json.dumps(list(t.get("checkpoint_ids") or [])), "train_digest": t.get("digest"),
            "fit_datasets": json.dumps(t.get("datasets") or sorted(gen.fit_info.get("conditions") or {})),
            "protocol": t.get("protocol"), "held_out": json.dumps(list(t.get("held_out") or [])),
            "fit_seconds": float(t["fit_seconds"]) if t.get("fit_seconds") is not None else None,
            "versions": json.dumps(t.get("versions") or {}, sort_keys=True)}


def keep(store, gen: WeightGenerator, out: str | os.PathLike | None = None) -> Path:
    """Save a just-fit generator under the store (or `out`) and write its generators row; returns the folder.

    The folder is written first (atomically, saving.py), the row after it: a row never
    names a folder that is not there.
    """
    folder = Path(out) if out is not None else store_folder(store, gen.generator_id)
    gen.save_pretrained(folder)
    record_generator(store, gen, folder, None)
    return folder


def record(store, gen: WeightGenerator, report: Report, path: str | os.PathLike | None = None) -> dict[str, int]:
    """Append the generators row and every sample (generated + baselines) with its scores. Idempotent."""
    written = {"samples": 0, "generators": 0}
    written["generators"] = record_generator(store, gen, path, report)
    for c in report.conditions:
        for kind, w in c.samples.items():
            rows = sample_rows(gen, c.condition, c.dataset_id, report.seed, sample_kind(kind, report.select),
                               c.scores[kind])
            written["samples"] += store.append_weights("samples", w, rows, gen.layout)
    return written


def has_row(store, generator_id: str) -> bool:
    if not store.count("generators"):
        return False
    df = store.sql("SELECT count(*) AS n FROM generators WHERE generator_id = $id", {"id": generator_id})
    return int(df["n"][0]) > 0


def record_generator(store, gen: WeightGenerator, path, report: Report | None) -> int:
    """Append the report to `generator_reports` (every report is kept) and the generators row (once).

    Returns the number of generators rows written (0 when the generator was recorded before).
    """
    row = generator_row(gen, path_for_row(store, path if path is not None else gen.source), report)
    if report is not None:
        text = row["report"]
        store.append("generator_reports", [{
            "generator_id": gen.generator_id, "report_id": hashlib.sha256(text.encode()).hexdigest()[:16],
            "conditions": json.dumps([c.condition for c in report.conditions]), "report": text}])
    if has_row(store, gen.generator_id):
        return 0  # append-only store: a generator's row is written once
    return store.append("generators", [row])


def row_of(store, generator_id: str) -> dict[str, Any] | None:
    """The generators row of an id, or None."""
    if not store.count("generators"):
        return None
    df = store.sql("SELECT * FROM generators WHERE generator_id = $id", {"id": generator_id})
    return None if df.empty else df.iloc[0].to_dict()


def open_generator(ref: str | os.PathLike, store=None, revision: str | None = None) -> tuple[WeightGenerator, str]:
    """A generator from a folder, a generator id recorded in `store`, or a Hub model repo ORG/NAME.

    Returns (generator, where it came from). An id whose row names a folder that is gone
    is a UserError saying where it looked.
    """
    from generators.saving import load_generator, looks_like_repo_id

    text = str(ref)
    if Path(text).expanduser().is_dir():
        gen = load_generator(Path(text))
        return gen, gen.source
    row = row_of(store, text) if store is not None and not looks_like_repo_id(text) else None
    if row is not None:
        path = row.get("path")
        if not path:
            raise UserError(f"generator {text} has a row in store {store.path} but no recorded folder",
                            "give the generator's folder, or refit it into this store")
        if str(path).startswith("hf://"):
            repo, _, commit = str(path)[5:].partition("@")
            gen = load_generator(repo, revision=commit or revision)
            return gen, gen.source
        folder = Path(path) if Path(path).is_absolute() else Path(store.path) / path
        if not folder.is_dir():
            raise UserError(f"generator {text}: its folder {folder} is missing",
                            "restore the folder, pull the store again, or refit the generator")
        gen = load_generator(folder)
        return gen, gen.source
    gen = load_generator(text, revision=revision)
    return gen, gen.source
