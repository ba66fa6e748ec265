"""One way to filter: a user's `--where` composed with the program's own conditions.

Every command that takes `--where` (eval, average, prune, export, zoo landscape, plot
phases, generate fit, publish, ...) applies it to the same pool: one row per checkpoint
with its model's columns,

    models FULL JOIN checkpoints USING (model_id)        -- the `weights` column is never read

so a filter may name any column of `models` or of `checkpoints`, bare (`width = 32 AND
epoch = epochs`) or qualified (`models.seed`, `checkpoints.test_acc`). A model that has
no checkpoint yet is one row whose checkpoint columns are NULL: a filter on model columns
still selects it for model-level commands (publish, landscape), and checkpoint-level
commands never see it. A checkpoint whose model has no `models` row (weights appended
or imported without one) is a row whose model columns are NULL: checkpoint-level
commands see it, model-level ones (which select rows of `models`) do not. Bare
`model_id` is the one of either side; `layout_id` is the checkpoint's. A filter may also
be a whole `SELECT ... model_id ...` query (or `WITH ...`): it then selects the models
it returns.

Our own conditions never splice literals into SQL text: they carry `$name` placeholders
and their values travel as bound parameters (`ZooStore.sql(query, params)`); `in_list`
binds a Python list as one parameter.

    sql, params = checkpoint_query(user_where, "dataset = $ds", params={"ds": name})
    df = store.sql(sql, params)
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from store.errors import UserError

MODELS = "(SELECT * EXCLUDE (layout_id) FROM models) AS models"
CHECKPOINTS = "(SELECT * EXCLUDE (weights) FROM checkpoints) AS checkpoints"
POOL = f"{MODELS} FULL JOIN {CHECKPOINTS} USING (model_id)"
# what a checkpoint-level query returns by default
CHECKPOINT_COLUMNS = "checkpoints.checkpoint_id, model_id, checkpoints.layout_id, checkpoints.epoch"
CHECKPOINT_ORDER = "model_id, checkpoints.epoch, checkpoints.checkpoint_id"

HINT = ('check it with: wsl query "SELECT count(*) FROM checkpoints JOIN models USING (model_id) WHERE ..." '
        "(a filter may name any column of models and checkpoints)")


def clean(where: str | None) -> str | None:
    """The user's filter without a leading WHERE and trailing semicolons; None when empty."""
    if where is None:
        return None
    if not isinstance(where, str):
        raise UserError(f"--where {where!r} is not a string", 'give an SQL condition, e.g. --where "width = 32"')
    w = where.strip().rstrip(";").strip()
    if w[:6].lower() == "where ":
        w = w[6:].strip()
    return w or None


def user_condition(where: str | None) -> str:
    """The user's filter as one parenthesised condition over the pool ("TRUE" when there is none).

    Newlines around it keep a trailing `-- comment` in the user's text from swallowing ours.
    """
    w = clean(where)
    if w is None:
        return "TRUE"
    if w.split(None, 1)[0].lower() in ("select", "with"):
        return f"model_id IN (SELECT model_id FROM (\n{w}\n) AS __user)"
    return f"(\n{w}\n)"


def compose(where: str | None, *conditions: str) -> str:
    """`(user filter) AND (ours) AND ...`: the body of a WHERE clause over the pool."""
    parts = [user_condition(where)] + [f"({c})" for c in conditions if c]
    return " AND ".join(parts)


def in_list(column: str, name: str, values: Iterable[Any], params: dict[str, Any]) -> str:
    """`column IN (SELECT unnest($name))`, with the values bound under `name` in params."""
    if name in params:
        raise ValueError(f"parameter ${name} bound twice")
    params[name] = list(values)
    return f"{column} IN (SELECT unnest(${name}))"


def checkpoint_query(where: str | None, *conditions: str, columns: str = CHECKPOINT_COLUMNS,
                     order_by: str | None = CHECKPOINT_ORDER, params: Mapping[str, Any] | None = None
                     ) -> tuple[str, dict[str, Any]]:
    """(SQL, params) selecting pool rows that have a checkpoint and match the filter and our conditions."""
    body = compose(where, "checkpoints.checkpoint_id IS NOT NULL", *conditions)
    q = f"SELECT {columns} FROM {POOL} WHERE {body}"
    if order_by:
        q += f" ORDER BY {order_by}"
    return q, dict(params or {})


def model_query(where: str | None, *conditions: str, columns: str = "DISTINCT model_id",
                order_by: str | None = "model_id", params: Mapping[str, Any] | None = None
                ) -> tuple[str, dict[str, Any]]:
    """(SQL, params) selecting models (rows of `models`) with at least one pool row matching the filter and ours."""
    q = f"SELECT {columns} FROM {POOL} WHERE {compose(where, 'models.model_id IS NOT NULL', *conditions)}"
    if order_by:
        q += f" ORDER BY {order_by}"
    return q, dict(params or {})


def model_ids_subquery(where: str | None, *conditions: str) -> str:
    """`SELECT DISTINCT model_id FROM pool WHERE ...`, to use as `model_id IN (...)` (no ORDER BY)."""
    return model_query(where, *conditions, order_by=None)[0]


def select_checkpoints(store, where: str | None, *conditions: str, columns: str = CHECKPOINT_COLUMNS,
                       order_by: str | None = CHECKPOINT_ORDER, params: Mapping[str, Any] | None = None,
                       what: str = "--where", allow_empty: bool = False):
    """DataFrame of the selected checkpoints; an empty selection is a UserError unless allow_empty."""
    q, p = checkpoint_query(where, *conditions, columns=columns, order_by=order_by, params=params)
    df = store.sql(q, p)
    if df.empty and not allow_empty:
        raise UserError(f"{what} {clean(where)!r} selects no checkpoints" if clean(where)
                        else f"store {getattr(store, 'path', store)} has no checkpoints to select", HINT)
    return df


def select_models(store, where: str | None, *conditions: str, columns: str = "DISTINCT model_id",
                  order_by: str | None = "model_id", params: Mapping[str, Any] | None = None,
                  what: str = "--where", allow_empty: bool = False):
    """DataFrame of the selected models; an empty selection is a UserError unless allow_empty."""
    q, p = model_query(where, *conditions, columns=columns, order_by=order_by, params=params)
    df = store.sql(q, p)
    if df.empty and not allow_empty:
        raise UserError(f"{what} {clean(where)!r} selects no models" if clean(where)
                        else f"store {getattr(store, 'path', store)} has no models to select", HINT)
    return df

