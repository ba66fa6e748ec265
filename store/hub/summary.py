"""Counts and ranges for the dataset card, read from the shards just written (never the whole store).

Running DuckDB over the folder itself means the card describes exactly what was
uploaded: a `--where` selection's card counts the selected models, not the store's.
The weights column is never read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import duckdb


def _folder_connection(folder: Path, manifest: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    for t, info in manifest["tables"].items():  # a relation per table: the paths are never spliced into SQL
        con.read_parquet([str(folder / f) for f in info["files"]]).create_view(t)
    return con


def _fmt_values(values: list, n: int, lo: Any, hi: Any) -> str:
    if n <= 8:
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)
    fmt = (lambda v: f"{v:.4g}") if isinstance(lo, float) else str
    return f"{n} values in [{fmt(lo)}, {fmt(hi)}]"


def _headline(report_json: str | None) -> dict[str, float]:
    """generated / zoo mean accuracy on seen and unseen conditions, from a report's summary."""
    try:
        summary = json.loads(report_json).get("summary", {}) if report_json else {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for group in ("seen", "unseen"):
        g = summary.get(group) or {}
        for key in ("generated_mean_acc", "zoo_mean_acc"):
            if isinstance(g.get(key), (int, float)):
                out[f"{group}_{key}"] = float(g[key])
    return out


def _generators(q, cols, tables) -> list[dict[str, Any]]:
    """One entry per published generator: what it is, what it was fit on, its first report's headline numbers."""
    have = cols("generators")
    pick = [c for c in ("generator_id", "method", "layout_id", "zoo", "num_train", "train_digest", "protocol", "report")
            if c in have]
    rows = [dict(zip(pick, r)) for r in q(f"SELECT {', '.join(pick)} FROM generators ORDER BY generator_id")]
    reports: dict[str, str] = {}
    if "generator_reports" in tables:
        for gid, text in q("SELECT generator_id, first(report ORDER BY report_id) FROM generator_reports GROUP BY 1"):
            reports[gid] = text
    for r in rows:
        r["headline"] = _headline(reports.get(r["generator_id"]) or r.pop("report", None))
        r.pop("report", None)
    return rows


def summarize(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> dict:
    """Counts and ranges for the card, read from the folder's shards with DuckDB (never the weights column)."""
    folder = Path(folder)
    tables = manifest["tables"]
    out: dict[str, Any] = {}
    con = _folder_connection(folder, manifest)
    try:
        def cols(t: str) -> list[str]:
            return [c for c, _ in tables[t]["columns"]] if t in tables else []

        def q(text: str) -> list[tuple]:
            return con.sql(text).fetchall()

        if "models" in tables:
            mc = cols("models")
            out["zoos"] = [r[0] for r in q("SELECT DISTINCT zoo FROM models WHERE zoo IS NOT NULL ORDER BY 1")]
            if "layouts" in tables:
                arch = q("SELECT m.architecture, count(*), count(DISTINCT m.layout_id), min(l.num_params), max(l.num_params) "
                         "FROM models m LEFT JOIN layouts l ON m.layout_id = l.layout_id GROUP BY 1 ORDER BY 2 DESC, 1")
            else:
                arch = q("SELECT architecture, count(*), count(DISTINCT layout_id), NULL, NULL FROM models GROUP BY 1 ORDER BY 2 DESC, 1")
            out["architectures"] = [[a, n, nl, (f"{lo}" if lo == hi else f"{lo} to {hi}") if lo is not None else ""]
                                    for a, n, nl, lo, hi in arch]
            ds = q("SELECT dataset, count(*) FROM models GROUP BY 1 ORDER BY 2 DESC, 1")
            out["datasets"] = [list(r) for r in ds[:20]]
            out["datasets_more"] = max(0, len(ds) - 20)
            hp = []
            for c in ["optimizer", "lr", "momentum", "weight_decay", "batch_size", "width", "depth", "epochs",
                      "schedule", "seed"]:
                if c not in mc:
                    continue
                vals = [r[0] for r in q(f'SELECT DISTINCT "{c}" FROM models WHERE "{c}" IS NOT NULL ORDER BY 1')]
                if vals:
                    hp.append([c, f"{len(vals)} seeds" if c == "seed" and len(vals) > 8
                               else _fmt_values(vals, len(vals), vals[0], vals[-1])])
            out["hyperparameters"] = hp
            out["status"] = q("SELECT coalesce(status, 'unknown'), count(*) FROM models GROUP BY 1 ORDER BY 2 DESC")
        if "checkpoints" in tables:
            metrics = [c for c in ("test_acc", "train_acc", "test_loss", "train_loss") if c in cols("checkpoints")]
            last = ("SELECT model_id, " + ", ".join(metrics) + " FROM checkpoints "
                    "QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY epoch DESC NULLS LAST, step DESC NULLS LAST) = 1")
            acc = []
            for m in metrics:
                lo, med, hi = q(f"SELECT min({m}), median({m}), max({m}) FROM ({last})")[0]
                if lo is not None:
                    acc.append([m, lo, med, hi])
            out["accuracy"] = acc
        if "landscape" in tables:
            out["phases"] = q("SELECT coalesce(phase, '(none)'), count(*) FROM landscape GROUP BY 1 ORDER BY 1")
        if "generators" in tables:
            out["generators"] = _generators(q, cols, tables)
    finally:
        con.close()
    return out
