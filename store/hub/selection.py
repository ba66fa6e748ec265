"""What `wsl publish` ships: one read-only SELECT per table, its bound parameters, and its row count.

A `--where` picks models through the one pool of store/filters.py (models LEFT JOIN
checkpoints: any column of models or checkpoints, or a whole SELECT of model ids); the
tables tied to models by `model_id` keep only the selected models' rows, and `layouts`
and `datasets` only the rows the published tables reference. Our own values (ids) travel
as bound parameters; each query gets exactly the parameters it names.

Generators travel with the zoo they were fit on (`generators`): by default every
generator whose recorded training checkpoints all belong to the selected models and
whose folder is on this machine; "none"; or a SQL condition over the `generators` table.
Their rows, reports and samples follow that choice, and a published row's `path` names
the generator's folder in the repo (`generators/<id>`), not the publisher's disk.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from store import filters
from store.errors import UserError
from store.schema import TABLES

GENERATOR_TABLES = ("generators", "generator_reports", "samples")
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def parse_tables(tables: Iterable[str] | str | None) -> list[str] | None:
    """`["models,checkpoints", "landscape"]` -> ["models", "checkpoints", "landscape"]; unknown names are a UserError."""
    if tables is None:
        return None
    if isinstance(tables, str):
        tables = [tables]
    names = [n.strip() for item in tables for n in str(item).split(",") if n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise UserError(f"unknown table(s) {unknown}", f"use some of: {', '.join(TABLES)}")
    return list(dict.fromkeys(names))


def params_for(query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters a query names (DuckDB refuses unused ones); None when it names none."""
    used = {k: params[k] for k in _PARAM.findall(query) if k in params}
    return used or None


