"""Which checkpoints a generator is fit on: selected from a store with SQL once, then known by id.

    ts = select(store, "zoo = 'digits-pairs'", last=True, protocol=Split("digits-pairs", seen, held_out))
    weights, layout, meta = ts.single()      # one layout (diffusion); ts.weights / ts.layouts for several
    ts.provenance()                          # checkpoint ids, their count and digest, zoo(s), layouts, filter
    again = from_ids(store, ids, digest)     # the same checkpoints later, whatever was added since

The selection runs over the one pool of store/filters.py (models LEFT JOIN checkpoints,
never the weights column): the user's `where` is composed with our own conditions,
whose values travel as bound parameters. Our conditions: `last` (the last checkpoint of
every finished model: the default when there is no `where`) and a protocol's seen
tasks (`protocol=Split(...)`: its held-out tasks never reach the fit).

Why record ids: a report, a publish or a check run later must see exactly the
checkpoints the generator learned from. Replaying the SQL against the store as it is
then would silently pick up checkpoints added since. The digest is the sha256 of the
lines "checkpoint_id<TAB>sha256-of-its-weights" sorted by id: it pins the ids and what
they hold.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from store import filters
from store.errors import UserError
from store.layout import ParamLayout

COLUMNS = "checkpoints.*, models.* EXCLUDE (model_id)"
ORDER = "checkpoints.checkpoint_id"
DEFAULT_DESCRIPTION = "the last checkpoint of every finished model"


@dataclass(frozen=True)
class Split:
    """A protocol's split as the training set uses it: fit on `seen`, keep `held_out` out (both task names)."""

    name: str
    seen: tuple[str, ...]
    held_out: tuple[str, ...]
    spec: Mapping[str, Any] | None = None  # the protocol as data (generators/protocols.py Protocol.to_dict())

    def record(self) -> dict[str, Any]:
        """What a fitted generator keeps in fit_info["protocol"] (read by protocols.check_held_out_unseen)."""
        return {"protocol": dict(self.spec) if self.spec else {"name": self.name},
                "seen": list(self.seen), "held_out": list(self.held_out)}

    def __post_init__(self):
        object.__setattr__(self, "seen", tuple(self.seen))
        object.__setattr__(self, "held_out", tuple(self.held_out))
        both = sorted(set(self.seen) & set(self.held_out))
        if both:
            raise UserError(f"protocol {self.name!r} lists {both} as both seen and held out", "fix the protocol's split")


def last_finished(params: dict[str, Any]) -> str:
    """Our condition "the last checkpoint of every finished model"; its literal is bound into `params`."""
    params["wsl_finished"] = "done"
    return ("models.status = $wsl_finished AND (model_id, checkpoints.epoch) IN "
            "(SELECT model_id, max(epoch) FROM checkpoints GROUP BY model_id)")


def digest(ids: Sequence[str], sha256s: Sequence[str]) -> str:
    """sha256 of "id<TAB>sha256" lines sorted by id: one string that pins which checkpoints and what they hold."""
    h = hashlib.sha256()
    for i, s in sorted(zip(ids, sha256s)):
        h.update(f"{i}\t{s}\n".encode())
    return h.hexdigest()


@dataclass
class TrainingSet:
    """Selected checkpoints: metadata rows (sorted by checkpoint_id) and their weights, grouped by layout."""

    meta: pd.DataFrame
    weights: dict[str, torch.Tensor]  # layout_id -> [rows of that layout, in meta order, P]
    layouts: dict[str, ParamLayout]
    where: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    last: bool = False
    protocol: Split | None = None
    store: str | None = None

    @property
    def checkpoint_ids(self) -> list[str]:
        return [str(i) for i in self.meta["checkpoint_id"]]

    @property
    def digest(self) -> str:
        return digest(self.checkpoint_ids, [str(s) for s in self.meta["sha256"]])

    @property
    def zoos(self) -> list[str]:
        return sorted({str(z) for z in self.meta["zoo"].dropna()}) if "zoo" in self.meta.columns else []

    def describe(self) -> str:
        parts = [repr(self.where)] if self.where else []
        if self.last:
            parts.append(DEFAULT_DESCRIPTION)
        if self.protocol is not None:
            parts.append(f"the seen tasks of protocol {self.protocol.name!r}")
        return " AND ".join(parts) or "every checkpoint"

    def single(self) -> tuple[torch.Tensor, ParamLayout, pd.DataFrame]:
        """(weights [N, P], layout, meta) when every row has one layout; a UserError naming all layouts otherwise."""
        if len(self.layouts) != 1:
            ids = sorted(self.layouts)
            raise UserError(f"the selection mixes {len(ids)} layouts ({', '.join(ids)}): different architectures or widths",
                            "add a filter such as \"layout_id = '...'\" so all models share one layout "
                            "(or use a method fit on several layouts)")
        (lid, layout), = self.layouts.items()
        return self.weights[lid], layout, self.meta

    def provenance(self) -> dict[str, Any]:
        """What a generator records about its training set (training_set.json and the `generators` row)."""
        p = self.protocol
        return {"checkpoint_ids": self.checkpoint_ids, "num_train": len(self.meta), "digest": self.digest,
                "zoo": self.zoos, "layout_ids": sorted(self.layouts), "where": self.where,
                "params": {k: v for k, v in self.params.items() if not k.startswith("wsl_")},
                "last": self.last, "protocol": p.name if p else None,
                "held_out": list(p.held_out) if p else [], "datasets": sorted({str(d) for d in self.meta["dataset"]})}


