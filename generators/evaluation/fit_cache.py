"""Fit a generator once per (store content, fit options): a rerun with nothing changed loads the saved one.

    gen, reused = fit_or_reuse("diffusion", store, "demo-out/generator", protocol=split, metric="test_acc",
                               config={"steps": 1500})

`wsl demo` and the benchmark harness refit only when something that shapes the fit
changed. The key (FIT_KEY_FILE beside the saved generator) is the sha256 of: the method,
its full config (defaults filled in, so a changed default refits), the selection (the
user's `where` and its parameters, `last`, the protocol's seen / held-out record, the
metric and `align_by`), and the digest of the selected checkpoints (their ids and the
sha256 of their weights: a store retrained or extended under the same filter refits).
The digest is computed from the checkpoints table's id and sha256 columns alone, never
the weights, so the check costs one metadata query. The key holds the package version too,
but not the code: after changing a method's code without changing its options, delete the
folder (or its fit_key.json) to refit.

A method that fits from tasks alone (`needs_weights = False`) is fit with
`fit_tasks(layout, seen tasks)`; its key holds the layout and the task list instead.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from generators.training_set import Split, digest, last_finished
from store import filters
from store.errors import UserError

FIT_KEY_FILE = "fit_key.json"


def selection_digest(store, where: str | None, params: Mapping[str, Any] | None, last: bool | None,
                     protocol: Split | None) -> str:
    """training_set.digest of what `select(store, where, ...)` would select, from metadata only."""
    where = filters.clean(where)
    last = where is None if last is None else bool(last)
    p: dict[str, Any] = dict(params or {})
    ours = [last_finished(p)] if last else []
    if protocol is not None:
        ours.append(filters.in_list("models.dataset", "wsl_seen", protocol.seen, p))
    q, p = filters.checkpoint_query(where, *ours, columns="checkpoints.checkpoint_id, checkpoints.sha256",
                                    order_by="checkpoints.checkpoint_id", params=p)
    df = store.sql(q, p)
    return digest([str(i) for i in df["checkpoint_id"]], [str(s) for s in df["sha256"]])


def fit_key(method: str, config: Mapping[str, Any], selection: Mapping[str, Any]) -> str:
    from generators.interface import library_versions

    versions = {k: v for k, v in library_versions().items() if k in ("wsl-zoo", "torch", "diffusers")}
    text = json.dumps({"method": method, "config": dict(config), "selection": dict(selection), "versions": versions},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _zoo_layout(store, tasks) -> Any:
    """The one layout of the zoo's finished models of `tasks` (a method fit from tasks generates it)."""
    p: dict[str, Any] = {}
    df = filters.select_checkpoints(store, None, filters.in_list("models.dataset", "wsl_tasks", list(tasks), p),
                                    last_finished(p), columns="DISTINCT checkpoints.layout_id",
                                    order_by="checkpoints.layout_id", params=p)
    ids = list(df["layout_id"])
    if len(ids) != 1:
        raise UserError(f"the seen tasks' zoo models have {len(ids)} layouts ({', '.join(ids)})",
                        "select one architecture and width (a protocol over one zoo)")
    return store.layout(ids[0])


def fit_or_reuse(method: str, store, folder: str | os.PathLike, *, where: str | None = None,
                 params: Mapping[str, Any] | None = None, last: bool | None = None, protocol: Split | None = None,
                 metric: str | None = None, align_by: str | None = "seed", progress=None,
                 config: Mapping[str, Any] | None = None) -> tuple[Any, bool]:
    """(generator, reused): the generator saved in `folder` when its fit key matches, else a new fit saved there."""
    from generators.registry import get_method
    from generators.saving import load_generator

    klass = get_method(method)
    probe = klass(**dict(config or {}))  # validates the options; its config has every default filled in
    folder = Path(folder)
    needs_weights = bool(getattr(klass, "needs_weights", True))
    if needs_weights:
        selection = {"where": filters.clean(where), "params": dict(params or {}), "last": last,
                     "protocol": protocol.record() if protocol else None, "metric": metric, "align_by": align_by,
                     "digest": selection_digest(store, where, params, last, protocol)}
    else:
        if protocol is None:
            raise UserError(f"method {method!r} fits from tasks: it needs a protocol's seen tasks",
                            "give a protocol (--protocol NAME)")
        layout = _zoo_layout(store, protocol.seen)
        selection = {"protocol": protocol.record(), "layout_id": layout.layout_id}
    key = fit_key(method, probe.config_dict(), selection)
    key_file = folder / FIT_KEY_FILE
    if key_file.is_file() and (folder / "config.json").is_file():
        try:
            same = json.loads(key_file.read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return load_generator(folder), True
    key_file.unlink(missing_ok=True)  # a crash during the refit must not leave the old key beside new files
    if needs_weights:
        gen = klass.fit(store, where, params=params, last=last, protocol=protocol, metric=metric, align_by=align_by,
                        progress=progress, **dict(config or {}))
    else:
        gen = klass(**dict(config or {})).fit_tasks(layout, list(protocol.seen), progress=progress)
        gen.fit_info["protocol"] = protocol.record()  # what protocols.check_held_out_unseen reads
        gen.generator_id = gen._compute_id()
    gen.save_pretrained(folder)
    tmp = key_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "method": method, "selection": selection}, sort_keys=True,
                              default=str) + "\n")
    os.replace(tmp, key_file)
    return gen, False
