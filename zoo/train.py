"""Train a zoo: spec -> model rows -> cohorts -> every checkpoint in the store, resumable and repairable.

    summary = zoo.train("digits-mlp", "wsl-store")                 # a built-in spec name or a path
    summary = zoo.train(spec, store, backend="ray", device="cuda")

What happens, in order:
1. the spec is parsed and expanded (`zoo.expand`); bad input (unknown keys,
   empty grids, a batch size larger than the data, lr <= 0, a device that is
   not there, a missing backend) is a UserError before anything is written;
2. the plan (zoo/train_plan.py): models complete in the store are skipped;
   models never trained are grouped into cohorts (`zoo.population.group_cohorts`);
   every other model (an interrupted run, or rows that `wsl store check
   --quarantine` set aside) continues with the cohort that wrote its last
   intact state, from that state, so what it writes again is bit-identical;
3. each cohort is claimed (store/claims.py: two trainers on overlapping specs
   never train one model at once; the second waits, then finds it finished)
   and trained by a backend (`local` in-process, or `ray` tasks);
4. as training goes, each checkpoint epoch appends the checkpoints the store
   lacks (weights, train/test loss and accuracy) and their optimizer states
   (with the cohort that trained them); a model's `models` row (every
   hyperparameter in its own column, status done | diverged) is written when
   it finishes.

Keys are deterministic (`{model_id}-e{epoch:04d}`), and a row already in the
store is never written again, so re-running a spec after an interruption (or a
quarantine) trains what is missing and duplicates nothing. Ctrl-C raises
TrainingInterrupted ("interrupted at epoch E of cohort C: run the same command
to resume"); what was stored stays, and the same command resumes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from store.errors import UserError
from zoo.optim import BUFFERS, state_layout
from zoo.population import Checkpoint, CohortTrainer, EpochReport, ResumeState, layout_for
from zoo.spec import ZooSpec, expand, load_spec
from zoo.train_plan import cohort_hash, plan

DEVICES = ("cpu", "cuda")


@dataclass
class TrainProgress:
    """What a progress callback sees, after every epoch of every cohort (per cohort with Ray)."""

    models_done: int  # finished (done or diverged), including models finished before this run
    models_total: int
    epoch: int  # of the cohort that reported
    epochs: int
    cohort: int  # 1-based index of that cohort
    cohorts: int
    work_done: int  # model-epochs trained in this run
    work_total: int  # model-epochs this run has to train
    samples_per_s: float  # training samples per second, summed over the models of the reporting cohort
    elapsed_s: float


@dataclass
class TrainSummary:
    """What `zoo.train` returns (and `wsl zoo train` prints)."""

    zoo: str
    store: str
    backend: str
    device: str
    models: int  # in the spec
    already_finished: int  # skipped: finished and complete before this run
    resumed: int  # unfinished models continued from a stored checkpoint
    trained: int  # finished now with status done (repaired models not counted)
    diverged: int  # finished now with status diverged
    cohorts: int
    checkpoints_written: int
    seconds: float
    final_test_acc_mean: float | None = None
    final_test_acc_max: float | None = None
    repaired: int = 0  # finished models whose missing checkpoints / optimizer states were written again
    waited_for_other_trainers: int = 0  # cohorts that waited for another process training some of their models

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says where it stopped; everything stored so far stays, the same command resumes."""




def check_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' that exists here; else UserError."""
    dev = str(device)
    kind, _, index = dev.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device {dev!r}", "use cpu or cuda (cuda:N for one GPU of several)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {dev!r} is not available: torch {torch.__version__} sees no CUDA GPU here",
                            "use --device cpu, or run on a machine with a GPU and a CUDA build of torch")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"device {dev!r} does not exist: {torch.cuda.device_count()} GPU(s) here",
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


def _open_store(store: Any):
    from store.store import ZooStore

    if isinstance(store, ZooStore):
        return store
    return ZooStore(Path(store), create=True)


def checkpoint_id(model_id: str, epoch: int) -> str:
    return f"{model_id}-e{int(epoch):04d}"


