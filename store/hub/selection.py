"""What `wsl publish` ships: one read-only SELECT per table, its bound parameters, and its row count.

A `--where` picks models through the one pool of store/filters.py (models LEFT JOIN
checkpoints: any column of models or checkpoints, or a whole SELECT of model ids); the
tables tied to models by `model_id` keep only the selected models' rows, and `layouts`
and `datasets` only the rows the published tables reference. Our own values (ids) travel
as bound parameters; each query gets exactly the parameters it names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
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
    generators: list[str] = field(default_factory=list)  # generator ids whose folders go along

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


def select(store, where: str | None = None, tables: Iterable[str] | str | None = None) -> Selection:
    """The rows to publish.

    where: a filter over the pool (e.g. "lr > 0.01 AND architecture = 'mlp'"); tables
    tied to models by `model_id` (checkpoints, optimizer_states, landscape,
    evaluations) keep only the selected models' rows, `layouts` and `datasets` only
    the rows those reference. `generators`, `generator_reports` and `samples` are not
    tied to single models: with --where they are left out unless named in `tables`
    (then published whole). tables: default every non-empty table; tables that end up
    empty are left out (noted). Nothing to publish, or a --where that matches no
    model, is a UserError.
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
            if t in ("layouts", "datasets"):
                continue  # below: what the other tables reference
            if "model_id" in _columns(store, t):
                base[t] = f"SELECT * FROM {t} WHERE model_id IN ({sel_ids})"
            elif chosen and t in chosen:
                base[t] = f"SELECT * FROM {t}"
                notes.append(f"{t}: not tied to single models, published whole (--where does not filter it)")
        referencing = [t for t in base if chosen is None or t in chosen or t == "models"]
        for t, col in (("layouts", "layout_id"), ("datasets", "dataset_id")):
            refs = [f"SELECT {col} FROM ({base[r]}) AS __r{i}" for i, r in enumerate(referencing)
                    if col in _columns(store, r)]
            base[t] = f"SELECT * FROM {t} WHERE {col} IN ({' UNION '.join(refs)})" if refs else f"SELECT * FROM {t} WHERE false"
    else:
        base = {t: f"SELECT * FROM {t}" for t in TABLES}

    order = [t for t in TABLES if t in base]
    if chosen is None:
        wanted = [t for t in order if not (where and t in GENERATOR_TABLES)]
    else:
        wanted = [t for t in order if t in chosen]
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
    return Selection(where, queries, counts, notes, params)