@dataclass
class Selection:
    """What gets published: one read-only SELECT per table over the store's views, and its row count."""

    where: str | None
    queries: dict[str, str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    generators: dict[str, str] = field(default_factory=dict)  # generator id -> its folder on this machine

    @property
    def tables(self) -> list[str]:
        return list(self.queries)

    def query_params(self, table: str) -> dict[str, Any] | None:
        return params_for(self.queries[table], self.params)


def _columns(store, table: str) -> list[str]:
    return store.schema(table).names


def _count(store, query: str, params: dict[str, Any]) -> int:
    q = f"SELECT count(*) AS n FROM ({query}) AS __q"
    return int(store.arrow(q, params_for(q, params)).column(0)[0].as_py())


def folder_of(store, path: Any) -> Path | None:
    """The local folder a generators row's `path` names (relative to the store, or absolute), if it is there."""
    if not isinstance(path, str) or not path or path.startswith("hf://"):
        return None
    p = Path(path) if Path(path).is_absolute() else Path(store.path) / path
    return p if (p / "config.json").is_file() else None


def _ids(value: Any) -> list[str]:
    try:
        ids = json.loads(value) if isinstance(value, str) else []
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def choose_generators(store, generators: str | None, model_ids: str | None, notes: list[str]) -> dict[str, Path]:
    """{generator_id: folder} to publish (see the module docstring); model_ids: the selected models' subquery."""
    if generators is not None and generators.strip().lower() == "none":
        return {}
    if not store.count("generators"):
        if generators is not None:
            raise UserError(f"--generators {generators!r}: store {store.path} has no generators",
                            "fit one with `wsl generate fit`, or leave --generators out")
        return {}
    cols = _columns(store, "generators")
    ids_col = "checkpoint_ids" if "checkpoint_ids" in cols else "NULL AS checkpoint_ids"
    q = f"SELECT generator_id, path, {ids_col} FROM generators"
    if generators is not None:
        q += f" WHERE (\n{generators}\n)"
    try:
        rows = store.sql(q + " ORDER BY generator_id")
    except UserError as e:
        raise UserError(f"--generators {generators!r} is not a valid filter over the generators table ({e.message})",
                        "give 'none' or a SQL condition, e.g. --generators \"method = 'diffusion'\"") from None
    if generators is not None and rows.empty:
        raise UserError(f"--generators {generators!r} selects no generator", "check it with: wsl query \"SELECT * FROM generators\"")
    fit_on = None
    if generators is None and model_ids is not None:
        fit_on = set(store.sql(f"SELECT checkpoint_id FROM checkpoints WHERE model_id IN ({model_ids})")["checkpoint_id"])
    out: dict[str, Path] = {}
    for gid, path, ids in zip(rows["generator_id"], rows["path"], rows["checkpoint_ids"]):
        folder = folder_of(store, path)
        if folder is None:
            if generators is not None:
                raise UserError(f"generator {gid}: its folder ({path}) is not on this machine",
                                "publish from the machine that has it, or leave it out of --generators")
            notes.append(f"generator {gid}: left out, its folder ({path}) is not on this machine")
            continue
        if fit_on is not None:
            ids = _ids(ids)
            if not ids or not set(ids) <= fit_on:
                notes.append(f"generator {gid}: left out, not fit on the selected models (--generators names it to publish it)")
                continue
        out[str(gid)] = folder
    return out


def select(store, where: str | None = None, tables: Iterable[str] | str | None = None,
           generators: str | None = None) -> Selection:
    """The rows to publish.

    where: a filter over the pool (e.g. "lr > 0.01 AND architecture = 'mlp'"); tables
    tied to models by `model_id` (checkpoints, optimizer_states, landscape,
    evaluations) keep only the selected models' rows, `layouts` and `datasets` only
    the rows those reference. `generators`, `generator_reports` and `samples` keep the
    rows of the chosen generators (choose_generators). tables: default every non-empty
    table; tables that end up empty are left out (noted). Nothing to publish, or a
    --where that matches no model, is a UserError.
    """
    chosen = parse_tables(tables)
    where = filters.clean(where)
    params: dict[str, Any] = {}
    notes: list[str] = []
    base: dict[str, str] = {}
    if where:
        try:
            n_models = len(filters.select_models(store, where, allow_empty=True))
        except UserError as e:
            raise UserError(f"--where {where!r} is not a valid filter over models and checkpoints ({e.message})",
                            "give a SQL condition on their columns, e.g. --where \"lr > 0.01 AND epochs >= 10\"") from None
        if n_models == 0:
            raise UserError(f"no models match --where {where!r}: nothing to publish", filters.HINT)
        sel_ids = filters.model_ids_subquery(where)
        for t in TABLES:
            if t in ("layouts", "datasets") or t in GENERATOR_TABLES:
                continue  # below: what the other tables reference; the chosen generators' rows
            if "model_id" in _columns(store, t):
                base[t] = f"SELECT * FROM {t} WHERE model_id IN ({sel_ids})"
    else:
        sel_ids = None
        base = {t: f"SELECT * FROM {t}" for t in TABLES if t not in GENERATOR_TABLES}
    chosen_gens = choose_generators(store, generators, sel_ids, notes) if chosen is None or set(chosen) & set(GENERATOR_TABLES) else {}
    params["wsl_generators"] = sorted(chosen_gens)
    gen_filter = "generator_id IN (SELECT unnest($wsl_generators))"
    for t in GENERATOR_TABLES:
        if t == "generators":  # the row names the folder in the repo, not the publisher's disk
            base[t] = f"SELECT * REPLACE ('generators/' || generator_id AS path) FROM {t} WHERE {gen_filter}"
        else:
            base[t] = f"SELECT * FROM {t} WHERE {gen_filter}"
    if where:
        referencing = [t for t in base if chosen is None or t in chosen or t == "models"]
        for t, col in (("layouts", "layout_id"), ("datasets", "dataset_id")):
            refs = [f"SELECT {col} FROM ({base[r]}) AS __r{i}" for i, r in enumerate(referencing)
                    if col in _columns(store, r)]
            base[t] = f"SELECT * FROM {t} WHERE {col} IN ({' UNION '.join(refs)})" if refs else f"SELECT * FROM {t} WHERE false"

    order = [t for t in TABLES if t in base]
    wanted = order if chosen is None else [t for t in order if t in chosen]
    counts: dict[str, int] = {}
    for t in wanted:
        n = _count(store, base[t], params)
        if n:
            counts[t] = n
        elif chosen is not None:
            notes.append(f"{t}: no rows in the selection, left out")
    if any(TABLES[t].has_weights for t in counts) and "layouts" not in wanted and _count(store, base["layouts"], params):
        counts["layouts"] = _count(store, base["layouts"], params)
        notes.append("layouts: added, the weights tables need it to decode their weights")
    queries = {t: base[t] for t in order if t in counts}
    counts = {t: counts[t] for t in queries}
    if not queries:
        what = f"the models matching --where {where!r}" if where else f"store {store.path}"
        asked = f" in tables {chosen}" if chosen else ""
        raise UserError(f"nothing to publish: {what} has no rows{asked}",
                        "train a zoo first (wsl zoo train SPEC) or choose non-empty tables (see `wsl store tables`)")
    published = {g: f for g, f in chosen_gens.items() if "generators" in queries}
    return Selection(where, queries, counts, notes, params, published)
