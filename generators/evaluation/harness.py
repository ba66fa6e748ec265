"""One benchmark harness for every generator method: fit under a protocol, measure everything, one JSON line.

    from generators.evaluation.harness import HarnessOptions, run
    line = run(HarnessOptions(method="diffusion", protocol="digits-pairs", store="/work/stores/digits-pairs"))
    line["heldout_gap_closed_raw"], line["novelty"]["fresh"], line["seen_iou_max_minus_fresh"]

benchmarks/generate.py is its command line (`--method NAME|all --protocol P --store S --set k=v`).

What one run does, in order (nothing is written into the store; everything goes to `out`):
1. resolve the protocol against the store (generators/protocols.py; bad input is a UserError);
2. fit the method on the seen tasks' last checkpoints (or from the seen tasks alone, for a
   method with needs_weights = False), saved in out/generator and reused by a rerun with the
   same options and store content (fit_cache.py);
3. the report (report.py) on every held-out task and on a sample of `seen_tasks` seen tasks
   (drawn by the protocol rule, default_rng(seed) over the sorted seen tasks): generated with
   --select k, the raw samples, the zoo, majority, retrieval-select, retrieval-nearest and
   shuffled-condition; on the first `novelty_tasks` of that sample also the Zeng et al.
   baselines and `fresh` models (fresh.py: the zoo's recipe, new seeds), the novelty reference;
4. the time to sample and evaluate 256 models for the first held-out task (warm, best of 3);
5. the method's own figures: `benchmark_figures(context) -> dict` on the generator class,
   when it defines it, is merged into the line (context: a BenchmarkContext).

The line's keys (a contract the generator issues rely on; docs/generators.md, "Benchmark
harness"): method, protocol, seen_generated_acc (raw samples), seen_select_acc, seen_zoo_acc,
seen_zoo_std (the std of the accuracies of the zoo's models of the seen sample, pooled over
tasks; seen_zoo_seed_std: the RMS of each task's seed-to-seed std), heldout_zoo_acc, heldout_raw_acc, heldout_ratio_raw, heldout_gap_closed_raw,
heldout_select4_acc (the generated models at --select k, k = `select`), heldout_gap_closed_select4,
heldout_retrieval_select_acc, heldout_retrieval_nearest_acc, heldout_shuffled_condition_acc,
heldout_retrieval_select_head_acc / heldout_retrieval_nearest_head_acc (the lookups given the method's
sampling-time head fit; null for a method without one), heldout_random_init_head_acc (freshly
initialised networks given that head fit), heldout_majority_acc, sample_eval_256_s, fit_s, novelty {generated, fresh, noise-0.06, noise-0.12:
acc, iou_max, iou_gen_gen, nn_l2_stored, nn_l2_aligned}, the four generic novelty differences
(seen_iou_max_minus_fresh, seen_aligned_nn_l2_over_fresh, seen_acc_minus_fresh,
seen_gen_gen_iou_minus_fresh_fresh), targets {name: bool}, and the run's settings and load.
Means are over tasks (each task's mean over its models); gap closed is on those means.
Deterministic: the same options and seed give the same numbers (timings and load aside).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from generators.evaluation import task_baselines as tb
from store.errors import UserError

NOVELTY_KINDS = ("generated-raw", "fresh", "noise-0.06", "noise-0.12")
DEFAULT_ROOT = Path("/tmp/wsl-harness")


@dataclass
class HarnessOptions:
    method: str
    protocol: str
    store: str | os.PathLike
    options: dict[str, Any] = field(default_factory=dict)  # the method's config (--set k=v)
    n: int = 100  # generated models per task (and per baseline)
    select: int = 4  # the selected figure: best n of select*n by training-split loss
    seed: int = 0
    seen_tasks: int = 20  # seen tasks evaluated (all when fewer)
    novelty_tasks: int = 6  # of those, how many get fresh models and the noise baselines
    metric: str | None = "test_acc"  # fit condition (G.pt style) and target 1.0 at sampling; None: none
    out: str | os.PathLike | None = None  # default: DEFAULT_ROOT/<method>-<protocol>-<store name>
    fresh_root: str | os.PathLike | None = None  # where fresh models are trained (default: beside `out`, shared)
    timing: bool = True


@dataclass
class BenchmarkContext:
    """What a generator's `benchmark_figures(context)` receives."""

    store: Any  # the zoo's ZooStore (read it, never write it)
    resolution: Any  # protocols.Resolution: .seen, .held_out, .protocol
    generator: Any
    seen_sample: tuple[str, ...]  # the seen tasks the harness evaluated
    n: int
    seed: int
    options: HarnessOptions
    evaluate: Callable[[torch.Tensor, str], Any]  # (weights [N, P], task) -> wsl EvalResult on its test split
    zoo: Callable[[str], torch.Tensor]  # task -> the zoo's last checkpoints of that task [m, P]

    @property
    def split(self):
        """The protocol's split (training_set.Split: .seen, .held_out), as the fit took it."""
        return self.resolution.split()


