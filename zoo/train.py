"""Train a zoo: spec -> model rows -> cohorts -> every checkpoint in the store, resumable.

    summary = zoo.train("digits-mlp", "wsl-store")                 # a built-in spec name or a path
    summary = zoo.train(spec, store, backend="ray", device="cuda")

What happens, in order:
1. the spec is parsed and expanded (`zoo.expand`); bad input (unknown keys,
   empty grids, a batch size larger than the data, lr <= 0, a device that is
   not there, a missing backend) is a UserError before anything is written;
2. models already finished in the store (a `models` row, done or diverged)
   are skipped; every other model continues from its last checkpoint that
   has its optimizer state (weights, buffers and step count), or starts fresh;
3. the models are grouped into cohorts (`zoo.population.group_cohorts`) and
   each cohort is trained by a backend (`local` in-process, or `ray` tasks);
4. as training goes, each checkpoint epoch appends one part of `checkpoints`
   (weights, train/test loss and accuracy) and one of `optimizer_states`;
   a model's `models` row (every hyperparameter in its own column, status
   done | diverged) is written when it finishes.

Keys are deterministic (`{model_id}-e{epoch:04d}`), and a checkpoint already in
the store is never written again, so re-running a spec after an interruption
trains each epoch once and duplicates nothing.
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
from zoo.population import Checkpoint, CohortTrainer, EpochReport, ResumeState, group_cohorts, layout_for
from zoo.spec import ZooSpec, expand, load_spec

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
    already_finished: int  # skipped: finished before this run
    resumed: int  # continued from a stored checkpoint
    trained: int  # finished now with status done
    diverged: int  # finished now with status diverged
    cohorts: int
    checkpoints_written: int
    seconds: float
    final_test_acc_mean: float | None = None
    final_test_acc_max: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _in_list(ids: Sequence[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


def plan(store, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, int]]:
    """(finished model_id -> status, resumable model_id -> last epoch with weights and optimizer state)."""
    ids = [r["model_id"] for r in rows]
    if not ids:
        return {}, {}
    finished = store.sql(f"SELECT model_id, status FROM models WHERE model_id IN ({_in_list(ids)})")
    done = dict(zip(finished["model_id"], finished["status"]))
    pending = [i for i in ids if i not in done]
    if not pending:
        return done, {}
    last = store.sql(
        "SELECT c.model_id, max(c.epoch) AS epoch FROM checkpoints c JOIN optimizer_states o "
        f"ON c.checkpoint_id = o.checkpoint_id WHERE c.model_id IN ({_in_list(pending)}) GROUP BY c.model_id")
    return done, {m: int(e) for m, e in zip(last["model_id"], last["epoch"])}


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
    existing_ck = set(store.sql(f"SELECT checkpoint_id FROM checkpoints WHERE model_id IN ({_in_list(ids)})")["checkpoint_id"])
    existing_opt = set(store.sql(f"SELECT checkpoint_id FROM optimizer_states WHERE model_id IN ({_in_list(ids)})")["checkpoint_id"])
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
            state = json.dumps({"optimizer": kind, "step": ck.step, "buffers": list(BUFFERS[kind]),
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
            "final_test_acc": {m: a for m, a in final_acc.items() if m in done}}


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
    """Train every model of `spec` that is not finished in `store`; see the module docstring."""
    from zoo.backends import get_backend
    from zoo.datasets import load_dataset

    t0 = time.perf_counter()
    spec = load_spec(spec)
    device = check_device(device)
    run_backend = get_backend(backend)
    if cohort_size is not None and (not isinstance(cohort_size, int) or cohort_size < 1):
        raise UserError(f"cohort_size={cohort_size!r}", "give a positive integer")
    rows = expand(spec)  # every check that needs the data happens here, before the store is touched
    store = _open_store(store)
    finished, resume = plan(store, rows)
    pending = [r for r in rows if r["model_id"] not in finished]
    seen = set()
    ds_rows = []
    for r in rows:
        key = (r["dataset"], r["data_seed"])
        if key not in seen:
            seen.add(key)
            ds_rows.append(load_dataset(r["dataset"], r["data_seed"]).descriptor())
    store.append("datasets", ds_rows)
    cohorts = group_cohorts(pending, {m: e for m, e in resume.items()}, cohort_size or spec.cohort_size)
    jobs = [{"rows": c, "start_epoch": resume.get(c[0]["model_id"], -1)} for c in cohorts]
    tracker = _Tracker(progress, len(rows), len(finished), jobs, t0)
    results = run_backend(store, jobs, device, tracker)
    compact_written(store)
    accs = [a for res in results for a in res["final_test_acc"].values() if not math.isnan(a)]
    return TrainSummary(
        zoo=spec.name, store=str(store.path), backend=backend, device=device, models=len(rows),
        already_finished=len(finished), resumed=sum(r["resumed"] for r in results),
        trained=sum(r["done"] for r in results), diverged=sum(r["diverged"] for r in results), cohorts=len(jobs),
        checkpoints_written=sum(r["checkpoints"] for r in results), seconds=round(time.perf_counter() - t0, 2),
        final_test_acc_mean=float(np.mean(accs)) if accs else None,
        final_test_acc_max=float(np.max(accs)) if accs else None)


class _Tracker:
    """Turns per-epoch / per-cohort reports into TrainProgress events."""

    def __init__(self, progress, total: int, finished: int, jobs: list[dict], t0: float):
        self.progress = progress
        self.total = total
        self.done = finished
        self.t0 = t0
        self.cohorts = len(jobs)
        self.models = [len(j["rows"]) for j in jobs]
        self.work = [len(j["rows"]) * (int(j["rows"][0]["epochs"]) - max(j["start_epoch"], 0)) for j in jobs]
        self.work_total = sum(self.work)
        self.work_done = 0
        self._cohort_work = [0] * len(jobs)

    def _emit(self, cohort: int, epoch: int, epochs: int, rate: float) -> None:
        if self.progress is not None:
            self.progress(TrainProgress(self.done, self.total, epoch, epochs, cohort + 1, self.cohorts, self.work_done,
                                        self.work_total, rate, time.perf_counter() - self.t0))

    def epoch_done(self, cohort: int, report: EpochReport) -> None:
        """A cohort finished an epoch (local backend: live)."""
        # count every model that started the cohort, diverged ones included, so the total adds up
        step = max(min(self.models[cohort], self.work[cohort] - self._cohort_work[cohort]), 0)
        self._cohort_work[cohort] += step
        self.work_done += step
        self._emit(cohort, report.epoch, report.epochs, report.samples / max(report.seconds, 1e-9))

    def cohort_done(self, cohort: int, result: Mapping[str, Any], epochs: int, seconds: float, samples: int) -> None:
        rest = self.work[cohort] - self._cohort_work[cohort]
        self._cohort_work[cohort] += rest
        self.work_done += rest
        self.done += int(result["done"]) + int(result["diverged"])
        self._emit(cohort, epochs, epochs, samples / max(seconds, 1e-9))
