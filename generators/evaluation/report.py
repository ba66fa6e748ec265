"""The generator report: accuracy next to the zoo, novelty next to baselines, fine-tuning curves.

    rep = evaluate_generator(gen, ["digits-pair:0-2", "digits-pair:3-5"], store=store, n=100)
    rep.summary()                       # seen vs unseen conditions
    rep.save("report/")                 # report.json + accuracy.png, novelty.png, finetune.png
    record(store, gen, rep)             # records.py: generators row + samples rows (weights with their scores)

Per condition (a dataset):
- accuracy (best / mean / median / min / std) of n generated models (with select=k the
  best n of k*n by training-split loss, and then the raw samples beside them as
  `generated-raw`), of the zoo's checkpoints for that dataset (the last checkpoint of
  every finished model of the generator's layout; references.py), of the task baselines
  (task_baselines.py: majority, retrieval-select, retrieval-nearest, shuffled-condition, and
  for a generator that fits its last layer at sampling time also retrieval-select+head and
  retrieval-nearest+head: the lookups given that same head fit, and random-init+head: freshly
  initialised networks given it),
  of freshly trained models when a fresh store is given (`fresh`), and of the Zeng et al.
  baselines (baselines.py);
- gap closed per kind: (mean - majority) / (zoo - majority); the summary computes it on
  the means over the conditions (what the targets are stated on);
- novelty (novelty.py) of generated models and of every baseline: IoU of
  wrong-prediction sets against the zoo's checkpoints for the dataset, and
  nearest-neighbour L2 to the generator's training weights: to the checkpoints as stored
  (`nn_l2_stored_mean`), to the stored and aligned ones (`nn_l2_mean`), and up to the
  permutations we know (`nn_l2_aligned_mean`: also weight-matched onto the aligned
  system; novelty.aligned_nearest_l2), the figure that compares generated and fresh models;
- fine-tuning curves (finetune.py): accuracy after 0/1/5/25 steps from
  generated weights vs random init.
A condition is "seen" when the generator was fit on models of that dataset.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from generators.conditions import Condition, as_condition, check_n, resolve_dataset
from generators.evaluation import baselines as bl
from generators.evaluation.finetune import STEPS, finetune_curve, random_init
from generators.evaluation.kinds import KINDS_ORDER
from generators.evaluation import task_baselines as tb
from generators.evaluation.novelty import aligned_nearest_l2, iou_stats, l2_stats, nearest_l2, wrong_sets
from generators.evaluation.references import (check_store_layout, seen_zoo_split, task_checkpoints,
                                              training_set_status, training_weights_split, zoo_checkpoints)
from generators.interface import WeightGenerator
from generators.protocols import check_held_out_unseen, tasks_seen_by
from store import filters
from store.errors import UserError
from wsl.data import Dataset
from wsl.evaluate import evaluate

# KINDS_ORDER (kinds.py) is re-exported: the CLI reads it from here


def acc_stats(acc: torch.Tensor) -> dict[str, float]:
    a = acc.to(torch.float64)
    if a.numel() == 0:
        return {"n": 0}
    return {"n": int(a.numel()), "best": float(a.max()), "mean": float(a.mean()), "median": float(a.median()),
            "min": float(a.min()), "std": float(a.std()) if a.numel() > 1 else 0.0}


@dataclass
class ConditionReport:
    condition: str
    dataset_id: str
    seen: bool
    accuracy: dict[str, dict[str, float]]  # kind -> stats
    novelty: dict[str, dict[str, float]]  # kind -> novelty stats
    finetune: dict[str, Any]
    samples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # kind -> [n, P]
    scores: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # kind -> loss/acc/nn_l2
    gap_closed: dict[str, float] = field(default_factory=dict)  # kind -> (mean - majority) / (zoo - majority)
    extra: dict[str, Any] = field(default_factory=dict)  # retrieval_nearest_task, retrieval_pool, shuffled_task

    def to_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "dataset_id": self.dataset_id, "seen": self.seen,
                "accuracy": self.accuracy, "novelty": self.novelty, "finetune": self.finetune,
                "gap_closed": self.gap_closed, **self.extra}


@dataclass
class Report:
    generator_id: str | None
    method: str
    layout_id: str
    n: int
    seed: int
    target: dict[str, float] | None
    conditions: list[ConditionReport]
    seconds: dict[str, float] = field(default_factory=dict)
    select: int = 1  # generated models: the best n of select*n by training-split loss (1 = every sample)
    training_set: str = "in store"  # NN-L2 needs it: "in store", "not in store" or "not recorded"

    def summary(self) -> dict[str, Any]:
        """Mean over conditions of each kind's mean accuracy (and novelty), split into seen and unseen."""
        out: dict[str, Any] = {}
        for group, conds in (("seen", [c for c in self.conditions if c.seen]),
                             ("unseen", [c for c in self.conditions if not c.seen])):
            if not conds:
                continue
            g: dict[str, Any] = {"conditions": len(conds)}
            for kind in KINDS_ORDER:
                vals = [c.accuracy[kind]["mean"] for c in conds if c.accuracy.get(kind, {}).get("n")]
                if vals:
                    g[f"{kind}_mean_acc"] = sum(vals) / len(vals)
                for key in ("iou_max_orig_gen", "iou_gen_gen", "nn_l2_mean", "nn_l2_stored_mean", "nn_l2_aligned_mean"):
                    nv = [v for c in conds if (v := c.novelty.get(kind, {}).get(key)) is not None and not math.isnan(v)]
                    if nv:
                        g[f"{kind}_{key}"] = sum(nv) / len(nv)
            ft = [c.finetune for c in conds if c.finetune]
            if ft:
                g["finetune_steps"] = ft[0]["steps"]
                for kind in ("generated", "random_init"):
                    g[f"finetune_{kind}"] = [sum(f[kind]["mean"][i] for f in ft) / len(ft) for i in range(len(ft[0]["steps"]))]
            zoo, gen = g.get("zoo_mean_acc"), g.get("generated_mean_acc")
            if zoo and gen is not None:
                g["generated_over_zoo"] = gen / zoo
            # gap closed on the means over the conditions that have a zoo and a majority figure
            both = [c for c in conds if c.accuracy.get("zoo", {}).get("n") and c.accuracy.get("majority", {}).get("n")]
            if both:
                z = sum(c.accuracy["zoo"]["mean"] for c in both) / len(both)
                m = sum(c.accuracy["majority"]["mean"] for c in both) / len(both)
                for kind in KINDS_ORDER:
                    if kind in ("zoo", "majority") or not all(c.accuracy.get(kind, {}).get("n") for c in both):
                        continue
                    k_mean = sum(c.accuracy[kind]["mean"] for c in both) / len(both)
                    g[f"{kind}_gap_closed"] = tb.gap_closed(k_mean, m, z)
            out[group] = g
        return out

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        d = {"generator_id": self.generator_id, "method": self.method, "layout_id": self.layout_id, "n": self.n,
             "seed": self.seed, "target": self.target, "select": self.select, "training_set": self.training_set,
             "summary": self.summary(),
             "conditions": [c.to_dict() for c in self.conditions]}
        if timings:
            d["seconds"] = self.seconds
        return d

    def table(self) -> list[dict[str, Any]]:
        """One row per condition x kind (what the CLI prints)."""
        rows = []
        for c in self.conditions:
            for kind in KINDS_ORDER:
                a = c.accuracy.get(kind)
                if not a or not a.get("n"):
                    continue
                nv = c.novelty.get(kind, {})
                rows.append({"condition": c.condition, "seen": c.seen, "kind": kind, "n": a["n"], "best": a["best"],
                             "mean": a["mean"], "median": a["median"], "min": a["min"], "std": a["std"],
                             "gap_closed": c.gap_closed.get(kind),
                             "iou_max_orig_gen": nv.get("iou_max_orig_gen"), "nn_l2": nv.get("nn_l2_mean"),
                             "nn_l2_aligned": nv.get("nn_l2_aligned_mean")})
        return rows

    def save(self, directory: str | os.PathLike, plots: bool = True) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "report.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=json_default) + "\n")
        os.replace(tmp, d / "report.json")
        if plots:
            from generators.evaluation.plots import plot_report

            plot_report(self, d)
        return d


