"""`wsl eval`, `wsl average`, `wsl prune`, `wsl predict-properties`: weight-space operations on stored checkpoints.

    wsl eval --where "models.zoo = 'digits-mlp' AND epoch = 20" --dataset digits [--format json] [-o scores.parquet]
    wsl eval --where "zoo = 'digits-pairs' AND epoch = epochs" --dataset own   # each model on its own task
    wsl average --where "lr > 0.01" --dataset digits --mode last-k --k 3
    wsl average --where "width = 32 AND lr = 0.1" --dataset digits --mode seeds
    wsl prune --where "epoch = 20" --dataset digits --sparsity 0.5,0.8,0.9
    wsl predict-properties --where "epoch >= 1" --target test_acc --target "log10(lr)"

--where selects checkpoints from the one pool every command filters (store/filters.py:
models FULL JOIN checkpoints USING (model_id); any column of either, bare or qualified),
so "epoch = 20 AND lr < 0.1" works as written. Without --where every checkpoint is
selected; a filter that selects none is an error naming it. `wsl eval` writes scores
into the `evaluations` table; `wsl average --save` and `wsl prune --save` keep their results
as new models with lineage columns (wsl.derived); otherwise they report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from cli import common
from store.errors import UserError

WhereOption = common.where_option("default: every checkpoint")
DatasetOption = typer.Option(..., "--dataset", "-d", help="Dataset name (see `wsl datasets`), e.g. digits.")
EvalDatasetOption = typer.Option(..., "--dataset", "-d", help="Dataset name (see `wsl datasets`), e.g. digits; "
                                 "or `own`: every model on the dataset it was trained on (models.dataset, with its "
                                 "split seed).")
SplitOption = typer.Option("test", "--split", help="test or train.")
SeedOption = typer.Option(0, "--dataset-seed", help="Split seed of the dataset (the zoo's models say which they used).")
DeviceOption = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
OWN = "own"
SkipDamagedOption = typer.Option(False, "--skip-damaged", help="Leave out checkpoints whose stored weights fail their integrity check (reported on stderr) instead of stopping.")


def _open(store: Optional[Path]):
    import warnings

    from store.store import ZooStore
    from store.verified_read import DamagedRowsSkipped

    warnings.simplefilter("ignore", DamagedRowsSkipped)  # _skipped() reports them, once, in words
    return ZooStore(common.store_path(store), create=False)


def _skipped(zs, summary: dict) -> None:
    """With --skip-damaged: count the damaged checkpoints left out, and say so on stderr."""
    from store.verified_read import skipped_message

    summary["skipped_damaged"] = len(zs.skipped_rows)
    if zs.skipped_rows:
        typer.echo(f"warning: {skipped_message(zs.skipped_rows)}", err=True)


def _select(zs, where: Optional[str], extra: str = ""):
    """DataFrame of the selected checkpoints (ids, model, layout, epoch [+ extra]), in a stable order.

    An empty selection is a UserError naming the filter (store/filters.py).
    """
    from store.filters import CHECKPOINT_COLUMNS, select_checkpoints

    return select_checkpoints(zs, where, columns=CHECKPOINT_COLUMNS + extra)


def _dataset(name: str, seed: int):
    from zoo import load_dataset

    return load_dataset(name, seed=seed)


def _weights_by_layout(zs, df, skip_damaged: bool = False):
    """{layout_id: (weights [n, P], rows of df in the same order)} (one read per layout).

    skip_damaged: damaged checkpoints are left out of both (a layout with none left is dropped).
    """
    out = {}
    for lid, part in df.groupby("layout_id", sort=True):
        w, meta = zs.weights(part.checkpoint_id.tolist(), skip_damaged=skip_damaged)
        if len(meta) < len(part):
            part = part[part.checkpoint_id.isin(set(meta.checkpoint_id))]
        if len(part):
            out[lid] = (w, part.reset_index(drop=True))
    if not out:
        raise UserError("every selected checkpoint is damaged", "run `wsl store check --quarantine`, then re-run the training")
    return out


def _emit(summary: dict[str, Any], rows, fmt: str, title: str) -> None:
    """table: the per-row table (rows) then the summary; json: {"summary": ..., "rows": [...]}."""
    import json
    import sys

    common.check_format(fmt, ("table", "json", "csv"))
    records = rows.to_dict(orient="records") if rows is not None else []
    if fmt == "json":
        sys.stdout.write(json.dumps({"summary": common.json_safe(summary), "rows": common.json_safe(records)}, default=str) + "\n")
        return
    if fmt == "csv":
        common.emit(rows, "csv")
        return
    if rows is not None and len(rows):
        common.print_table(rows, title)
    common.print_summary(summary, f"{title}: summary")


# --------------------------------------------------------------------------- wsl eval
def _own_key(name: str, dataset_id: Any) -> str:
    return f"{name}|{dataset_id if isinstance(dataset_id, str) else ''}"


def _own_datasets(zs, sel, split_seed: int) -> dict[str, Any]:
    """{_own_key(dataset name, dataset_id): Dataset} of the selected models' own training data.

    The split seed comes from the `datasets` row of the model's dataset_id, else the models'
    `data_seed` column, else --dataset-seed; the loaded dataset must then have the model's
    dataset_id (same name, seed and data), or it is not the data the model was trained on.
    """
    from store.filters import in_list

    missing = sel[sel.own_dataset.isna()]
    if len(missing):
        raise UserError(f"--dataset own: {missing.model_id.nunique()} selected models have no dataset in the models "
                        f"table (e.g. {missing.model_id.iloc[0]})", "give the dataset by name, e.g. --dataset digits")
    keys = sel[["own_dataset", "own_dataset_id"]].drop_duplicates()
    seeds: dict[str, int] = {}
    ids = [i for i in keys.own_dataset_id.dropna().unique().tolist()]
    if ids and zs.count("datasets"):
        params: dict[str, Any] = {}
        cond = in_list("dataset_id", "ids", ids, params)
        for r in zs.sql(f"SELECT dataset_id, any_value(seed) AS seed FROM datasets WHERE {cond} GROUP BY 1",
                        params).itertuples():
            if r.seed is not None and r.seed == r.seed:
                seeds[r.dataset_id] = int(r.seed)
    if "data_seed" in zs.schema("models").names and ids:
        params = {}
        cond = in_list("dataset_id", "ids", ids, params)
        for r in zs.sql(f"SELECT dataset_id, any_value(data_seed) AS s FROM models WHERE {cond} "
                        "AND data_seed IS NOT NULL GROUP BY 1", params).itertuples():
            seeds.setdefault(r.dataset_id, int(r.s))
    out = {}
    for name, did in keys.itertuples(index=False):
        did = did if isinstance(did, str) else None
        ds = _dataset(name, seeds.get(did, split_seed) if did else split_seed)
        if did is not None and ds.dataset_id != did:
            raise UserError(f"--dataset own: dataset {name!r} with split seed {ds.seed} has dataset_id {ds.dataset_id}, "
                            f"but the models were trained on dataset_id {did}",
                            "give the split seed the zoo used (--dataset-seed), or the dataset by name")
        out[_own_key(name, did)] = ds
    return out


def eval_cmd(
    where: Optional[str] = WhereOption,
    dataset: str = EvalDatasetOption,
    store: Optional[Path] = common.StoreOption,
    split: str = SplitOption,
    dataset_seed: int = SeedOption,
    device: str = DeviceOption,
    batch_size: int = typer.Option(4096, "--models-per-read", help="Checkpoints read from the store per batch."),
    rescore: bool = typer.Option(False, "--rescore", help="Evaluate again checkpoints already scored on this dataset/split (reported, not written: the store is append-only)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table (default), json or csv on the terminal; "
                                      "with -o the file's extension names the format, and a --format that "
                                      "disagrees is an error."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write every evaluated checkpoint's scores to "
                                       "FILE, in the format its extension names (.parquet, .csv, .json, .jsonl, .txt)."),
    skip_damaged: bool = SkipDamagedOption,
) -> None:
    """Score the selected checkpoints on a dataset with the fused evaluator; append to the `evaluations` table."""
    import time

    import pandas as pd
    import torch

    from cli import output
    from store.filters import in_list
    from wsl.evaluate import check_fit, evaluate
    from wsl.loader import WeightLoader

    if out is not None:
        file_fmt = output.resolve(out, fmt)
        fmt = "table"
    else:
        fmt = fmt or "table"
        common.check_format(fmt, ("table", "json", "csv"))
    zs = _open(store)
    own = dataset == OWN
    fixed = None if own else _dataset(dataset, dataset_seed)
    if fixed is not None:
        fixed.split(split)  # validates the split name
    elif split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}", "use 'train' or 'test'")
    sel = _select(zs, where, ", models.dataset AS own_dataset, models.dataset_id AS own_dataset_id")
    if own:
        datasets = _own_datasets(zs, sel, dataset_seed)
        sel["ds_key"] = [_own_key(n, d) for n, d in zip(sel.own_dataset, sel.own_dataset_id)]
    else:
        datasets = {"": fixed}
        sel["ds_key"] = ""
    sel["eval_dataset_id"] = [datasets[k].dataset_id for k in sel.ds_key]
    # every (dataset, layout) pair is checked before any work: a class-count or shape mismatch writes nothing
    layouts = {lid: zs.layout(lid) for lid in sorted(sel.layout_id.unique())}
    for (key, lid), _ in sel.groupby(["ds_key", "layout_id"], sort=True):
        check_fit(layouts[lid], datasets[key], split)
    done: set[tuple[str, str]] = set()
    if zs.count("evaluations"):
        params: dict[str, Any] = {"split": split}
        cond = in_list("dataset_id", "ids", sorted(set(sel.eval_dataset_id)), params)
        prev = zs.sql(f"SELECT checkpoint_id, dataset_id FROM evaluations WHERE split = $split AND {cond}", params)
        done = set(zip(prev.checkpoint_id, prev.dataset_id))
    scored = [(c, d) in done for c, d in zip(sel.checkpoint_id, sel.eval_dataset_id)]
    todo = sel if rescore else sel[[not x for x in scored]]
    rows, per_group = [], []
    t_all = time.perf_counter()
    with common.progress_bar(f"eval on {dataset}/{split}", total=len(todo), unit="checkpoints") as update:
        for (key, lid), part in todo.groupby(["ds_key", "layout_id"], sort=True):
            layout, ds = layouts[lid], datasets[key]
            loader = WeightLoader(zs, part.checkpoint_id.tolist(), batch_size=batch_size, skip_damaged=skip_damaged)
            t0 = time.perf_counter()
            accs, n = [], 0
            for w, meta in loader:
                res = evaluate(w, layout, ds, split=split, device=device)
                for i, (cid, mid) in enumerate(zip(meta.checkpoint_id, meta.model_id)):
                    row = {"checkpoint_id": cid, "model_id": mid, "dataset": ds.name, "dataset_id": ds.dataset_id,
                           "split": split, "loss": float(res.loss[i]),
                           "accuracy": float(res.accuracy[i]) if res.task == "classification" else None}
                    if res.r2 is not None:
                        row["r2"] = float(res.r2[i])
                    rows.append(row)
                accs.append(res.accuracy if res.task == "classification" else res.r2)
                n += len(w)
                update(len(w))
            if not accs:  # every checkpoint of this group skipped as damaged
                continue
            a = torch.cat(accs)
            secs = time.perf_counter() - t0
            per_group.append({"dataset": ds.name, "layout_id": lid, "architecture": (layout.arch or {}).get("name"),
                              "checkpoints": n, "mean_score": float(a.mean()), "best_score": float(a.max()),
                              "seconds": round(secs, 3), "checkpoints_per_s": round(n / secs, 1) if secs else None})
    new_rows = [r for r in rows if (r["checkpoint_id"], r["dataset_id"]) not in done]
    written = zs.append("evaluations", pd.DataFrame(new_rows)) if new_rows else 0
    tasks = {ds.task for ds in datasets.values()}
    metric = "accuracy" if tasks == {"classification"} else "r2" if tasks == {"regression"} else "accuracy/r2"
    summary = {"dataset": dataset, "dataset_id": fixed.dataset_id if fixed is not None else None,
               "datasets": len(datasets), "split": split, "selected": len(sel), "evaluated": len(rows),
               "already_scored": int(sum(scored)), "written": int(written), "fused_groups": len(per_group),
               "score": metric, "seconds": round(time.perf_counter() - t_all, 3)}
    if out is not None:
        columns = ["checkpoint_id", "model_id", "dataset", "dataset_id", "split", "loss", "accuracy"] + \
            (["r2"] if any("r2" in r for r in rows) else [])
        n = output.write(pd.DataFrame(rows, columns=columns), out, file_fmt)
        summary["out"] = f"{out} ({n} rows, {file_fmt})"
    _skipped(zs, summary)
    _emit(summary, pd.DataFrame(per_group) if per_group else None, fmt, "wsl eval")


# --------------------------------------------------------------------------- wsl average
def average_cmd(
    where: Optional[str] = WhereOption,
    dataset: str = DatasetOption,
    mode: str = typer.Option("last-k", "--mode", help="last-k: each model's last k selected checkpoints; seeds: the selected models' latest checkpoints, aligned then averaged."),
    k: int = typer.Option(3, "--k", help="How many of each model's last checkpoints to average (last-k)."),
    no_align: bool = typer.Option(False, "--no-align", help="seeds: average without permutation alignment."),
    save: bool = typer.Option(False, "--save", help="Keep the averages: new models rows (status 'derived', lineage columns) with their checkpoint and scores."),
    store: Optional[Path] = common.StoreOption,
    split: str = SplitOption,
    dataset_seed: int = SeedOption,
    device: str = DeviceOption,
    skip_damaged: bool = SkipDamagedOption,
    fmt: str = common.FormatOption,
) -> None:
    """Average checkpoints (over a model's last k epochs, or over seeds) and report the accuracy change."""
    import pandas as pd
    import torch

    from wsl.average import average_last_k, average_seeds

    common.check_format(fmt, ("table", "json", "csv"))
    if mode not in ("last-k", "seeds"):
        raise UserError(f"unknown --mode {mode!r}", "use last-k or seeds")
    zs = _open(store)
    ds = _dataset(dataset, dataset_seed)
    sel = _select(zs, where)
    if mode == "seeds":
        latest = sel.groupby("model_id", sort=True).tail(1)
        if latest.layout_id.nunique() != 1:
            raise UserError(f"the selected models have {latest.layout_id.nunique()} layouts",
                            "average seeds of one architecture and width (filter on width / layout_id)")
        (w, part), = _weights_by_layout(zs, latest, skip_damaged).values()
        rep = average_seeds(w, zs.layout(part.layout_id[0]), ds, split=split, device=device,
                            align_units=not no_align, model_ids=part.checkpoint_id.tolist())
        _skipped(zs, rep.summary)
        if save:
            _save_average_seeds(zs, rep, zs.layout(part.layout_id[0]), part.checkpoint_id.tolist(), ds, split, not no_align)
        _emit(rep.summary, rep.table, fmt, "wsl average (seeds)")
        return
    tables, summaries, skipped = [], [], []
    for lid, (w, part) in _weights_by_layout(zs, sel, skip_damaged).items():
        counts = part.groupby("model_id").size()
        keep = counts[counts >= k].index
        skipped += counts[counts < k].index.tolist()
        if len(keep) == 0:
            continue
        hist, ids = [], []
        for mid, grp in part[part.model_id.isin(keep)].groupby("model_id", sort=True):
            hist.append(w[torch.tensor(grp.index[-k:].tolist())])
            ids.append(mid)
        rep = average_last_k(torch.stack(hist), zs.layout(lid), ds, k=k, split=split, device=device, model_ids=ids)
        if save:
            parents = [part[part.model_id == mid].checkpoint_id.tolist()[-k:] for mid in ids]
            rep.table["saved_checkpoint_id"] = _save_average_last_k(zs, rep, zs.layout(lid), parents, ds, split, k)
        tables.append(rep.table)
        summaries.append(rep.summary)
    if not tables:
        raise UserError(f"no selected model has {k} checkpoints", "lower --k or widen --where")
    table = pd.concat(tables, ignore_index=True)
    metric = "accuracy" if ds.task == "classification" else "r2"
    summary = {"mode": "last-k", "k": k, "models": len(table), "skipped_models": len(skipped), "dataset": dataset,
               "split": split, f"mean_{metric}_final": float(table[f"{metric}_final"].mean()),
               f"mean_{metric}_avg": float(table[f"{metric}_avg"].mean()),
               f"mean_delta_{metric}": float(table[f"delta_{metric}"].mean()),
               "improved": int((table[f"delta_{metric}"] > 0).sum())}
    _skipped(zs, summary)
    _emit(summary, table, fmt, "wsl average (last-k)")


# --------------------------------------------------------------------------- wsl prune
def prune_cmd(
    where: Optional[str] = WhereOption,
    dataset: str = DatasetOption,
    sparsity: str = typer.Option("0.5,0.8,0.9", "--sparsity", help="Comma-separated fractions of weights to zero."),
    include_bias: bool = typer.Option(False, "--include-bias", help="Prune biases and norm gains too."),
    save: bool = typer.Option(False, "--save", help="Keep the pruned weights: one new models row per checkpoint and sparsity (status 'derived', lineage columns)."),
    store: Optional[Path] = common.StoreOption,
    split: str = SplitOption,
    dataset_seed: int = SeedOption,
    device: str = DeviceOption,
    skip_damaged: bool = SkipDamagedOption,
    fmt: str = common.FormatOption,
) -> None:
    """Global magnitude pruning of the selected checkpoints at each sparsity, evaluated in fused calls."""
    import pandas as pd

    from wsl.prune import prune_sweep

    common.check_format(fmt, ("table", "json", "csv"))
    try:
        levels = [float(s) for s in sparsity.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sparsity {sparsity!r} is not a list of numbers", "e.g. --sparsity 0.5,0.8,0.9") from None
    zs = _open(store)
    ds = _dataset(dataset, dataset_seed)
    sel = _select(zs, where)
    tables = []
    saved = 0
    for lid, (w, part) in _weights_by_layout(zs, sel, skip_damaged).items():
        t = prune_sweep(w, zs.layout(lid), ds, levels, split=split, device=device,
                        include_bias=include_bias, model_ids=part.checkpoint_id.tolist())
        if save:
            saved += _save_pruned(zs, w, zs.layout(lid), part.checkpoint_id.tolist(), t, levels, include_bias, ds, split)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    metric = "accuracy" if "accuracy" in table else "r2"
    per = table.groupby("sparsity").agg(achieved=("achieved", "mean"), **{f"mean_{metric}": (metric, "mean")},
                                        mean_delta=("delta", "mean")).reset_index()
    summary = {"dataset": dataset, "split": split, "checkpoints": len(sel) - len(zs.skipped_rows), "score": metric,
               "levels": per.to_dict(orient="records")}
    _skipped(zs, summary)
    if save:
        summary["saved_models"] = saved
    if fmt == "table":
        common.print_table(per, f"wsl prune: {len(sel)} checkpoints on {dataset}/{split}")
        if save:
            typer.echo(f"saved {saved} pruned models (select them with: wsl query \"SELECT * FROM models WHERE operation = 'prune'\")")
        return
    _emit(summary, table, fmt, "wsl prune")


# --------------------------------------------------------------------------- --save (wsl.derived)
def _score(ds, split: str, loss: float, value: float) -> dict:
    acc = float(value) if ds.task == "classification" else None
    return {"dataset": ds.name, "dataset_id": ds.dataset_id, "split": split, "loss": float(loss), "accuracy": acc}


def _save_average_last_k(zs, rep, layout, parents, ds, split: str, k: int) -> list[str]:
    from wsl.derived import save_derived

    metric = "accuracy" if ds.task == "classification" else "r2"
    scores = [_score(ds, split, r["loss_avg"], r[f"{metric}_avg"]) for r in rep.table.to_dict(orient="records")]
    return save_derived(zs, rep.weights, layout, parents, "average", [{"mode": "last-k", "k": k}] * len(parents), scores)


def _save_average_seeds(zs, rep, layout, parents, ds, split: str, aligned: bool) -> None:
    from wsl.derived import save_derived

    metric = "accuracy" if ds.task == "classification" else "r2"
    row = rep.table.iloc[-1]
    ids = save_derived(zs, rep.weights, layout, [parents], "average",
                       [{"mode": "seeds", "aligned": aligned, "reference": parents[0]}],
                       [_score(ds, split, row["loss"], row[metric])])
    rep.summary["saved_checkpoint_id"] = ids[0]


def _save_pruned(zs, w, layout, parents, table, levels, include_bias: bool, ds, split: str) -> int:
    import torch

    from wsl.derived import save_derived
    from wsl.prune import magnitude_prune

    metric = "accuracy" if ds.task == "classification" else "r2"
    n = 0
    for s in levels:
        if s == 0.0:
            continue
        pruned, _ = magnitude_prune(w, layout, s, include_bias)
        rows = table[table.sparsity == s].set_index("model")
        scores = [_score(ds, split, rows.loc[c, "loss"], rows.loc[c, metric]) for c in parents]
        params = [{"method": "global-magnitude", "sparsity": s, "include_bias": include_bias}] * len(parents)
        save_derived(zs, torch.as_tensor(pruned), layout, [[c] for c in parents], "prune", params, scores)
        n += len(parents)
    return n


# --------------------------------------------------------------------------- wsl predict-properties
def predict_properties_cmd(
    where: Optional[str] = WhereOption,
    target: List[str] = typer.Option(["test_acc"], "--target", "-t", help='Per-checkpoint value to predict: a column or SQL expression over checkpoints JOIN models, e.g. test_acc, "log10(lr)", epochs. Repeat for several.'),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Fraction of models held out (all checkpoints of a model on one side)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/held-out split."),
    store: Optional[Path] = common.StoreOption,
    skip_damaged: bool = SkipDamagedOption,
    fmt: str = common.FormatOption,
) -> None:
    """Model Zoos baseline: per-tensor weight statistics -> ridge regression; R² on held-out models."""
    import pandas as pd

    from wsl.properties import layer_statistics, predict_properties

    common.check_format(fmt, ("table", "json", "csv"))
    zs = _open(store)
    extra = "".join(f", CAST(({t}) AS DOUBLE) AS __t{i}" for i, t in enumerate(target))
    sel = _select(zs, where, extra)
    counts = sel.layout_id.value_counts()
    lid = counts.index[0]
    if len(counts) > 1:
        raise UserError(f"the selection has {len(counts)} layouts ({common.name_list(counts.index)})",
                        "predict properties within one architecture and width: add e.g. AND width = 32 to --where")
    w, part = _weights_by_layout(zs, sel, skip_damaged)[lid]
    X, _ = layer_statistics(w, zs.layout(lid))
    targets = {t: part[f"__t{i}"].to_numpy(dtype=float) for i, t in enumerate(target)}
    rep = predict_properties(X, targets, test_fraction=test_fraction, seed=seed, groups=part.model_id.tolist())
    rows = pd.DataFrame([{"target": t, "r2": r["r2"], "n_train": r["n_train"], "n_test": r["n_test"],
                          "alpha": r["alpha"]} for t, r in rep.items()])
    summary = {"checkpoints": len(part), "models": int(part.model_id.nunique()), "layout_id": lid,
               "features": int(X.shape[1]), "test_fraction": test_fraction, "seed": seed,
               "r2": {t: r["r2"] for t, r in rep.items()}}
    _skipped(zs, summary)
    _emit(summary, rows, fmt, "wsl predict-properties")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("average")(average_cmd)
    app.command("prune")(prune_cmd)
    app.command("predict-properties")(predict_properties_cmd)