def _has_checkpoints(store) -> bool:
    try:
        return store.count("checkpoints") > 0 and store.count("models") > 0
    except UserError:
        return False


def select(store, where: str | None = None, *, params: Mapping[str, Any] | None = None, last: bool | None = None,
           protocol: Split | None = None, metric: str | None = None, skip_damaged: bool = False) -> TrainingSet:
    """The checkpoints `where` (and our conditions) select, with their weights.

    last: only the last checkpoint of every finished model (default: True without
    `where`, False with one). params: values for `$name` placeholders in `where`.
    skip_damaged: checkpoints whose stored weights fail their integrity check are left
    out (listed in store.skipped_rows) instead of stopping.
    """
    where = filters.clean(where)
    last = where is None if last is None else bool(last)
    p: dict[str, Any] = dict(params or {})
    ours = []
    if last:
        ours.append(last_finished(p))
    if protocol is not None:
        ours.append(filters.in_list("models.dataset", "wsl_seen", protocol.seen, p))
    ts = TrainingSet(pd.DataFrame(), {}, {}, where, dict(params or {}), last, protocol, str(getattr(store, "path", store)))
    meta = None
    if _has_checkpoints(store):
        q, p = filters.checkpoint_query(where, *ours, columns=COLUMNS, order_by=ORDER, params=p)
        meta = store.sql(q, p)
    if meta is None or meta.empty:
        raise UserError(f"the selection {ts.describe()} matches no checkpoints in store {ts.store}", filters.HINT)
    if metric is not None:
        if metric not in meta.columns:
            raise UserError(f"metric {metric!r} is not a column of checkpoints/models",
                            "use e.g. test_acc, test_loss or train_acc")
        if meta[metric].isna().any():
            raise UserError(f"metric {metric!r} is missing for {int(meta[metric].isna().sum())} selected checkpoints",
                            "filter those rows out or pick another metric")
    meta = meta.reset_index(drop=True)
    meta["split_seed"] = _split_seeds(store, meta)
    ts.meta = meta
    _read_weights(store, ts, skip_damaged)
    return ts


def from_ids(store, ids: Sequence[str], expected_digest: str | None = None, what: str = "the generator") -> TrainingSet | None:
    """The recorded checkpoints, read back by id; None when the store has none of them.

    Some but not all of them present, or present with other weights than recorded (the
    digest differs), is a UserError that says which: a report over part of a training
    set, or over other weights under the same ids, would be silently wrong.
    """
    ids = [str(i) for i in ids]
    if not ids or not _has_checkpoints(store):
        return None
    p: dict[str, Any] = {}
    cond = filters.in_list("checkpoints.checkpoint_id", "wsl_ids", ids, p)
    q, p = filters.checkpoint_query(None, cond, columns=COLUMNS, order_by=ORDER, params=p)
    meta = store.sql(q, p)
    if meta.empty:
        return None
    found = set(meta["checkpoint_id"])
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"{what} was fit on {len(ids)} checkpoints; store {getattr(store, 'path', store)} lacks "
                        f"{len(missing)} of them: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                        "use the store it was fit on, or pull its zoo with `wsl pull ORG/NAME --weights`")
    if expected_digest is not None:
        got = digest(list(meta["checkpoint_id"]), list(meta["sha256"]))
        if got != expected_digest:
            raise UserError(f"store {getattr(store, 'path', store)} holds checkpoints with the ids {what} was fit on, "
                            f"but other weights (training-set digest {got[:12]}..., recorded {expected_digest[:12]}...)",
                            "use the store it was fit on; a zoo retrained under the same ids is another training set")
    meta = meta.reset_index(drop=True)
    meta["split_seed"] = _split_seeds(store, meta)
    ts = TrainingSet(meta, {}, {}, store=str(getattr(store, "path", store)))
    _read_weights(store, ts)
    return ts


def _read_weights(store, ts: TrainingSet, skip_damaged: bool = False) -> None:
    ids = ts.checkpoint_ids
    grouped = store.weights(ids, grouped=True, skip_damaged=skip_damaged)
    kept: set[str] = set()
    for lid in sorted(grouped):
        w, m = grouped[lid]
        ts.weights[lid] = w.to(torch.float32)
        ts.layouts[lid] = store.layout(lid)
        kept |= set(m["checkpoint_id"])
    if len(kept) < len(ts.meta):  # damaged rows left out (skip_damaged): the metadata follows the weights
        ts.meta = ts.meta[ts.meta["checkpoint_id"].isin(kept)].reset_index(drop=True)
        if ts.meta.empty:
            raise UserError("every selected checkpoint is damaged",
                            "run `wsl store check --quarantine`, then re-run the training that wrote them")


def _split_seeds(store, meta: pd.DataFrame) -> list[int]:
    """The data-split seed of each row's dataset (models.data_seed, else the datasets table; 0 when unknown)."""
    if "data_seed" in meta.columns and not meta["data_seed"].isna().any():
        return [int(s) for s in meta["data_seed"]]
    if "dataset_id" not in meta.columns:
        return [0] * len(meta)
    try:
        if store.count("datasets") == 0:
            return [0] * len(meta)
        ds = store.sql("SELECT dataset_id, any_value(seed) AS seed FROM datasets GROUP BY dataset_id")
    except UserError:
        return [0] * len(meta)
    seeds = dict(zip(ds["dataset_id"], ds["seed"]))
    return [int(seeds.get(d, 0) or 0) for d in meta["dataset_id"]]
