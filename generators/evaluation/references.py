"""The stored checkpoints a report compares generated models with.

    ref, ids = zoo_checkpoints(store, "digits-pair:0-2", layout_id)   # the zoo's models for that dataset
    check_store_layout(store, gen, "digits-pair:0-2")                  # the store's zoo has the generator's layout
    tw = training_weights(store, gen)        # its training checkpoints by recorded id, stored + aligned
    stored, aligned = training_weights_split(store, gen)   # the same two halves apart
    pool, tasks = task_checkpoints(store, ["digits-pair:0-1"], layout_id)   # what retrieval picks from

Every query runs over the pool of store/filters.py with our values bound as parameters.
"""
from __future__ import annotations

from typing import Any

import torch

from generators.interface import WeightGenerator
from generators.training_set import from_ids, last_finished
from store import filters
from store.errors import UserError


def _has_zoo(store) -> bool:
    return store is not None and store.count("checkpoints") > 0 and store.count("models") > 0


def zoo_checkpoints(store, dataset: str, layout_id: str) -> tuple[torch.Tensor, list[str]]:
    """The last checkpoint of every finished model trained on `dataset` with this layout: ([m, P], ids)."""
    if not _has_zoo(store):
        return torch.empty(0), []
    params: dict[str, Any] = {"wsl_dataset": dataset, "wsl_layout": layout_id}
    df = filters.select_checkpoints(store, None, "models.dataset = $wsl_dataset",
                                    "checkpoints.layout_id = $wsl_layout", last_finished(params),
                                    columns="checkpoints.checkpoint_id", order_by="checkpoints.checkpoint_id",
                                    params=params, allow_empty=True)
    ids = df["checkpoint_id"].tolist()
    if not ids:
        return torch.empty(0), []
    w, meta = store.weights(ids)
    return w.to(torch.float32), list(meta["checkpoint_id"])


def check_store_layout(store, gen: WeightGenerator, dataset: str, layout=None) -> None:
    """UserError when the store's zoo for `dataset` has models, but none of the generator's layout.

    An explicit `layout` (what a multi-layout generator is asked to make, e.g. a width without a zoo) is not checked."""
    if not _has_zoo(store) or layout is not None:
        return
    df = filters.select_checkpoints(store, None, "models.dataset = $wsl_dataset",
                                    columns="DISTINCT checkpoints.layout_id", order_by="checkpoints.layout_id",
                                    params={"wsl_dataset": dataset}, allow_empty=True)
    got = df["layout_id"].tolist()
    if got and gen.layout.layout_id not in got:
        raise UserError(f"the generator makes layout {gen.layout.layout_id}, but the store's models for {dataset!r} "
                        f"have layout(s) {got}",
                        "use a generator fit on this zoo (same architecture and width), or another --store")


def training_weights(store, gen: WeightGenerator, layout=None) -> torch.Tensor | None:
    """The generator's training checkpoints, read by their recorded ids, as stored and as aligned ([2N, P]).

    None when there is nothing to compare with: no store, a generator without recorded
    ids (fit from tensors, or saved before ids were recorded), or a store that holds none
    of them. A store holding only some of them, or other weights under those ids, is a
    UserError (training_set.from_ids): a distance to part of a training set is wrong.
    """
    parts = training_weights_split(store, gen, layout)
    if parts is None:
        return None
    stored, aligned = parts
    return stored if aligned is None else torch.cat([stored, aligned])


