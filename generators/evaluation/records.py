"""The rows a generator leaves in a store: `generators` (one per generator), `generator_reports`, `samples`.

    record(store, gen, report, path)          # every sample of a report + the report + the generator's row
    record_generator(store, gen, path, rep)   # the generator's row (once) and the report (every one)
    rows = sample_rows(gen, condition, dataset_id, seed, kind, scores)   # `wsl generate sample`'s rows

The store is append-only with deterministic keys: re-recording the same report or the
same samples appends nothing.
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


def sample_id(generator_id: str, condition: str, seed: int, n: int, kind: str, idx: int) -> str:
    """Deterministic: the same generator, condition, seed and run size give the same ids (re-runs append nothing)."""
    h = hashlib.sha256(f"{condition}".encode()).hexdigest()[:8]
    return f"{generator_id}-{h}-s{seed}-n{n}-{kind}-{idx:05d}"


def sample_kind(kind: str, select: int = 1) -> str:
    """The samples.kind of a run: generated models filtered by training loss are 'generated-select{k}'."""
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


def generator_row(gen: WeightGenerator, path: str | os.PathLike | None, report: Report | None) -> dict[str, Any]:
    return {"generator_id": gen.generator_id, "method": gen.method, "layout_id": gen.layout.layout_id,
            "fit_where": gen.fit_info.get("where"), "num_train": int(gen.fit_info.get("num_train", 0)),
            "config": json.dumps(gen.config_dict(), sort_keys=True),
            "path": str(Path(path).resolve()) if path else None,
            "report": json.dumps(report.to_dict(timings=False), sort_keys=True, default=json_default) if report else None}


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
    row = generator_row(gen, path, report)
    if report is not None:
        text = row["report"]
        store.append("generator_reports", [{
            "generator_id": gen.generator_id, "report_id": hashlib.sha256(text.encode()).hexdigest()[:16],
            "conditions": json.dumps([c.condition for c in report.conditions]), "report": text}])
    if has_row(store, gen.generator_id):
        return 0  # append-only store: a generator's row is written once
    return store.append("generators", [row])
