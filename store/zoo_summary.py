"""What a zoo holds, for `wsl zoo list` and `wsl zoo show NAME`: its grid, counts, accuracy spread, phases.

A zoo is the models rows sharing a `zoo` name. Its **grid** is every hyperparameter column
of `models` that takes more than one value among them (the spec's sweep: width, lr,
dataset, ...), seeds counted apart; the **cells** are the grid's combinations, each with
its number of models and the min / mean / max of the final checkpoint's test accuracy
(the model's checkpoint with the highest epoch). Hyperparameter columns are the
contract's (architecture, dataset, width, depth, optimizer, lr, momentum, weight_decay,
batch_size, epochs, schedule) plus any zoo-specific column a spec added (architecture
knobs, optimizer betas, ...), less the bookkeeping ones in `NOT_HYPERPARAMETERS`.

The Hub card (store/card.py with store.hub.summarize) describes a published folder over
its shards; this module describes a local store's zoos over its views, with our values
bound as parameters and only metadata columns read (never `weights`).
"""
from __future__ import annotations

from typing import Any

from store.errors import UserError

# models columns that say which row it is or how it ran, not what was swept
NOT_HYPERPARAMETERS = ("model_id", "zoo", "arch_config", "layout_id", "dataset_id", "task", "status", "hparams",
                       "seed", "n_train", "steps_per_epoch", "checkpoint_epochs", "diverged_epoch")
MAX_VALUES = 12  # values listed per grid column before "N values, min .. max"
METRICS = ("test_acc", "test_loss")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def hyperparameter_columns(store) -> list[str]:
    """The models columns a zoo may sweep, in the table's order."""
    return [c for c in store.schema("models").names if c not in NOT_HYPERPARAMETERS]


def zoo_names(store) -> list[str]:
    """The zoos in the store, sorted."""
    return [str(z) for z in store.arrow("SELECT DISTINCT zoo FROM models WHERE zoo IS NOT NULL ORDER BY 1")
            .column(0).to_pylist()]


def _final(where: str) -> str:
    """Each selected model's last checkpoint (highest epoch, then step)."""
    return ("SELECT c.model_id, c.test_acc, c.test_loss FROM checkpoints c JOIN models m USING (model_id) "
            f"WHERE {where} QUALIFY row_number() OVER (PARTITION BY c.model_id "
            "ORDER BY c.epoch DESC NULLS LAST, c.step DESC NULLS LAST) = 1")


def _spread(rows: list[dict], metric: str) -> dict[str, Any]:
    vals = [r[metric] for r in rows if r.get(metric) is not None and r[metric] == r[metric]]
    if not vals:
        return {"models": 0, "min": None, "mean": None, "max": None}
    return {"models": len(vals), "min": min(vals), "mean": sum(vals) / len(vals), "max": max(vals)}


def values_text(values: list[Any]) -> str:
    """A grid column's values for people: all of them, or how many and their range."""
    if len(values) <= MAX_VALUES:
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)
    lo, hi = values[0], values[-1]
    fmt = (lambda v: f"{v:.4g}") if isinstance(lo, float) else str
    return f"{len(values)} values, {fmt(lo)} .. {fmt(hi)}"


def list_zoos(store) -> list[dict[str, Any]]:
    """One row per zoo: models, status counts, checkpoints, grid columns, final test accuracy spread, landscape rows."""
    hp = hyperparameter_columns(store)
    distinct = ", ".join(f"count(DISTINCT {_ident(c)}) AS {_ident('n_' + c)}" for c in hp)
    base = store.arrow(
        "SELECT zoo, count(*) AS models, count(DISTINCT seed) AS seeds, "
        "count(*) FILTER (WHERE status = $done) AS done, count(*) FILTER (WHERE status = $diverged) AS diverged, "
        "count(*) FILTER (WHERE status IS NULL OR status NOT IN ($done, $diverged)) AS other, "
        "string_agg(DISTINCT architecture, $sep ORDER BY architecture) AS architectures"
        + (f", {distinct}" if distinct else "") + " FROM models GROUP BY zoo ORDER BY zoo NULLS LAST",
        {"done": "done", "diverged": "diverged", "sep": ", "}).to_pylist()
    ckpt = {r["zoo"]: r["n"] for r in store.arrow(
        "SELECT m.zoo, count(*) AS n FROM checkpoints c JOIN models m USING (model_id) GROUP BY 1").to_pylist()}
    final = {r["zoo"]: r for r in store.arrow(
        "SELECT m.zoo, min(f.test_acc) AS lo, avg(f.test_acc) AS mean, max(f.test_acc) AS hi "
        f"FROM ({_final('TRUE')}) f JOIN models m USING (model_id) GROUP BY 1").to_pylist()}
    land = {r["zoo"]: r["n"] for r in store.arrow(
        "SELECT m.zoo, count(*) AS n FROM landscape l JOIN models m USING (model_id) GROUP BY 1").to_pylist()}
    out = []
    for r in base:
        z = r["zoo"]
        f = final.get(z, {})
        out.append({"zoo": z, "models": r["models"], "done": r["done"], "diverged": r["diverged"], "other": r["other"],
                    "checkpoints": ckpt.get(z, 0), "architectures": r["architectures"],
                    "grid": ", ".join(c for c in hp if r[f"n_{c}"] > 1), "seeds": r["seeds"],
                    "test_acc_min": f.get("lo"), "test_acc_mean": f.get("mean"), "test_acc_max": f.get("hi"),
                    "landscape_rows": land.get(z, 0)})
    return out