def training_weights_split(store, gen: WeightGenerator, layout=None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(as stored [N, P], as aligned [N, P] or None without alignment): what training_weights concatenates.

    layout: for a multi-layout generator (vqar), the layout whose training rows are wanted (default gen.layout)."""
    ids = (gen.training or {}).get("checkpoint_ids") or []
    if store is None or not ids:
        return None
    from generators.components.symmetry import align_groups

    ts = from_ids(store, ids, (gen.training or {}).get("digest"), what=f"generator {gen.generator_id}")
    if ts is None:
        return None
    if len(ts.layouts) > 1 or layout is not None:  # a multi-layout generator (vqar): the rows of the layout asked for
        lid = (layout or gen.layout).layout_id
        if lid not in ts.layouts:
            return None  # a size of the family it was not fit on: no training checkpoint to compare with
        meta = ts.meta[ts.meta["layout_id"] == lid].reset_index(drop=True)
        w, layout = ts.weights[lid], ts.layouts[lid]
    else:
        w, layout, meta = ts.single()
    if layout.layout_id != gen.layout.layout_id and len(ts.layouts) == 1 and not getattr(gen, "multi_layout", False):
        raise UserError(f"generator {gen.generator_id} makes layout {gen.layout.layout_id}, its recorded training "
                        f"checkpoints in store {store.path} have layout {layout.layout_id}",
                        "use the store it was fit on")
    align_by = (gen.training or {}).get("align_by", gen.fit_info.get("align_by"))
    if align_by and align_by in meta.columns:
        return w, align_groups(w, layout, list(meta[align_by]))
    return w, None


def seen_zoo_split(store, gen: WeightGenerator, align_by: str = "seed") -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """For a generator fit from tasks alone (no recorded checkpoints): the zoo's last checkpoints of its seen
    tasks with its layout, (as stored, as aligned by `align_by`), the set a weight-trained generator would have
    learned from, so that NN-L2 novelty compares every method with the same zoo. None without such checkpoints."""
    from generators.components.symmetry import align_groups
    from generators.protocols import tasks_seen_by
    from generators.training_set import Split, select

    seen = sorted(tasks_seen_by(gen.fit_info))
    if not _has_zoo(store) or not seen or (gen.training or {}).get("checkpoint_ids"):
        return None
    params: dict[str, Any] = {"wsl_layout": gen.layout.layout_id}
    try:
        ts = select(store, "checkpoints.layout_id = $wsl_layout", params=params, last=True,
                    protocol=Split("seen", seen, ()))
    except UserError:  # the store has no checkpoint of those tasks with this layout
        return None
    w, layout, meta = ts.single()
    if align_by in meta.columns:
        return w, align_groups(w, layout, list(meta[align_by]))
    return w, None


def task_checkpoints(store, tasks, layout_id: str) -> tuple[torch.Tensor, list[str]]:
    """The last checkpoint of every finished model of `tasks` with this layout, in checkpoint-id order: ([m, P], task of each).

    What retrieval picks from (task_baselines.Pool): the zoo models of the tasks a
    generator was fit on, whatever the method (fit on weights or on the tasks alone).
    """
    tasks = sorted({str(t) for t in tasks})
    if not _has_zoo(store) or not tasks:
        return torch.empty(0), []
    params: dict[str, Any] = {"wsl_layout": layout_id}
    df = filters.select_checkpoints(store, None, filters.in_list("models.dataset", "wsl_tasks", tasks, params),
                                    "checkpoints.layout_id = $wsl_layout", last_finished(params),
                                    columns="checkpoints.checkpoint_id, models.dataset",
                                    order_by="checkpoints.checkpoint_id", params=params, allow_empty=True)
    if df.empty:
        return torch.empty(0), []
    w, meta = store.weights(df["checkpoint_id"].tolist())
    task_of = dict(zip(df["checkpoint_id"], df["dataset"]))
    return w.to(torch.float32), [str(task_of[i]) for i in meta["checkpoint_id"]]


def training_set_status(store, gen: WeightGenerator) -> str:
    """'in store', 'not recorded' or 'not in store': what a report or sample can say about NN-L2."""
    ids = (gen.training or {}).get("checkpoint_ids") or []
    if not ids:
        return "not recorded"
    if store is None or not store.count("checkpoints"):
        return "not in store"
    p: dict[str, Any] = {}
    q = f"SELECT count(*) AS n FROM checkpoints WHERE {filters.in_list('checkpoint_id', 'wsl_ids', ids, p)}"
    return "in store" if int(store.sql(q, p)["n"][0]) else "not in store"
