"""The dataset card (README.md) of a published zoo: YAML front matter the Hub reads, and a body people read.

The front matter carries `configs:` (one config per table, `models` the
default), which is what lets `datasets.load_dataset("ORG/NAME", "checkpoints")`
and the Hub's dataset viewer find each table's Parquet shards; plus
`license`, `tags` and `size_categories`. There is no `task_categories`: none of
the Hub's task categories describes "trained weights as data", and a wrong one
would put the zoo in the wrong search results.

The body is written from the published folder itself (see `summarize`, which
runs DuckDB over the shards just written), so counts, architectures, datasets,
phases and accuracy ranges describe exactly what was uploaded, never the
whole local store.

The YAML is written by hand (JSON-quoted strings are valid YAML scalars), so
this module needs no YAML library; tests parse it with the Hub's own parser.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from store.hub.columns import column_doc
from store.schema import TABLES

TYPE_NAMES = {"string": "string", "large_string": "string", "int64": "int64", "int32": "int32",
              "double": "float64", "float": "float32", "bool": "bool", "large_binary": "binary",
              "binary": "binary"}

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def type_name(arrow_type: str) -> str:
    return TYPE_NAMES.get(arrow_type, arrow_type)


def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1B"


def _q(s: str) -> str:
    """A YAML scalar: JSON string syntax is valid YAML."""
    return json.dumps(s)


def front_matter(tables: Mapping[str, Mapping[str, Any]], license: str, tags: Sequence[str], pretty_name: str,
                 max_rows: int) -> str:
    """YAML between --- lines: license, pretty_name, tags, size_categories, configs (models default)."""
    lines = ["---", f"license: {_q(license)}", f"pretty_name: {_q(pretty_name)}", "tags:"]
    lines += [f"- {_q(t)}" for t in tags]
    lines += ["size_categories:", f"- {_q(size_category(max_rows))}", "configs:"]
    names = list(tables)
    default = "models" if "models" in tables else names[0]
    for name in names:
        lines.append(f"- config_name: {_q(name)}")
        if name == default:
            lines.append("  default: true")
        lines += ["  data_files:", "  - split: \"train\"", f"    path: {_q(tables[name]['path_glob'])}"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            v = f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def format_bytes(n: float) -> str:
    """Bytes for people: 950 B, 12.3 MB (powers of 1000, as the Hub shows sizes)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def generators_section(gens: Sequence[Mapping[str, Any]], repo: str) -> str:
    """The card's list of the weight generators published with the zoo, with their headline numbers."""
    def acc(h: Mapping[str, float], group: str) -> str:
        g, z = h.get(f"{group}_generated_mean_acc"), h.get(f"{group}_zoo_mean_acc")
        return "" if g is None else f"{g:.4f}" + (f" (zoo {z:.4f})" if z is not None else "")

    rows = [[f"`{g['generator_id']}`", g.get("method"), f"`{g.get('layout_id')}`", g.get("zoo") or "",
             g.get("num_train"), f"`{str(g.get('train_digest') or '')[:12]}`", g.get("protocol") or "",
             acc(g["headline"], "seen"), acc(g["headline"], "unseen")] for g in gens]
    first = gens[0]["generator_id"]
    return ("## Generators\n\n"
            "Weight generators fit on this zoo, each in `generators/<generator_id>/` (config.json, model.safetensors, "
            "training_set.json with the exact checkpoint ids, reports). Accuracy: mean test accuracy of its generated "
            "models over the seen / held-out conditions of its first report.\n\n"
            + _md_table(["generator", "method", "layout", "zoo", "checkpoints", "training-set digest", "protocol",
                         "seen", "held out"], rows) + "\n\n"
            f"```bash\nwsl pull {repo} --store zoo --weights    # brings the generators along\n"
            f"wsl generate sample {first} --store zoo --dataset DATASET -n 100\n```\n")