def _none_if_nan(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def run_cohort(store: Any, rows: Sequence[Mapping[str, Any]], start_epoch: int = -1, device: str = "cpu",
               on_epoch: Callable[[EpochReport], None] | None = None) -> dict[str, Any]:
    """Train one cohort into the store (the unit of work of every backend); returns counts and final accuracies.

    start_epoch: the stored epoch to resume from (-1: start fresh). Opens the
    store by path when given one, so a Ray worker calls it as it is.
    """
    store = _open_store(store)
    rows = [dict(r) for r in rows]
    ids = [r["model_id"] for r in rows]
    kind = rows[0]["optimizer"]
    layout = layout_for(json.loads(rows[0]["arch_config"]))
    opt_layout = state_layout(layout, kind)
    start = None
    if start_epoch >= 0:
        keys = [checkpoint_id(m, start_epoch) for m in ids]
        params, _ = store.weights(keys, table="checkpoints")
        opt_vec, ometa = store.weights(keys, table="optimizer_states")
        steps = {json.loads(s)["step"] for s in ometa["state_json"]}
        if len(steps) != 1:
            raise UserError(f"optimizer states at epoch {start_epoch} of one cohort disagree on the step count {sorted(steps)}",
                            "the store mixes runs of different specs under one zoo name; use a new zoo name")
        start = ResumeState(start_epoch, params.float(), opt_vec.float(), steps.pop())
    mine = {"ids": ids}
    existing_ck = set(store.sql("SELECT checkpoint_id FROM checkpoints WHERE model_id IN (SELECT unnest($ids))",
                                mine)["checkpoint_id"])
    existing_opt = set(store.sql("SELECT checkpoint_id FROM optimizer_states WHERE model_id IN (SELECT unnest($ids))",
                                 mine)["checkpoint_id"])
    by_id = {r["model_id"]: r for r in rows}
    written = {"checkpoints": 0}
    final_acc: dict[str, float] = {}

    def on_checkpoint(ck: Checkpoint) -> None:
        cids = [checkpoint_id(m, ck.epoch) for m in ck.model_ids]
        sel = [i for i, c in enumerate(cids) if c not in existing_ck]
        if sel:
            m = ck.metrics
            ck_rows = [{"checkpoint_id": cids[i], "model_id": ck.model_ids[i], "epoch": ck.epoch, "step": ck.step,
                        "train_loss": float(m["train_loss"][i]), "train_acc": _none_if_nan(m["train_acc"][i]),
                        "test_loss": float(m["test_loss"][i]), "test_acc": _none_if_nan(m["test_acc"][i])} for i in sel]
            written["checkpoints"] += store.append_weights("checkpoints", ck.params[sel], ck_rows, layout)
        sel = [i for i, c in enumerate(cids) if c not in existing_opt]
        if sel:
            # the cohort is part of the state: only the same models, in the same order, continue it bit for bit
            state = json.dumps({"optimizer": kind, "step": ck.step, "buffers": list(BUFFERS[kind]),
                                "cohort": cohort_hash(ck.model_ids), "cohort_models": len(ck.model_ids),
                                "rng": "derived from (seed, epoch): nothing to restore"}, sort_keys=True)
            opt_rows = [{"checkpoint_id": cids[i], "model_id": ck.model_ids[i], "epoch": ck.epoch,
                         "state_json": state} for i in sel]
            store.append_weights("optimizer_states", ck.opt_state[sel], opt_rows, opt_layout)
        for i, mid in enumerate(ck.model_ids):
            final_acc[mid] = float(ck.metrics["test_acc"][i])

    def on_diverged(model_ids: list[str], epoch: int) -> None:
        store.append("models", [{**by_id[m], "status": "diverged", "diverged_epoch": int(epoch)} for m in model_ids])
        for m in model_ids:
            final_acc.pop(m, None)

    trainer = CohortTrainer(rows, device=device, start=start)
    result = trainer.run(on_checkpoint=on_checkpoint, on_diverged=on_diverged, on_epoch=on_epoch)
    done = [m for m, s in result.status.items() if s == "done"]
    if done:
        store.append("models", [{**by_id[m], "status": "done"} for m in done])
    return {"done": len(done), "diverged": sum(s == "diverged" for s in result.status.values()),
            "resumed": len(ids) if start is not None else 0, "checkpoints": written["checkpoints"],
            "status": dict(result.status), "final_test_acc": {m: a for m, a in final_acc.items() if m in done}}


# Training appends one small part per cohort and checkpoint; reading weights back from many small
# parts ran at 0.4-0.8 GB/s against 2-3 GB/s after compaction (benchmarks/store_read.py).
COMPACT_AFTER_PARTS = 16


def compact_written(store) -> None:
    """Merge the small parts a training run leaves in the tables it writes (atomic, loses nothing)."""
    for table in ("checkpoints", "optimizer_states", "models"):
        if len(store.part_files(table)) > COMPACT_AFTER_PARTS:
            store.compact(table)


def train(spec: ZooSpec | str | Path | Mapping[str, Any], store: Any, backend: str = "local", device: str = "cpu",
          progress: Callable[[TrainProgress], None] | None = None, *, cohort_size: int | None = None) -> TrainSummary:
    """Train every model of `spec` that is not complete in `store`; see the module docstring."""
    from store.claims import Claims
    from zoo.backends import get_backend
    from zoo.datasets import load_dataset

    t0 = time.perf_counter()
    spec = load_spec(spec)
    device = check_device(device)
    run_backend = get_backend(backend)
    if cohort_size is not None and (not isinstance(cohort_size, int) or cohort_size < 1):
        raise UserError(f"cohort_size={cohort_size!r}", "give a positive integer")
    rows = expand(spec)  # every check that needs the data happens here, before the store is touched
    size = cohort_size or spec.cohort_size
    store = _open_store(store)
    tracker = _Tracker(progress, len(rows), t0)
    try:
        first = plan(store, rows, size)
        seen = set()
        ds_rows = []
        for r in rows:
            key = (r["dataset"], r["data_seed"])
            if key not in seen:
                seen.add(key)
                ds_rows.append(load_dataset(r["dataset"], r["data_seed"]).descriptor())
        store.append("datasets", ds_rows)
        tracker.start(first)
        results, ran, waited, last = [], [], 0, first
        attempted: set[tuple] = set()
        with Claims(store.path) as claims:
            todo = first.jobs
            while todo:
                # local: one cohort at a time, so its models are let go as soon as it is done; ray: all at once
                claimed = []
                for j in todo:
                    if claims.try_claim(j.model_ids):
                        claimed.append(j)
                        if backend == "local":
                            break
                if not claimed:
                    waited += 1  # another trainer holds every cohort left: wait for the first
                    claims.claim(todo[0].model_ids)
                # plan again under the claims: another trainer may have finished some of these models meanwhile
                mine = [j for j in plan(store, rows, size).jobs
                        if claims.holds(j.model_ids) and _job_key(j) not in attempted]
                attempted |= {_job_key(j) for j in mine}
                if mine:
                    results += run_backend(store, [j.as_dict() for j in mine], device, tracker.round(mine))
                    ran += mine
                claims.release()
                last = plan(store, rows, size)
                todo = [j for j in last.jobs if _job_key(j) not in attempted]
        compact_written(store)
        if last.partial or last.new:  # a cohort ran and its models are still not complete: never silent
            left = last.partial + last.new
            raise UserError(f"{len(left)} models of {spec.name!r} are still incomplete after training: {left[:5]}",
                            "run `wsl store check`; if the store mixes runs of different specs under this zoo name, "
                            "train the spec under a new name")
    except KeyboardInterrupt:
        raise TrainingInterrupted(tracker.interrupted_message()) from None
    complete = set(first.complete)
    finished_before = set(first.partial_finished)
    status: dict[str, str] = {}
    for res in results:
        status.update(res["status"])
    now = {m: st for m, st in status.items() if m not in complete and m not in finished_before}
    resumed = {m for j in ran if j.start_epoch >= 0 for m in j.model_ids if m in set(first.partial) - finished_before}
    accs = [a for res in results for m, a in res["final_test_acc"].items() if m in now and not math.isnan(a)]
    return TrainSummary(
        zoo=spec.name, store=str(store.path), backend=backend, device=device, models=len(rows),
        already_finished=len(complete), resumed=len(resumed), trained=sum(st == "done" for st in now.values()),
        diverged=sum(st == "diverged" for st in now.values()), cohorts=len(ran),
        checkpoints_written=sum(r["checkpoints"] for r in results), seconds=round(time.perf_counter() - t0, 2),
        final_test_acc_mean=float(np.mean(accs)) if accs else None,
        final_test_acc_max=float(np.max(accs)) if accs else None,
        repaired=len(finished_before & set(status)), waited_for_other_trainers=waited)


def _job_key(job) -> tuple:
    return job.start_epoch, tuple(job.model_ids)


class _Tracker:
    """Turns per-epoch / per-cohort reports into TrainProgress events, and knows where training stands."""

    def __init__(self, progress, total: int, t0: float):
        self.progress = progress
        self.total = total
        self.t0 = t0
        self.complete: set[str] = set()
        self.finished: set[str] = set()
        self.cohorts = 0
        self.models: list[int] = []
        self.work: list[int] = []
        self._cohort_work: list[int] = []
        self.work_total = 0
        self.work_done = 0
        self.running: dict[int, int] = {}  # cohort index -> epoch in training

    def start(self, first_plan) -> None:
        self.complete = set(first_plan.complete)
        self.cohorts = len(first_plan.jobs)
        self.work_total = sum(self._work(j) for j in first_plan.jobs)

    @staticmethod
    def _work(job) -> int:
        return len(job.rows) * (int(job.rows[0]["epochs"]) - max(job.start_epoch, 0))

    def round(self, jobs) -> "_Round":
        """The jobs of one backend call; their indices in the backend are 0.. len(jobs) - 1."""
        base = len(self.work)
        for j in jobs:
            self.models.append(len(j.rows))
            self.work.append(self._work(j))
            self._cohort_work.append(0)
        self.cohorts = max(self.cohorts, len(self.work))
        self.work_total = max(self.work_total, sum(self.work))
        return _Round(self, base, jobs)

    @property
    def models_done(self) -> int:
        return len(self.complete | self.finished)

    def _emit(self, cohort: int, epoch: int, epochs: int, rate: float) -> None:
        if self.progress is not None:
            self.progress(TrainProgress(self.models_done, self.total, epoch, epochs, cohort + 1, self.cohorts,
                                        self.work_done, self.work_total, rate, time.perf_counter() - self.t0))

    def interrupted_message(self) -> str:
        if len(self.running) == 1:
            (c, e), = self.running.items()
            where = f"interrupted at epoch {e} of cohort {c + 1}"
        elif self.running:
            where = f"interrupted while cohorts {', '.join(str(c + 1) for c in sorted(self.running))} were training"
        else:
            where = "interrupted before a cohort started training"
        done = sum(1 for i, w in enumerate(self.work) if i not in self.running and self._cohort_work[i] >= w)
        return (f"{where}: run the same command to resume ({done} of {self.cohorts} cohorts finished; "
                "every checkpoint stored so far stays)")


class _Round:
    """A backend's view of the tracker: cohort i of this round is cohort base + i of the run."""

    def __init__(self, tracker: _Tracker, base: int, jobs):
        self.t, self.base, self.jobs = tracker, base, jobs

    def cohort_started(self, i: int) -> None:
        self.t.running[self.base + i] = max(self.jobs[i].start_epoch, 0) + 1

    def epoch_done(self, i: int, report: EpochReport) -> None:
        """A cohort finished an epoch (local backend: live)."""
        t, c = self.t, self.base + i
        # count every model that started the cohort, diverged ones included, so the total adds up
        step = max(min(t.models[c], t.work[c] - t._cohort_work[c]), 0)
        t._cohort_work[c] += step
        t.work_done += step
        t.running[c] = report.epoch + 1
        t._emit(c, report.epoch, report.epochs, report.samples / max(report.seconds, 1e-9))

    def cohort_done(self, i: int, result: Mapping[str, Any], epochs: int, seconds: float, samples: int) -> None:
        t, c = self.t, self.base + i
        rest = t.work[c] - t._cohort_work[c]
        t._cohort_work[c] += rest
        t.work_done += rest
        t.running.pop(c, None)
        t.finished |= set(result.get("status", {}))
        t._emit(c, epochs, epochs, samples / max(seconds, 1e-9))