def json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _scores(weights: torch.Tensor, layout, ds: Dataset):
    return evaluate(weights, layout, ds, split="test", return_predictions=True)


@dataclass
class Context:
    """What every condition of one report shares: the training weights (stored / aligned), the retrieval pool."""

    stored: torch.Tensor | None = None  # the generator's training checkpoints as stored [N, P]
    aligned: torch.Tensor | None = None  # the same, aligned per init group (None without alignment)
    pool: tb.Pool | None = None  # zoo checkpoints of the generator's training tasks (retrieval)
    seen_tasks: tuple[str, ...] = ()  # the tasks the generator was fit on (shuffled-condition draws from these)
    fresh_store: Any = None  # a store of freshly trained models of the same spec (the `fresh` kind)

    @property
    def train_weights(self) -> torch.Tensor | None:
        if self.stored is None:
            return None
        return self.stored if self.aligned is None else torch.cat([self.stored, self.aligned])

    @property
    def reference(self) -> torch.Tensor | None:
        base = self.aligned if self.aligned is not None else self.stored
        return None if base is None else base.mean(0)


def report_context(store, gen: WeightGenerator, fresh_store=None, pool: bool = True) -> Context:
    """The shared part of a report: training weights by recorded id, the retrieval pool of the seen tasks."""
    parts = training_weights_split(store, gen) or seen_zoo_split(store, gen)  # task-only fits: the seen tasks' zoo
    seen = tuple(sorted(tasks_seen_by(gen.fit_info)))
    ctx = Context(*(parts or (None, None)), seen_tasks=seen, fresh_store=fresh_store)
    if pool and store is not None and seen:
        w, tasks = task_checkpoints(store, seen, gen.layout.layout_id)
        if len(w):
            ctx.pool = tb.Pool(w, gen.layout, tasks)
    return ctx


