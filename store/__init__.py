"""Zoo store: Parquet parts + DuckDB SQL. The bottom of the dependency spine: imports no other package of ours."""
from store.errors import UserError
from store.layout import ParamLayout, register_architecture

__all__ = ["UserError", "ParamLayout", "register_architecture"]