def summarize_zoo(store, name: str) -> dict[str, Any]:
    """Everything `wsl zoo show NAME` prints: counts, grid, fixed values, accuracy spread per cell and overall, phases."""
    p = {"zoo": name}
    n = store.arrow("SELECT count(*) AS n FROM models WHERE zoo = $zoo", p).column(0)[0].as_py()
    if not n:
        known = zoo_names(store)
        raise UserError(f"no zoo named {name!r} in store {store.path}",
                        f"use one of: {', '.join(known[:12])}" + (" ..." if len(known) > 12 else "")
                        if known else "train one first: wsl zoo train SPEC")
    hp = hyperparameter_columns(store)
    grid: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for c in hp:
        vals = store.arrow(f"SELECT DISTINCT {_ident(c)} AS v FROM models WHERE zoo = $zoo AND {_ident(c)} IS NOT NULL "
                           "ORDER BY 1", p).column(0).to_pylist()
        if len(vals) > 1:
            grid[c] = vals
        elif len(vals) == 1:
            fixed[c] = vals[0]
    status = {r["status"]: r["n"] for r in store.arrow(
        "SELECT coalesce(status, $unknown) AS status, count(*) AS n FROM models WHERE zoo = $zoo "
        "GROUP BY 1 ORDER BY 2 DESC, 1", {**p, "unknown": "unknown"}).to_pylist()}
    seeds = store.arrow("SELECT count(DISTINCT seed) FROM models WHERE zoo = $zoo", p).column(0)[0].as_py()
    ck = store.arrow("SELECT count(*) AS n, count(DISTINCT c.model_id) AS models, min(c.epoch) AS lo, max(c.epoch) AS hi "
                     "FROM checkpoints c JOIN models m USING (model_id) WHERE m.zoo = $zoo", p).to_pylist()[0]
    cols = ", ".join(f"m.{_ident(c)}" for c in grid)
    final_rows = store.arrow(f"SELECT f.test_acc, f.test_loss{', ' + cols if cols else ''} "
                             f"FROM ({_final('m.zoo = $zoo')}) f JOIN models m USING (model_id)", p).to_pylist()
    cells = []
    if grid:
        group = ", ".join(f"m.{_ident(c)}" for c in grid)
        cells = store.arrow(
            f"SELECT {group}, count(*) AS models, count(f.model_id) AS with_checkpoints, "
            "min(f.test_acc) AS test_acc_min, avg(f.test_acc) AS test_acc_mean, max(f.test_acc) AS test_acc_max "
            f"FROM models m LEFT JOIN ({_final('m.zoo = $zoo')}) f USING (model_id) WHERE m.zoo = $zoo "
            f"GROUP BY {group} ORDER BY {group}", p).to_pylist()
    phases = {r["phase"]: r["n"] for r in store.arrow(
        "SELECT coalesce(l.phase, $none) AS phase, count(*) AS n FROM landscape l JOIN models m USING (model_id) "
        "WHERE m.zoo = $zoo GROUP BY 1 ORDER BY 1", {**p, "none": "(none)"}).to_pylist()}
    recipes = store.arrow("SELECT count(DISTINCT l.recipe_id) FROM landscape l JOIN models m USING (model_id) "
                          "WHERE m.zoo = $zoo", p).column(0)[0].as_py()
    return {
        "zoo": name, "models": int(n), "status": status, "seeds": int(seeds or 0),
        "checkpoints": int(ck["n"]), "models_with_checkpoints": int(ck["models"]),
        "epochs": None if ck["lo"] is None else [int(ck["lo"]), int(ck["hi"])],
        "grid": grid, "fixed": fixed,
        "accuracy": {m: _spread(final_rows, m) for m in METRICS},
        "cells": cells,
        "landscape_rows": int(sum(phases.values())), "landscape_recipes": int(recipes or 0), "phases": phases,
    }