def render(manifest: Mapping[str, Any], summary: Mapping[str, Any], repo_id: str | None, license: str) -> str:
    """The README.md text of a published zoo folder."""
    repo = repo_id or "ORG/NAME"
    tables = manifest["tables"]
    glob = {t: tables.get(t, {}).get("path_glob", f"data/{t}/*.parquet") for t in TABLES}
    zoos = summary.get("zoos") or []
    pretty = f"Model zoo: {', '.join(zoos[:3])}" + (" ..." if len(zoos) > 3 else "") if zoos else f"Model zoo {repo}"
    tags = ["weight-space-learning", "model-zoo", "neural-network-weights"]
    if summary.get("phases"):
        tags.append("loss-landscape")
    max_rows = max((t["rows"] for t in tables.values()), default=0)
    parts = [front_matter(tables, license, tags, pretty, max_rows)]

    parts.append(f"# {pretty}\n")
    parts.append(
        "Populations of trained neural networks (\"model zoos\") for weight-space learning: every model's "
        "hyperparameters, its checkpoints with their flat weight vectors, and (where measured) loss-landscape "
        "metrics with a phase label. Published with `wsl publish` (the `wsl-zoo` Python package; "
        f"store schema version {manifest['schema_version']}).\n")
    if manifest.get("where"):
        parts.append(f"Selection: the models matching `{manifest['where']}` and the rows that depend on them.\n")

    # ----- summary -----
    parts.append("## Summary\n")
    parts.append(_md_table(["table", "config", "rows", "files", "size"],
                           [[t, f"`{t}`", info["rows"], len(info["files"]), format_bytes(info["bytes"])]
                            for t, info in tables.items()]) + "\n")
    if summary.get("architectures"):
        parts.append("**Architectures**\n")
        parts.append(_md_table(["architecture", "models", "layouts", "parameters per model"],
                               summary["architectures"]) + "\n")
    if summary.get("datasets"):
        shown = summary["datasets"]
        parts.append("**Datasets / tasks the models were trained on**\n")
        parts.append(_md_table(["dataset", "models"], shown) + "\n")
        if summary.get("datasets_more"):
            parts.append(f"... and {summary['datasets_more']} more.\n")
    if summary.get("hyperparameters"):
        parts.append("**Hyperparameters**\n")
        parts.append(_md_table(["hyperparameter", "values"], summary["hyperparameters"]) + "\n")
    if summary.get("status"):
        parts.append("**Training status**: " + ", ".join(f"{k}: {v}" for k, v in summary["status"]) + "\n")
    if summary.get("accuracy"):
        parts.append("**Accuracy** (last checkpoint of each model)\n")
        parts.append(_md_table(["metric", "min", "median", "max"], summary["accuracy"]) + "\n")
    if summary.get("phases"):
        parts.append("**Loss-landscape phases** (rows of `landscape`: model x epoch x recipe)\n")
        parts.append(_md_table(["phase", "rows"], summary["phases"]) + "\n")

    if summary.get("generators"):
        parts.append(generators_section(summary["generators"], repo))

    # ----- loading -----
    parts.append("## Loading\n")
    parts.append("Each table is a config; every config has one split, `train`.\n")
    parts.append(f"""With 🤗 `datasets`:

```python
from datasets import load_dataset

models = load_dataset("{repo}", "models", split="train")
checkpoints = load_dataset("{repo}", "checkpoints", split="train")  # includes the weights bytes
```

With DuckDB (reads only the columns a query needs; metadata queries never download the weights):

```sql
SELECT m.architecture, m.lr, c.epoch, c.test_acc
FROM 'hf://datasets/{repo}/{glob['checkpoints']}' c
JOIN 'hf://datasets/{repo}/{glob['models']}' m USING (model_id)
WHERE m.lr > 0.01
ORDER BY c.test_acc DESC LIMIT 10;
```
""")
    parts.append(f"""With the `wsl` command and its Python package `wsl-zoo` (a local store you query with SQL and read as
torch tensors):

```bash
wsl pull {repo} --store zoo --weights     # without --weights: metadata tables only
wsl query "SELECT phase, count(*) FROM landscape GROUP BY phase" --store zoo
```

```python
from store import ZooStore

store = ZooStore("zoo")
w, meta = store.weights("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) "
                        "WHERE models.lr > 0.01 AND epoch = 5")      # w: [N, P] torch tensor
layout = store.layout(meta.layout_id[0])
model = layout.load_into(layout.build_module(), w[0])               # an nn.Module with checkpoint 0's weights
```
""")
    parts.append(f"""## Decoding weights without `wsl`

A weight vector is the `weights` column: `num_params` values as raw little-endian bytes of `dtype`
(`float32`, `float16` or `bfloat16`). The `layouts` row with the same `layout_id` says how the flat vector
maps onto named tensors: `layout_json` is `{{"params": [[name, shape], ...], "dtype": ..., "arch": {{...}}}}`,
tensors in order, each taking `prod(shape)` consecutive values. For PyTorch models the names are the
`named_parameters()` names, so the result loads with `model.load_state_dict(tensors, strict=False)`.

```python
import json
import numpy as np
from datasets import load_dataset

layouts = {{r["layout_id"]: json.loads(r["layout_json"])
           for r in load_dataset("{repo}", "layouts", split="train")}}
row = load_dataset("{repo}", "checkpoints", split="train")[0]

def decode(buf, dtype):
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 bits to float32
        return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(buf, {{"float32": "<f4", "float16": "<f2"}}[dtype])

flat = decode(row["weights"], row["dtype"])            # shape [num_params]
tensors, offset = {{}}, 0
for name, shape in layouts[row["layout_id"]]["params"]:
    n = int(np.prod(shape))
    tensors[name] = flat[offset:offset + n].reshape(shape)
    offset += n
```

The same with DuckDB (no `datasets` needed; `'data/...'` paths work on a local copy too):

```python
import duckdb, json, numpy as np

con = duckdb.connect()
rows = con.sql(\"\"\"
    SELECT c.checkpoint_id, c.weights, c.dtype, l.layout_json
    FROM 'hf://datasets/{repo}/{glob['checkpoints']}' c
    JOIN 'hf://datasets/{repo}/{glob['layouts']}' l USING (layout_id)
    WHERE c.epoch = 0 LIMIT 4\"\"\").fetchall()
for checkpoint_id, buf, dtype, layout_json in rows:
    flat = np.frombuffer(buf, {{"float32": "<f4", "float16": "<f2"}}[dtype])  # bfloat16: see above
    params = json.loads(layout_json)["params"]              # [[name, shape], ...] in order
```
""")

    # ----- schema -----
    parts.append("## Schema\n")
    for t, info in tables.items():
        doc = TABLES[t].doc if t in TABLES else ""
        key = ", ".join(info.get("key") or [])
        sentence = f"{doc[:1].upper()}{doc[1:]}." if doc else ""
        parts.append(f"### `{t}`\n\n{sentence}" + (f" Key: `{key}`." if key else "") + "\n")
        parts.append(_md_table(["column", "type", "meaning"],
                               [[f"`{c}`", type_name(ty), column_doc(t, c)] for c, ty in info["columns"]]) + "\n")

    parts.append("## Files\n")
    parts.append("`data/<table>/<table>-NNNNN-of-MMMMM.parquet`: Parquet shards of at most 500 MB with row groups of at "
                 "most 64 MB (a single weight vector larger than that gets a row group of its own), fewer than 10,000 "
                 "files per folder. The weights column is stored uncompressed (weights do not compress; reads are a "
                 "copy), the other columns with zstd. `wsl-zoo.json` lists every table's files, rows and columns "
                 "for `wsl pull`.\n")
    if manifest.get("generators"):
        parts.append("`generators/<generator_id>/`: each published generator's folder as `wsl generate fit` saved it "
                     "(config.json, model.safetensors, training_set.json with the exact checkpoint ids it was fit on), "
                     "its report when it has one, and every report the store recorded (`reports/`). `wsl pull` puts "
                     "them into the store; `generators.load_generator(folder)` loads one directly.\n")
    return "\n".join(parts)