def load1() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return math.nan


def _mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def sample_tasks(tasks, k: int, seed: int) -> tuple[str, ...]:
    """k of the tasks (all when fewer): default_rng(seed) over the sorted names, as the protocol rule draws."""
    tasks = sorted(tasks)
    if k >= len(tasks):
        return tuple(tasks)
    idx = np.random.default_rng(seed).choice(len(tasks), size=k, replace=False)
    return tuple(sorted(tasks[int(i)] for i in idx))


def check_options(o: HarnessOptions) -> None:
    """Every bad option a UserError before any work (exit 2 on the command line)."""
    for name in ("n", "select", "seen_tasks"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"--{name.replace('_', '-')} {v!r}", f"give {name.replace('_', '-')} >= 1")
    if isinstance(o.novelty_tasks, bool) or not isinstance(o.novelty_tasks, int) or o.novelty_tasks < 0:
        raise UserError(f"--novelty-tasks {o.novelty_tasks!r}", "give 0 (no fresh models) or more")
    if not (Path(o.store) / "zoo.json").is_file():
        raise UserError(f"--store {o.store} is not a store", "give the store of a trained zoo (wsl zoo train SPEC)")


def _group_means(reports, kind: str, key: str = "mean") -> float:
    return _mean(c.accuracy[kind][key] for c in reports if c.accuracy.get(kind, {}).get("n"))


def _novelty(conds, kind: str) -> dict[str, float]:
    have = [c for c in conds if c.accuracy.get(kind, {}).get("n")]
    nv = [c.novelty.get(kind, {}) for c in have]
    return {"tasks": len(have), "acc": _group_means(have, kind),
            "iou_max": _mean(d.get("iou_max_orig_gen") for d in nv),
            "iou_gen_gen": _mean(d.get("iou_gen_gen") for d in nv),
            "nn_l2_stored": _mean(d.get("nn_l2_stored_mean") for d in nv),
            "nn_l2_aligned": _mean(d.get("nn_l2_aligned_mean") for d in nv)}


def zoo_spread(conds) -> tuple[float, float]:
    """(std of the accuracies of every zoo model of these tasks, RMS over tasks of each task's seed-to-seed std).

    The first is "one zoo standard deviation" of the seen target: the spread of the zoo's
    accuracies over its models (pooled over tasks: within-task variance + variance of the task
    means). The second, the spread between seeds of one task alone, is reported beside it.
    """
    z = [c.accuracy["zoo"] for c in conds if c.accuracy.get("zoo", {}).get("n")]
    if not z:
        return math.nan, math.nan
    within = _mean(a["std"] ** 2 * (a["n"] - 1) / a["n"] for a in z)
    mu = _mean(a["mean"] for a in z)
    between = _mean((a["mean"] - mu) ** 2 for a in z)
    return math.sqrt(within + between), math.sqrt(_mean(a["std"] ** 2 for a in z))


