"""Zoo store: Parquet parts + DuckDB SQL. The bottom of the dependency spine: imports no other package of ours.

    from store import ZooStore
    store = ZooStore("wsl-store")
    w, meta = store.weights("SELECT checkpoint_id FROM checkpoints WHERE epoch = 5")
"""
from store.errors import UserError
from store.layout import ParamLayout, register_architecture

__all__ = ["UserError", "ParamLayout", "register_architecture", "ZooStore"]


def __getattr__(name: str):
    # ZooStore pulls in duckdb/pyarrow/pandas: load it on first use, not on `import store`
    if name == "ZooStore":
        from store.store import ZooStore

        return ZooStore
    raise AttributeError(f"module 'store' has no attribute {name!r}")