def evaluate_condition(gen: WeightGenerator, condition: str | Dataset | Condition, store=None, n: int = 100,
                       seed: int = 0, target: dict[str, float] | None = None, train_weights: torch.Tensor | None = None,
                       reference: torch.Tensor | None = None, with_baselines: bool = True, finetune_n: int = 16,
                       finetune_steps: Sequence[int] = STEPS, select: int = 1, context: Context | None = None,
                       task_baselines: bool = True) -> ConditionReport:
    """Everything the report says about one condition (see module docstring).

    context (report_context): training weights as stored and aligned, the retrieval pool, the
    seen tasks and a fresh-model store; without it only `train_weights` (if given) is used.
    task_baselines: majority, retrieval-select / -nearest and shuffled-condition (task_baselines.py).
    """
    layout = gen.layout
    ctx = context or Context(stored=train_weights)
    cond = as_condition(condition, target)
    ds = resolve_dataset(cond.dataset, cond.split_seed)
    named = isinstance(cond.dataset, str)
    if store is not None and named:
        check_store_layout(store, gen, ds.name)
    if reference is None:
        reference, _ = zoo_checkpoints(store, ds.name, layout.layout_id) if named else (torch.empty(0), [])
    seen = ds.name in (gen.fit_info.get("conditions") or {})
    w_gen, _ = gen.sample(n, cond, seed=seed, select=select)
    kinds: dict[str, torch.Tensor] = {"generated": w_gen}
    extra: dict[str, Any] = {}
    if select > 1:
        kinds["generated-raw"] = gen.sample(n, cond, seed=seed, select=1)[0]
    if len(reference):
        kinds["zoo"] = reference
        if with_baselines:
            kinds.update(bl.baselines(reference, layout, n, seed=seed))
    if task_baselines:
        own = ds.name if seen else None  # a seen task retrieves from the other tasks only
        headed = gen.fits_head(layout, ds)  # the head baselines (task_baselines.HEAD_KINDS)
        head = lambda w: gen.fit_head(w, layout, ds)  # noqa: E731
        if ctx.pool is not None and any(t != own for t in ctx.pool.tasks):
            kinds["retrieval-select"] = ctx.pool.retrieval_select(ds, n, exclude=own)
            kinds["retrieval-nearest"], extra["retrieval_nearest_task"] = ctx.pool.retrieval_nearest(ds, exclude=own)
            extra["retrieval_pool"] = sum(t != own for t in ctx.pool.tasks)
            if headed:
                kinds["retrieval-select+head"] = ctx.pool.retrieval_select(ds, n, exclude=own, transform=head)
                kinds["retrieval-nearest+head"] = head(kinds["retrieval-nearest"])
        if headed:
            kinds["random-init+head"] = head(random_init(layout, n, seed))
        others = [t for t in ctx.seen_tasks if t != ds.name]
        if others:
            extra["shuffled_task"] = tb.shuffled_task(ds.name, others, seed)
            shuffled = Condition(extra["shuffled_task"], cond.target, cond.split_seed)
            kinds["shuffled-condition"] = gen.sample(n, shuffled, seed=seed, select=1)[0]
    if ctx.fresh_store is not None and named:
        fresh, _ = zoo_checkpoints(ctx.fresh_store, ds.name, layout.layout_id)
        if len(fresh):
            kinds["fresh"] = fresh
    results = {k: _scores(w, layout, ds) for k, w in kinds.items()}
    accuracy = {k: acc_stats(r.accuracy if ds.task == "classification" else r.r2) for k, r in results.items()}
    if task_baselines and ds.task == "classification":
        accuracy["majority"] = acc_stats(torch.tensor([tb.majority_accuracy(ds)]))
    nov: dict[str, dict[str, float]] = {}
    nn_l2: dict[str, torch.Tensor] = {}
    ref_wrong = None
    if ds.task == "classification" and "zoo" in results:
        ref_wrong = wrong_sets(results["zoo"].predictions, ds.y_test)
    tw = ctx.train_weights
    for k, r in results.items():
        if k == "zoo":
            continue
        stats: dict[str, float] = {}
        if ref_wrong is not None:
            stats.update(iou_stats(wrong_sets(r.predictions, ds.y_test), ref_wrong))
        if tw is not None and len(tw):
            nn_l2[k] = nearest_l2(kinds[k], tw)
            stats.update(l2_stats(nn_l2[k]))
            stats["nn_l2_stored_mean"] = float(nearest_l2(kinds[k], ctx.stored).mean())
            if ctx.aligned is not None:
                stats["nn_l2_aligned_mean"] = float(aligned_nearest_l2(kinds[k], ctx.stored, ctx.aligned, layout,
                                                                       ctx.reference).mean())
        if stats:
            nov[k] = stats
    gap = {}
    if "majority" in accuracy and "zoo" in accuracy:
        gap = {k: tb.gap_closed(a["mean"], accuracy["majority"]["mean"], accuracy["zoo"]["mean"])
               for k, a in accuracy.items() if k not in ("zoo", "majority")}
    ft: dict[str, Any] = {}
    if finetune_n > 0:
        m = min(finetune_n, n)
        gen_curve = finetune_curve(w_gen[:m], layout, ds, finetune_steps)
        rnd_curve = finetune_curve(random_init(layout, m, seed=10_000 + seed), layout, ds, finetune_steps)
        ft = {"steps": gen_curve["steps"], "models": m, "generated": gen_curve, "random_init": rnd_curve}
    scores = {k: {"test_loss": results[k].loss, "test_acc": results[k].accuracy,
                  "nn_l2": nn_l2.get(k, torch.full((len(kinds[k]),), math.nan, dtype=torch.float64))}
              for k in kinds if k != "zoo"}
    return ConditionReport(cond.label(), ds.dataset_id, seen, accuracy, nov, ft,
                           {k: v for k, v in kinds.items() if k != "zoo"}, scores, gap, extra)


