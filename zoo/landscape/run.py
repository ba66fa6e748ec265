"""Store -> landscape metrics -> `landscape` rows: what `wsl zoo landscape` runs.

    from zoo.landscape import compute_landscape
    summary = compute_landscape("wsl-store", where="zoo = 'phases'")
    store.sql("SELECT phase, count(*) FROM landscape GROUP BY phase")

For every selected model (status done) at the chosen epoch (default: its last):
1. Hessian top eigenvalue and trace, train loss and accuracy, on the recipe's
   samples, `chunk` models per batched Hessian-vector product;
2. mode connectivity and CKA (logits and last hidden layer) for every pair of
   seeds of its configuration (same zoo and hyperparameters, any seed in the
   store, not only the selected ones), batched across pairs; a model's values
   are the means over its pairs (NULL when its configuration has one seed);
3. a phase label from those values and the thresholds, with `phase_margin` and
   `phase_uncertain` (zoo/landscape/phases.py): whether the label is within
   the trace's standard error of a threshold.

Each row stores the estimators' errors and seeds besides the values:
`hessian_top_eig_tol` (relative residual bound of the Lanczos eigenvalue),
`hessian_lanczos_steps`, `hessian_trace_se` (standard error of the trace),
`hessian_hvps` (Hessian-vector products spent on the model) and
`hessian_probe_seed` (`model_seed(model_id, recipe.hessian_seed)`: with the
recipe it reproduces the model's values exactly).

`--where` is the user's filter over the pool of store/filters.py (models LEFT
JOIN checkpoints), composed there with ours; every literal of ours is a bound
parameter. A filter that selects no finished model is a UserError.

Rows are keyed (model_id, epoch, recipe_id), recipe_id being a hash of the
measurement recipe and the thresholds; models that already have a row for
this recipe_id are skipped, so a rerun (or a resumed one) computes only what
is missing. `metrics_recipe_id` (an extra column) hashes the measurement
recipe alone: values with equal metrics_recipe_id are comparable even when
their phase thresholds differ, and `relabel` re-labels them without
recomputing anything.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from store import filters
from store.errors import UserError
from zoo.landscape.connectivity import mode_connectivity
from zoo.landscape.hessian import hessian_metrics
from zoo.landscape.pairs import config_key, pair_cka, seed_pairs
from zoo.landscape.phases import Thresholds, label
from zoo.landscape.recipe import Recipe

METRICS = ("hessian_top_eig", "hessian_trace", "mode_connectivity", "cka_logits", "cka_hidden", "train_loss", "train_acc")
# the estimators' errors and seed, stored beside the values (docs/landscape.md)
ERRORS = ("hessian_top_eig_tol", "hessian_lanczos_steps", "hessian_trace_se", "hessian_hvps", "hessian_probe_seed")

# progress(advance, info, total=None): `advance` models' worth of work done; total set once, when known
Progress = Callable[..., None]


@dataclass
class LandscapeSummary:
    """What `compute_landscape` returns (and `wsl zoo landscape` prints)."""

    store: str
    recipe_id: str
    metrics_recipe_id: str
    epoch: str  # "last" or the epoch number
    selected: int  # models matching --where (status done)
    computed: int  # rows written now
    already_stored: int  # skipped: a row for this recipe_id exists
    without_checkpoint: int  # selected, but no checkpoint at that epoch
    pairs: int  # seed pairs whose curve was trained
    phases: dict[str, int] = field(default_factory=dict)
    uncertain: int = 0  # rows whose label is within margin_se standard errors of the trace threshold
    max_hvps: int = 0  # most Hessian-vector products one model used
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def landscape_recipe_id(recipe: Recipe, thresholds: Thresholds) -> str:
    """The `recipe_id` of a row: the measurement recipe and the phase thresholds together."""
    text = json.dumps({"recipe": recipe.to_dict(), "thresholds": thresholds.to_dict()}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_seed(model_id: str, seed: int = 0) -> int:
    """A model's own random stream for probes and start vectors: independent of its cohort and of --where.

    The first 60 bits of sha256(f"{model_id}:{seed}"), so it fits the int64 `hessian_probe_seed` column.
    """
    return int(hashlib.sha256(f"{model_id}:{int(seed)}".encode()).hexdigest()[:15], 16)


def _open(store):
    from store.store import ZooStore

    if isinstance(store, ZooStore):
        return store
    return ZooStore(Path(store), create=False)


DONE = {"done": "done"}


def selected_models(store, where: str | None) -> pd.DataFrame:
    """model_id of the finished (status done) models --where selects.

    A bad condition, or one that selects no finished model, is a UserError naming the filter.
    """
    try:
        sel = filters.select_models(store, where, "models.status = $done", params=DONE, allow_empty=True)
    except UserError as e:
        raise UserError(f"--where {filters.clean(where)!r} is not a valid condition ({e.message})",
                        "write a SQL condition on models and checkpoints columns, e.g. \"zoo = 'phases' AND width >= 8\"") from None
    if sel.empty:
        w = filters.clean(where)
        raise UserError(f"--where {w!r} selects no finished models (status 'done')" if w
                        else f"store {getattr(store, 'path', store)} has no finished models", filters.HINT)
    return sel


def _select(store, where: str | None, epoch: int | None) -> tuple[pd.DataFrame, int, int]:
    """(checkpoints to analyse with their model columns, models selected, selected models without that epoch)."""
    sel = selected_models(store, where)
    n_selected = len(sel)
    ck = _checkpoints_at(store, list(sel["model_id"]), epoch)
    if ck.empty:
        w = filters.clean(where)
        at = "their last epoch" if epoch is None else f"epoch {int(epoch)}"
        raise UserError(f"{'--where ' + repr(w) if w else 'the store'} selects {n_selected} finished models, none with "
                        f"a checkpoint at {at}", "pick an epoch they have (--epoch), or check the filter")
    return ck, n_selected, n_selected - ck["model_id"].nunique()


def _checkpoints_at(store, model_ids: Sequence[str], epoch: int | None) -> pd.DataFrame:
    if not model_ids:
        return pd.DataFrame()
    params: dict[str, Any] = {}
    ids = filters.in_list("m.model_id", "ids", model_ids, params)
    if epoch is not None:
        params["epoch"] = int(epoch)
        pick = "c.epoch = $epoch"
    else:
        pick = "c.epoch = (SELECT max(c2.epoch) FROM checkpoints c2 WHERE c2.model_id = c.model_id)"
    return store.sql(
        "SELECT c.checkpoint_id, c.model_id, c.epoch, c.layout_id, m.zoo, m.dataset, m.dataset_id, m.task, "
        f"m.hparams, m.seed FROM checkpoints c JOIN models m ON c.model_id = m.model_id WHERE {ids} AND {pick} "
        "ORDER BY c.model_id", params)


def _dataset_for(store, name: str, dataset_id: str | None):
    """The dataset a model was trained on, rebuilt from the registry with the split seed the store recorded."""
    from zoo.datasets import load_dataset

    seed = 0
    if dataset_id:
        d = store.sql("SELECT seed FROM datasets WHERE dataset_id = $id LIMIT 1", {"id": dataset_id})
        if len(d):
            seed = int(d["seed"].iloc[0])
    ds = load_dataset(name, seed)
    if dataset_id and ds.dataset_id != dataset_id:
        raise UserError(f"dataset {name!r} (seed {seed}) rebuilds with id {ds.dataset_id}, but the models were trained "
                        f"on {dataset_id}", "the dataset changed since training; use the wsl version that trained the zoo")
    return ds


def compute_landscape(store, where: str | None = None, epoch: int | None = None, recipe: Recipe | None = None,
                      thresholds: Thresholds | None = None, progress: Progress | None = None,
                      chunk: int | None = None, pair_chunk: int = 256) -> LandscapeSummary:
    """Compute and append landscape rows for the selected models; see the module docstring."""
    t0 = time.perf_counter()
    recipe = recipe or Recipe()
    thresholds = thresholds or Thresholds()
    store = _open(store)
    rid = landscape_recipe_id(recipe, thresholds)
    targets, n_selected, no_ck = _select(store, where, epoch)
    summary = LandscapeSummary(store=str(store.path), recipe_id=rid, metrics_recipe_id=recipe.recipe_id,
                               epoch="last" if epoch is None else str(epoch), selected=n_selected, computed=0,
                               already_stored=0, without_checkpoint=no_ck, pairs=0)
    if len(targets):
        params = {"rid": rid}
        ids = filters.in_list("model_id", "ids", list(targets["model_id"]), params)
        done = store.sql(f"SELECT model_id, epoch FROM landscape WHERE recipe_id = $rid AND {ids}", params)
        have = set(zip(done["model_id"], done["epoch"].astype(int)))
        keep = [(m, int(e)) not in have for m, e in zip(targets["model_id"], targets["epoch"])]
        summary.already_stored = int(len(targets) - sum(keep))
        targets = targets[keep].reset_index(drop=True)
    if not len(targets):
        summary.seconds = round(time.perf_counter() - t0, 2)
        return summary
    if targets["dataset"].isna().any():
        bad = targets[targets["dataset"].isna()]["model_id"].tolist()
        raise UserError(f"models {bad[:3]} have no dataset recorded, so their loss landscape cannot be measured",
                        "exclude them with --where (e.g. \"dataset IS NOT NULL\")")

    # every seed of the targets' configurations, at each target's epoch: the pair partners
    params = dict(DONE)
    zoos = filters.in_list("zoo", "zoos", sorted(set(targets["zoo"])), params)
    cands = store.sql(f"SELECT model_id, zoo, hparams, seed FROM models WHERE status = $done AND {zoos}", params)
    cands["config"] = [config_key(z, h, m) for z, h, m in zip(cands["zoo"], cands["hparams"], cands["model_id"])]
    targets["config"] = [config_key(z, h, m) for z, h, m in zip(targets["zoo"], targets["hparams"], targets["model_id"])]
    work: list[pd.DataFrame] = [targets.assign(target=True)]
    for ep, grp in targets.groupby("epoch"):
        partner_ids = cands[cands["config"].isin(set(grp["config"])) & ~cands["model_id"].isin(set(grp["model_id"]))]
        if len(partner_ids):
            extra = _checkpoints_at(store, list(partner_ids["model_id"]), int(ep))
            if len(extra):
                extra["config"] = [config_key(z, h, m) for z, h, m in zip(extra["zoo"], extra["hparams"], extra["model_id"])]
                work.append(extra.assign(target=False))
    allck = pd.concat(work, ignore_index=True)
    allck["dataset_id"] = [d if isinstance(d, str) else "" for d in allck["dataset_id"]]
    report = progress or (lambda a, info, total=None: None)
    done_so_far = [0.0]

    def advance(a: float, info: str) -> None:
        done_so_far[0] += a
        report(a, info)

    report(0, "loading", total=int(len(targets)))
    # check every group's layout and dataset before computing anything: a bad one writes nothing
    layouts = {lid: store.layout(lid) for lid in allck["layout_id"].unique()}
    datasets = {(n, d): _dataset_for(store, n, d or None) for n, d in allck[["dataset", "dataset_id"]].drop_duplicates().itertuples(index=False)}

    for (layout_id, dataset, dataset_id, ep), grp in allck.groupby(["layout_id", "dataset", "dataset_id", "epoch"], dropna=False):
        grp = grp.sort_values(["config", "seed", "model_id"]).reset_index(drop=True)
        layout = layouts[layout_id]
        ds = datasets[(dataset, dataset_id)]
        task = str(grp["task"].iloc[0] or ds.task)
        batches = recipe.eval_batches(ds)
        W, _ = store.weights(list(grp["checkpoint_id"]))
        W = W.float() if W.dtype != torch.float64 else W
        n_targets = int(grp["target"].sum())
        what = f"{layout.arch.get('name') if layout.arch else 'model'} on {dataset}, epoch {int(ep)}"

        # 1. Hessian, loss, accuracy: target models only
        tidx = np.flatnonzero(grp["target"].to_numpy())
        seeds = [model_seed(m, recipe.hessian_seed) for m in grp["model_id"].iloc[tidx]]
        hm = hessian_metrics(layout, W[tidx], batches, task=task, iterations=recipe.iterations, tol=recipe.eig_tol,
                             deflation=recipe.deflation, probes=recipe.probes, seeds=seeds, chunk=chunk,
                             progress=lambda k: advance(0.5 * k, f"{what}: Hessian"))

        # 2. seed pairs of each configuration that has a target: curves and CKA, batched across pairs
        pairs: list[tuple[int, int]] = []
        members: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(grp["config"]):
            members[c].append(i)
        target_set = set(tidx.tolist())
        for c, idx in members.items():
            if not target_set & set(idx):
                continue
            pairs += [p for p in seed_pairs(len(idx), recipe.partners, idx) if p[0] in target_set or p[1] in target_set]
        mc = torch.full((len(pairs),), float("nan"), dtype=torch.float64)
        share = 0.5 * n_targets / max(1, math.ceil(len(pairs) / pair_chunk)) if pairs else 0.5 * n_targets
        for lo in range(0, len(pairs), pair_chunk):
            chunk_pairs = pairs[lo:lo + pair_chunk]
            a = torch.tensor([p[0] for p in chunk_pairs])
            b = torch.tensor([p[1] for p in chunk_pairs])
            reported = [0.0]

            def curve_progress(f: float, _r=reported) -> None:
                _r[0] += 0.9 * share * f
                advance(0.9 * share * f, f"{what}: curves for {len(pairs)} pairs")

            r = mode_connectivity(layout, W[a], W[b], ds.split(recipe.split), batches, task=task,
                                  points=recipe.curve_points, epochs=recipe.curve_epochs, lr=recipe.curve_lr,
                                  batch_size=recipe.curve_batch_size, seed=recipe.curve_seed,
                                  pair_seeds=[model_seed(grp["model_id"].iloc[i] + "|" + grp["model_id"].iloc[j],
                                                         recipe.curve_seed) for i, j in chunk_pairs],
                                  progress=curve_progress)
            mc[lo:lo + len(chunk_pairs)] = r["mc"]
            advance(max(0.0, share - reported[0]), f"{what}: curves")
        summary.pairs += len(pairs)
        if not pairs:
            advance(0.5 * n_targets, what)
        cka_l, cka_h = pair_cka(layout, W, pairs, members, batches, chunk)

        # 3. per-model means over its pairs, phase, rows
        sums: dict[int, list[list[float]]] = defaultdict(lambda: [[], [], []])
        for k, (i, j) in enumerate(pairs):
            for m in (i, j):
                sums[m][0].append(float(mc[k]))
                sums[m][1].append(cka_l[k])
                sums[m][2].append(cka_h[k])
        rows = []
        for n, i in enumerate(tidx.tolist()):
            vals = sums.get(i, [[], [], []])
            row = {
                "model_id": grp["model_id"].iloc[i], "epoch": int(ep), "recipe_id": rid,
                "hessian_top_eig": float(hm["hessian_top_eig"][n]), "hessian_trace": float(hm["hessian_trace"][n]),
                "mode_connectivity": _mean(vals[0]), "cka_logits": _mean(vals[1]), "cka_hidden": _mean(vals[2]),
                "train_loss": float(hm["train_loss"][n]), "train_acc": _finite(float(hm["train_acc"][n])),
                "hessian_top_eig_tol": float(hm["hessian_top_eig_tol"][n]),
                "hessian_lanczos_steps": int(hm["hessian_lanczos_steps"][n]),
                "hessian_trace_se": _finite(float(hm["hessian_trace_se"][n])),
                "hessian_hvps": int(hm["hessian_hvps"][n]), "hessian_probe_seed": int(seeds[n]),
            }
            row.update(label(row, thresholds))
            row.update({"thresholds": thresholds.to_json(), "recipe": recipe.to_json(),
                        "metrics_recipe_id": recipe.recipe_id, "checkpoint_id": grp["checkpoint_id"].iloc[i],
                        "num_pairs": len(vals[0])})
            rows.append(row)
        store.append("landscape", rows)  # one part per group: a crash keeps the groups already done
        summary.computed += len(rows)
        advance(summary.computed - done_so_far[0], what)  # whole models done: no rounding left over
        for r_ in rows:
            key = r_["phase"] or "unlabelled"
            summary.phases[key] = summary.phases.get(key, 0) + 1
            summary.uncertain += bool(r_["phase_uncertain"])
            summary.max_hvps = max(summary.max_hvps, r_["hessian_hvps"])
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def _mean(v: Sequence[float]) -> float | None:
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def relabel(store, thresholds: Thresholds, metrics_recipe_id: str | None = None, where: str | None = None) -> int:
    """Label stored metrics again under other thresholds (no recomputation); returns rows written.

    Reads the rows of one measurement recipe (`metrics_recipe_id`; default: the
    only one in the store) and appends them with the new phase, thresholds and recipe_id.
    """
    store = _open(store)
    if "metrics_recipe_id" not in store.sql("SELECT * FROM landscape LIMIT 0").columns:
        raise UserError("the landscape table has no rows to relabel", "run `wsl zoo landscape` first")
    ids = store.sql("SELECT DISTINCT metrics_recipe_id FROM landscape WHERE metrics_recipe_id IS NOT NULL")
    ids = list(ids["metrics_recipe_id"])
    if metrics_recipe_id is None:
        if len(ids) != 1:
            raise UserError(f"the store holds {len(ids)} measurement recipes ({ids[:4]})",
                            "name one with --metrics-recipe ID")
        metrics_recipe_id = ids[0]
    if filters.clean(where):
        selected_models(store, where)  # a filter that selects nothing is an error, as everywhere
    try:
        rows = store.sql("SELECT * FROM landscape WHERE metrics_recipe_id = $mid AND model_id IN "
                         f"({filters.model_ids_subquery(where)})", {"mid": metrics_recipe_id})
    except UserError as e:
        raise UserError(f"--where {filters.clean(where)!r} is not a valid condition ({e.message})", filters.HINT) from None
    if not len(rows):
        w = filters.clean(where)
        raise UserError(f"no landscape rows with metrics_recipe_id {metrics_recipe_id!r}"
                        + (f" for the models --where {w!r} selects" if w else ""), "check the id with `wsl query`")
    recipe = Recipe.from_dict(json.loads(rows["recipe"].iloc[0]))
    rid = landscape_recipe_id(recipe, thresholds)
    rows = rows.drop_duplicates(["model_id", "epoch"]).copy()
    rows = rows.astype(object).where(pd.notna(rows), None)
    rows["recipe_id"] = rid
    rows["thresholds"] = thresholds.to_json()
    labels = [label(r, thresholds) for r in rows.to_dict("records")]
    for k in ("phase", "phase_margin", "phase_uncertain"):
        rows[k] = [d[k] for d in labels]
    return store.append("landscape", rows.to_dict("records"))
