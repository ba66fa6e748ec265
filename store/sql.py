"""The read-only DuckDB connection users query.

Each table is a DuckDB view over the table's current parts
(`read_parquet([...], union_by_name=true)`, built through DuckDB's relation
API so the paths are values, not SQL text: a column missing from an older
part reads as NULL). Once the views exist, the connection is locked down
with DuckDB's own settings:

- `allowed_paths` = exactly the part files the views read, then
  `enable_external_access = false`: no other file can be read or written
  from SQL (read_csv('/etc/passwd'), COPY TO, EXPORT DATABASE, ATTACH of a
  file, INSTALL / LOAD of extensions all fail);
- `lock_configuration = true`: no SET / PRAGMA can undo that;
- `autoinstall/autoload_known_extensions = false`;
- and before DuckDB sees a query, `duckdb.extract_statements` must find
  exactly one SELECT (or EXPLAIN of one): CREATE, INSERT, UPDATE, DELETE,
  DROP, ALTER, ATTACH, DETACH, COPY, EXPORT, SET, PRAGMA, CALL, LOAD,
  TRANSACTION, PREPARE/EXECUTE, VACUUM are refused with a UserError. This
  layer is what keeps a `COPY ... TO` one of the part files themselves out.

The database is in memory, so a statement that slipped past these layers
could only change that throwaway catalog. A new connection is built
whenever the set of parts changes.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from store.errors import UserError

ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN"}

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT",
    pa.bool_(): "BOOLEAN",
    pa.large_binary(): "BLOB",
    pa.binary(): "BLOB",
}


def duck_type(t: pa.DataType) -> str:
    return _DUCK_TYPES.get(t, "VARCHAR")


def check_select(query: str) -> str:
    """The query if it is exactly one read-only statement; else a UserError saying what was refused."""
    if not isinstance(query, str) or not query.strip():
        raise UserError("empty SQL query", 'pass a SELECT, e.g. "SELECT * FROM models LIMIT 5"')
    try:
        statements = duckdb.extract_statements(query)
        kinds = [s.type.name for s in statements]
    except duckdb.Error as e:
        raise UserError(f"SQL error: {_first_line(e)}", "fix the query (tables: see `wsl store tables`)") from None
    except ValueError:
        # a statement type the Python enum does not know (e.g. UPDATE EXTENSIONS): not a SELECT
        raise UserError("the store's query connection is read-only: statement refused",
                        "use SELECT (or EXPLAIN) queries only") from None
    if len(statements) != 1:
        raise UserError(f"expected one SQL statement, got {len(statements)}", "run one SELECT at a time")
    kind = kinds[0]
    if kind not in ALLOWED_STATEMENTS:
        raise UserError(f"the store's query connection is read-only: {kind} statements are refused",
                        "use SELECT (or EXPLAIN) queries; the store is written through ZooStore.append")
    return query


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).strip().split("\n")[:3]).strip()


def connect_readonly(views: dict[str, tuple[list[str], pa.Schema]]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table, then locked down.

    views: table name -> (part paths, unified Arrow schema). A table with no
    parts gets an empty view with its schema.
    """
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    allowed: list[str] = []
    for name, (paths, schema) in views.items():
        if paths:
            allowed += paths
            # the relation API takes the paths as values: no file name is ever spliced into SQL text by us
            con.read_parquet(list(paths), union_by_name=True).create_view(name, replace=False)
        else:
            cols = ", ".join(f'CAST(NULL AS {duck_type(f.type)}) AS "{f.name}"' for f in schema) or "NULL AS dummy"
            con.execute(f'CREATE VIEW "{name}" AS SELECT {cols} WHERE false')
    con.execute("SET parquet_metadata_cache = true")
    if allowed:
        con.execute("SET allowed_paths = $paths", {"paths": allowed})
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run(con: duckdb.DuckDBPyConnection, query: str, params=None) -> pa.Table:
    """Run a checked read-only query; DuckDB errors become UserErrors carrying DuckDB's message.

    params: values bound to the query's `$name` (a dict) or `?` (a list) placeholders. Our own
    literals always travel this way, never spliced into the SQL text.
    """
    check_select(query)
    try:
        rel = con.sql(query, params=params) if params else con.sql(query)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as e:
        raise UserError(f"SQL error: {_first_line(e)}", "fix the query (tables: see `wsl store tables`)") from None
