"""What a training run still has to do, and where each cohort continues: resume and repair as one plan.

Why the cohort matters: a cohort trains as one batched computation, and batched
kernels make a model's evaluated metrics (every architecture) and even its
weights (CNNs) depend, in the last bits, on which models share its batch. So a
stored state is continued bit for bit only by the cohort that wrote it: the
same models, in the same order. Every optimizer state therefore records its
cohort (`cohort`: a hash of the ordered model_ids training together at that
checkpoint, in `optimizer_states.state_json`), and the plan rebuilds a cohort
from those records and checks it against the hash.

Per model of the spec (metadata only: its `models` row, which checkpoint and
optimizer-state epochs exist):
- complete: it has its `models` row (done, or diverged at epoch d) and both
  rows at every epoch it should have (every checkpoint epoch and the last one;
  for a diverged model those before d). Nothing to do.
- new: no row anywhere. Trained from scratch, in cohorts of new models.
- partial: anything else (an interrupted run, or rows that `wsl store check
  --quarantine` set aside). Its gap is the first epoch it lacks; it continues
  from the latest epoch before the gap whose recorded cohort can be rebuilt
  (every member's state at that epoch present, hash matching), with exactly
  that cohort; from scratch with the cohort recorded at epoch 0 otherwise.

Training then appends only rows that are missing, so re-running a spec after a
quarantine rewrites exactly the lost checkpoints, bit-identical to the lost
ones. Stores written before cohorts were recorded, or a cohort that cannot be
rebuilt, fall back to the grouping of a fresh run (zoo.population.group_cohorts
over the spec's trained models), which is the original cohort whenever the
spec and --cohort-size are the same as when it was first trained.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from zoo.population import group_cohorts


def cohort_hash(model_ids: Sequence[str]) -> str:
    """The record of a cohort: 16 hex digits of the sha256 of its ordered model_ids."""
    return hashlib.sha256("\x1f".join(model_ids).encode()).hexdigest()[:16]


@dataclass
class ModelState:
    status: str | None = None  # done | diverged | None (no models row)
    diverged_epoch: int | None = None
    checkpoints: set[int] = field(default_factory=set)
    optimizer: dict[int, str | None] = field(default_factory=dict)  # epoch -> cohort hash (None: not recorded)


@dataclass
class Job:
    """One cohort to train: rows in cohort order, the stored epoch to continue from (-1: from scratch)."""

    rows: list[dict]
    start_epoch: int = -1
    exact: bool = True  # the cohort was rebuilt from its record (False: the fresh-run grouping, best effort)

    @property
    def model_ids(self) -> list[str]:
        return [r["model_id"] for r in self.rows]

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "start_epoch": self.start_epoch}


@dataclass
class Plan:
    jobs: list[Job]
    complete: list[str]  # finished and complete before this run
    partial: list[str]  # to resume or repair
    new: list[str]  # never trained
    partial_finished: list[str] = field(default_factory=list)  # partial models that have their `models` row


def store_states(store, ids: Sequence[str]) -> dict[str, ModelState]:
    """Each model's row status and stored epochs (metadata queries with bound parameters; no weights read)."""
    out = {m: ModelState() for m in ids}
    if not ids:
        return out
    p = {"ids": list(ids)}
    sel = "WHERE model_id IN (SELECT unnest($ids))"
    models = store.sql(f"SELECT * FROM models {sel}", p)
    for r in models.itertuples(index=False):
        st = out[r.model_id]
        st.status = r.status
        d = getattr(r, "diverged_epoch", None)
        st.diverged_epoch = int(d) if d is not None and d == d else None
    ck = store.sql(f"SELECT model_id, epoch FROM checkpoints {sel}", p)
    for m, e in zip(ck["model_id"], ck["epoch"]):
        out[m].checkpoints.add(int(e))
    opt = store.sql(f"SELECT model_id, epoch, state_json FROM optimizer_states {sel}", p)
    parsed: dict[str, str | None] = {}
    for m, e, s in zip(opt["model_id"], opt["epoch"], opt["state_json"]):
        if s not in parsed:  # one distinct string per cohort and epoch
            try:
                parsed[s] = json.loads(s).get("cohort")
            except (TypeError, ValueError, AttributeError):
                parsed[s] = None
        out[m].optimizer[int(e)] = parsed[s]
    return out