def _timing(gen, task: str, target, select: int, repeats: int = 3) -> float:
    from wsl.evaluate import evaluate
    from zoo.datasets import load_dataset

    ds = load_dataset(task)
    w, layout = gen.sample(8, task, seed=99, target=target)  # warm: imports, caches
    evaluate(w, layout, ds)
    best = math.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        w, layout = gen.sample(256, task, seed=r, target=target, select=select)
        evaluate(w, layout, ds)
        best = min(best, time.perf_counter() - t0)
    return best


def run(o: HarnessOptions, say: Callable[[str], None] = lambda s: None, progress=None) -> dict[str, Any]:
    """One method under one protocol: the JSON-able line of the module docstring."""
    from generators.evaluation.fit_cache import fit_or_reuse
    from generators.evaluation.fresh import train_fresh
    from generators.evaluation.references import zoo_checkpoints
    from generators.evaluation.report import evaluate_generator, report_context
    from generators.protocols import check_held_out_unseen, parse_protocol, resolve
    from generators.registry import get_method
    from store.store import ZooStore
    from wsl.evaluate import evaluate
    from zoo.datasets import load_dataset

    check_options(o)
    klass = get_method(o.method)
    config = dict(o.options)
    if "seed" in {f.name for f in dataclasses.fields(klass.Config)}:
        config.setdefault("seed", o.seed)
    klass(**config)  # bad options before any work
    protocol = parse_protocol(o.protocol)
    store = ZooStore(o.store, create=False)
    resolution = resolve(protocol, store)
    load_start, t_start = load1(), time.perf_counter()
    out = Path(o.out) if o.out else DEFAULT_ROOT / f"{o.method}-{protocol.name}-{Path(o.store).name}"
    say(f"{o.method} on {protocol.name}: {len(resolution.seen)} seen / {len(resolution.held_out)} held-out tasks in "
        f"{store.path}; 1-min load {load_start}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    gen, reused = fit_or_reuse(o.method, store, out / "generator", protocol=resolution.split(), metric=o.metric,
                               progress=progress, config=config)
    fit_s = (gen.training or {}).get("fit_seconds") if reused else time.perf_counter() - t0
    held = list(resolution.held_out)
    check_held_out_unseen(held, gen.fit_info, f"generator {gen.generator_id}")
    say(f"fit {gen.generator_id} ({'reused from ' + str(out / 'generator') if reused else 'fit now'}): "
        f"{fit_s:.1f}s")

    target = {o.metric: 1.0} if o.metric and o.metric in (gen.fit_info.get("metrics") or []) else None
    seen_sample = sample_tasks(resolution.seen, o.seen_tasks, o.seed)
    novelty_tasks = seen_sample[:o.novelty_tasks]
    fresh_store, fresh_seeds = None, []
    if novelty_tasks:
        t0 = time.perf_counter()
        fresh_store, fresh_seeds = train_fresh(store, novelty_tasks, o.fresh_root or out.parent / "fresh-models")
        say(f"fresh models: seeds {fresh_seeds} on {len(novelty_tasks)} seen tasks ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    ctx = report_context(store, gen)
    common = dict(store=store, n=o.n, seed=o.seed, target=target, finetune_n=0, select=o.select, context=ctx)
    rep_held = evaluate_generator(gen, held, with_baselines=False, held_out=held, **common)
    say(f"held-out report: {len(held)} tasks ({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    ctx_fresh = dataclasses.replace(ctx, fresh_store=fresh_store)
    rep_nov = evaluate_generator(gen, list(novelty_tasks), with_baselines=True,
                                 **{**common, "context": ctx_fresh}) if novelty_tasks else None
    rest = [t for t in seen_sample if t not in novelty_tasks]
    rep_rest = evaluate_generator(gen, rest, with_baselines=False, **common) if rest else None
    seen_conds = (rep_nov.conditions if rep_nov else []) + (rep_rest.conditions if rep_rest else [])
    say(f"seen report: {len(seen_conds)} tasks ({time.perf_counter() - t0:.1f}s)")
    report_s = time.perf_counter() - t_start

    raw_kind = "generated-raw" if o.select > 1 else "generated"
    hc = rep_held.conditions
    line: dict[str, Any] = {"method": o.method, "protocol": protocol.name, "protocol_spec": protocol.to_inline()}
    zoo_h, maj_h = _group_means(hc, "zoo"), _group_means(hc, "majority")
    raw_h, sel_h = _group_means(hc, raw_kind), _group_means(hc, "generated")
    zoo_s = _group_means(seen_conds, "zoo")
    seen_std, seed_std = zoo_spread(seen_conds)
    line.update({
        "seen_generated_acc": _group_means(seen_conds, raw_kind), "seen_select_acc": _group_means(seen_conds, "generated"),
        "seen_zoo_acc": zoo_s, "seen_zoo_std": seen_std, "seen_zoo_seed_std": seed_std,
        "seen_majority_acc": _group_means(seen_conds, "majority"),
        "seen_retrieval_select_acc": _group_means(seen_conds, "retrieval-select"),
        "heldout_zoo_acc": zoo_h, "heldout_raw_acc": raw_h,
        "heldout_ratio_raw": raw_h / zoo_h if zoo_h else math.nan,
        "heldout_gap_closed_raw": tb.gap_closed(raw_h, maj_h, zoo_h),
        "heldout_select4_acc": sel_h, "heldout_gap_closed_select4": tb.gap_closed(sel_h, maj_h, zoo_h),
        "heldout_retrieval_select_acc": _group_means(hc, "retrieval-select"),
        "heldout_retrieval_nearest_acc": _group_means(hc, "retrieval-nearest"),
        "heldout_shuffled_condition_acc": _group_means(hc, "shuffled-condition"),
        # the lookups given the generator's own sampling-time head fit (NaN -> null without one; task_baselines.py)
        "heldout_retrieval_select_head_acc": _group_means(hc, "retrieval-select+head"),
        "heldout_retrieval_nearest_head_acc": _group_means(hc, "retrieval-nearest+head"),
        "heldout_random_init_head_acc": _group_means(hc, "random-init+head"),
        "heldout_majority_acc": maj_h,
        "heldout_min_task_raw_acc": min((c.accuracy[raw_kind]["mean"] for c in hc), default=math.nan),
    })
    for k in ("retrieval-select", "retrieval-nearest", "shuffled-condition") + tb.HEAD_KINDS:
        line[f"heldout_gap_closed_{k.replace('-', '_').replace('+', '_')}"] = tb.gap_closed(_group_means(hc, k), maj_h, zoo_h)
    nov_conds = rep_nov.conditions if rep_nov else []
    novelty = {"tasks": list(novelty_tasks), "fresh_seeds": fresh_seeds,
               "generated": _novelty(nov_conds, raw_kind),
               **{k: _novelty(nov_conds, k) for k in NOVELTY_KINDS if k != "generated-raw"}}
    g, f = novelty["generated"], novelty["fresh"]
    line["novelty"] = novelty
    line.update({"seen_iou_max_minus_fresh": g["iou_max"] - f["iou_max"],
                 "seen_aligned_nn_l2_over_fresh": g["nn_l2_aligned"] / f["nn_l2_aligned"] if f["nn_l2_aligned"] else math.nan,
                 "seen_acc_minus_fresh": g["acc"] - f["acc"],
                 "seen_gen_gen_iou_minus_fresh_fresh": g["iou_gen_gen"] - f["iou_gen_gen"]})
    line["sample_eval_256_s"] = _timing(gen, held[0], target, 1) if o.timing else math.nan
    line["sample_eval_256_select4_s"] = _timing(gen, held[0], target, o.select, repeats=1) if o.timing else math.nan
    line["fit_s"] = float(fit_s) if fit_s is not None else math.nan
    line["fit_reused"] = bool(reused)

    fig = getattr(gen, "benchmark_figures", None)
    if callable(fig):
        bctx = BenchmarkContext(store, resolution, gen, seen_sample, o.n, o.seed, o,
                                lambda w, task: evaluate(w, gen.layout, load_dataset(task), return_predictions=True),
                                lambda task: zoo_checkpoints(store, task, gen.layout.layout_id)[0])
        extra = dict(fig(bctx) or {})
        clash = sorted(set(extra) & set(line))
        if clash:
            raise UserError(f"{o.method}.benchmark_figures returns keys the harness owns: {clash}",
                            "give the method's figures their own names")
        line.update(extra)

    line["targets"] = targets(line)
    rep_held.save(out / "report-heldout")
    if rep_nov or rep_rest:
        from generators.evaluation.report import Report

        base = rep_nov or rep_rest
        Report(base.generator_id, base.method, base.layout_id, o.n, o.seed, base.target, seen_conds,
               {}, o.select, base.training_set).save(out / "report-seen")
    line.update({"generator_id": gen.generator_id, "n": o.n, "select": o.select, "seed": o.seed,
                 "seen_tasks_evaluated": len(seen_conds), "heldout_tasks": len(hc),
                 "options": config, "report_s": round(report_s, 1), "total_s": round(time.perf_counter() - t_start, 1),
                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "load_1min": [load_start, load1()], "out": str(out)})
    return line


def json_safe(obj: Any) -> Any:
    """The line with NaN / inf as None (JSON has no NaN), tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return json_safe(obj.item())
    return obj


def targets(line: Mapping[str, Any]) -> dict[str, bool]:
    """Issue 13's "Done when" targets, evaluated on a line (False where a figure is missing)."""
    def ok(expr: Callable[[], bool]) -> bool:
        try:
            return bool(expr())
        except (TypeError, ZeroDivisionError, KeyError):
            return False

    return {
        "heldout_raw_ge_95pct_zoo": ok(lambda: line["heldout_raw_acc"] >= 0.95 * line["heldout_zoo_acc"]),
        "heldout_gap_closed_raw_ge_0.85": ok(lambda: line["heldout_gap_closed_raw"] >= 0.85),
        "select4_beats_retrieval_select": ok(lambda: line["heldout_select4_acc"] > line["heldout_retrieval_select_acc"]),
        "raw_beats_retrieval_nearest": ok(lambda: line["heldout_raw_acc"] > line["heldout_retrieval_nearest_acc"]),
        "shuffled_5_points_below": ok(lambda: line["heldout_shuffled_condition_acc"] <= line["heldout_raw_acc"] - 0.05),
        "seen_ge_zoo_minus_std": ok(lambda: line["seen_generated_acc"] >= line["seen_zoo_acc"] - line["seen_zoo_std"]),
        "sample_eval_256_le_10s": ok(lambda: line["sample_eval_256_s"] <= 10.0),
        **head_targets(line),
    }


def head_targets(line: Mapping[str, Any]) -> dict[str, bool]:
    """For a generator that fits its head at sampling time: the two retrieval targets again, against the
    lookups given the same head fit, and raw samples against freshly initialised networks given it (what
    the generated body adds beyond a lookup, or random features, plus a probe); {} otherwise."""
    out = {}
    for name, mine, theirs in (("select4_beats_retrieval_select_head", "heldout_select4_acc", "heldout_retrieval_select_head_acc"),
                               ("raw_beats_retrieval_nearest_head", "heldout_raw_acc", "heldout_retrieval_nearest_head_acc"),
                               ("raw_beats_random_init_head", "heldout_raw_acc", "heldout_random_init_head_acc")):
        other = line.get(theirs)
        if isinstance(other, (int, float)) and math.isfinite(other):
            out[name] = bool(line.get(mine) is not None and line[mine] > other)
    return out