def evaluate_generator(gen: WeightGenerator, conditions: Sequence[str | Dataset | Condition], store=None, n: int = 100,
                       seed: int = 0, target: dict[str, float] | None = None, with_baselines: bool = True,
                       finetune_n: int = 16, finetune_steps: Sequence[int] = STEPS, progress=None,
                       select: int = 1, held_out: Sequence[str] | None = None, fresh_store=None,
                       task_baselines: bool = True, context: Context | None = None) -> Report:
    """The report over several conditions; the zoo and training weights come from `store` when given.

    held_out: tasks the caller evaluates as held out (a protocol's): refused (UserError, before
    any work) when the generator saw one of them. fresh_store: freshly trained models of the
    same spec, reported as the `fresh` kind (the novelty reference).
    """
    layout = gen._require_fit()
    check_n(n)
    if isinstance(select, bool) or not isinstance(select, int) or select < 1:
        raise UserError(f"select is {select!r}", "give select >= 1 (1 = keep every sample; k = best n of k*n)")
    if not conditions:
        raise UserError("no conditions to evaluate", "give at least one --dataset")
    if held_out:
        check_held_out_unseen(list(held_out), gen.fit_info, f"generator {gen.generator_id}")
    t0 = time.perf_counter()
    ctx = context or report_context(store, gen, fresh_store, pool=task_baselines)
    out = []
    for cond in conditions:
        out.append(evaluate_condition(gen, cond, store, n, seed, target, None, None, with_baselines, finetune_n,
                                      finetune_steps, select, context=ctx, task_baselines=task_baselines))
        if progress:
            progress(1, info=out[-1].condition)
    return Report(gen.generator_id, gen.method, layout.layout_id, n, seed, dict(target) if target else None, out,
                  {"total": time.perf_counter() - t0}, select, training_set_status(store, gen))


def default_conditions(store, gen: WeightGenerator) -> list[str]:
    """Every dataset the store has finished models of with the generator's layout (seen and unseen)."""
    if store is None or store.count("models") == 0:
        return sorted(gen.fit_info.get("conditions") or {})
    df = filters.select_models(store, None, "checkpoints.layout_id = $wsl_layout", "models.status = $wsl_finished",
                               columns="DISTINCT models.dataset", order_by="models.dataset",
                               params={"wsl_layout": gen.layout.layout_id, "wsl_finished": "done"}, allow_empty=True)
    return list(df["dataset"]) or sorted(gen.fit_info.get("conditions") or {})