def checkpoint_epochs(row: Mapping[str, Any]) -> list[int]:
    """Epochs a model that finishes gets a checkpoint at: its checkpoint epochs and the last one."""
    return sorted(set(json.loads(row["checkpoint_epochs"])) | {int(row["epochs"])})


def expected_epochs(row: Mapping[str, Any], st: ModelState) -> list[int]:
    ck = checkpoint_epochs(row)
    if st.status == "diverged" and st.diverged_epoch is not None:
        return [e for e in ck if e < st.diverged_epoch]
    return ck


def _has(st: ModelState, e: int) -> bool:
    return e in st.checkpoints and e in st.optimizer


def plan(store, rows: Sequence[Mapping[str, Any]], cohort_size: int) -> Plan:
    """Jobs that bring every model of `rows` (a spec's expansion, in spec order) to complete."""
    ids = [r["model_id"] for r in rows]
    states = store_states(store, ids)
    complete, partial, new = [], [], []
    gaps: dict[str, int | None] = {}
    for r in rows:
        m, st = r["model_id"], states[r["model_id"]]
        missing = [e for e in expected_epochs(r, st) if not _has(st, e)]
        if st.status is not None and not missing:
            complete.append(m)
        elif st.status is None and not st.checkpoints and not st.optimizer:
            new.append(m)
        else:
            partial.append(m)
            gaps[m] = missing[0] if missing else None  # None: every row there, only the models row is missing
    order = {m: i for i, m in enumerate(ids)}
    by_id = {r["model_id"]: dict(r) for r in rows}
    trained = [by_id[m] for m in ids if m not in set(new)]
    jobs: dict[tuple, Job] = {}
    for m in partial:
        job = _resume_job(m, gaps[m], by_id, states, order, trained, cohort_size)
        key = (job.start_epoch, tuple(job.model_ids))
        jobs.setdefault(key, job)
    out = sorted(jobs.values(), key=lambda j: (order[j.model_ids[0]], j.start_epoch))
    out += [Job(c, -1) for c in group_cohorts([by_id[m] for m in new], None, cohort_size)]
    return Plan(out, complete, partial, new, [m for m in partial if states[m].status is not None])


def _resume_job(m: str, gap: int | None, by_id, states, order, trained, cohort_size) -> Job:
    st = states[m]
    row = by_id[m]
    present = [e for e in checkpoint_epochs(row) if _has(st, e) and (gap is None or e < gap)]
    group = next(c for c in group_cohorts(trained, None, cohort_size) if any(r["model_id"] == m for r in c))
    group_ids = [r["model_id"] for r in group]
    for e in reversed(present):  # the latest epoch whose recorded cohort can be rebuilt
        h = st.optimizer.get(e)
        if h is None:  # written before cohorts were recorded: continue with the fresh-run group's models there
            return Job([by_id[x] for x in group_ids if _has(states[x], e)], e, exact=False)
        members = sorted((x for x, s in states.items() if s.optimizer.get(e) == h and _has(s, e)), key=order.get)
        if cohort_hash(members) == h:
            return Job([by_id[x] for x in members], e)
    # from scratch: the cohort recorded at epoch 0 by a model of this model's fresh-run group
    lost = [x for x in group_ids if 0 not in states[x].optimizer]  # their epoch-0 record was set aside
    for h in dict.fromkeys(states[x].optimizer.get(0) for x in group_ids):
        if h is None:
            continue
        with_h = [x for x, s in states.items() if s.optimizer.get(0) == h]
        for members in (with_h, with_h + lost):
            members = sorted(set(members), key=order.get)
            if m in members and cohort_hash(members) == h:
                return Job([by_id[x] for x in members], -1)
    return Job(group, -1, exact=False)
