"""Where cohorts run: `local` (this process, one cohort after another) or `ray` (one task per cohort).

Both call the same unit of work, `zoo.train.run_cohort(store_path, rows,
start_epoch, device)`, which trains one cohort and appends its parts to the
store itself. Parts are atomic and the store takes appends from several
processes, so Ray tasks on any number of machines write into one store (a
path every worker can reach: a local directory for a one-machine cluster, a
shared file system otherwise).

Ray: `ray.init()` attaches to the cluster named by RAY_ADDRESS when it is set
(e.g. `ray://head:10001` or `auto`), else starts a local instance that is shut
down afterwards. If the caller already called `ray.init(...)`, that session is
used as it is. Each task asks for 1 CPU (and 1 GPU with --device cuda).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from store.errors import UserError

BACKENDS = ("local", "ray")


def get_backend(name: str) -> Callable:
    """The runner for a backend name; UserError for unknown names or a missing `ray` extra."""
    if name == "local":
        return run_local
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("backend 'ray' needs Ray, which is not installed",
                            "pip install 'wsl-zoo[ray]', or use --backend local") from None
        return run_ray
    raise UserError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")


def _timed_cohort(store_path: str, rows: list[dict], start_epoch: int, device: str,
                  on_epoch: Callable | None = None) -> dict[str, Any]:
    from zoo.train import run_cohort

    samples = [0]

    def count(report):
        samples[0] += report.samples
        if on_epoch is not None:
            on_epoch(report)

    t0 = time.perf_counter()
    res = run_cohort(store_path, rows, start_epoch, device, on_epoch=count)
    res["seconds"] = time.perf_counter() - t0
    res["samples"] = samples[0]
    return res


def run_local(store, jobs: list[dict], device: str, tracker) -> list[dict[str, Any]]:
    results = []
    for i, job in enumerate(jobs):
        tracker.cohort_started(i)
        res = _timed_cohort(store, job["rows"], job["start_epoch"], device,
                            on_epoch=lambda rep, i=i: tracker.epoch_done(i, rep))
        tracker.cohort_done(i, res, int(job["rows"][0]["epochs"]), res["seconds"], res["samples"])
        results.append(res)
    return results


def run_ray(store, jobs: list[dict], device: str, tracker) -> list[dict[str, Any]]:
    import ray

    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
        started = True
    try:
        gpus = 1 if str(device).startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_timed_cohort)
        path = str(store.path)
        refs = {task.remote(path, job["rows"], job["start_epoch"], device): i for i, job in enumerate(jobs)}
        for i in range(len(jobs)):
            tracker.cohort_started(i)
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                i = refs[ref]
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    for other in waiting:
                        ray.cancel(other)
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, UserError):
                        raise cause from None
                    raise
                results[i] = res
                tracker.cohort_done(i, res, int(jobs[i]["rows"][0]["epochs"]), res["seconds"], res["samples"])
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()
