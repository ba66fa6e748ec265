"""The generator report: accuracy next to the zoo, novelty next to baselines, fine-tuning curves.

    rep = evaluate_generator(gen, ["digits-pair:0-2", "digits-pair:3-5"], store=store, n=100)
    rep.summary()                       # seen vs unseen conditions
    rep.save("report/")                 # report.json + accuracy.png, novelty.png, finetune.png
    record(store, gen, rep)             # records.py: generators row + samples rows (weights with their scores)

Per condition (a dataset):
- accuracy (best / mean / median / min / std) of n generated models, of the
  zoo's checkpoints for that dataset (the last checkpoint of every finished
  model of the generator's layout), and of the baselines (baselines.py); the zoo's checkpoints come from references.py;
- novelty (novelty.py) of generated models and of every baseline: IoU of
  wrong-prediction sets against the zoo's checkpoints for the dataset, and
  nearest-neighbour L2 to the generator's training weights (taken both as
  stored and as aligned: samples live in the generator's aligned coordinates);
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
from generators.evaluation.novelty import iou_stats, l2_stats, nearest_l2, wrong_sets
from generators.evaluation.references import (check_store_layout, training_set_status, training_weights,
                                              zoo_checkpoints)
from generators.interface import WeightGenerator
from store import filters
from store.errors import UserError
from wsl.data import Dataset
from wsl.evaluate import evaluate

KINDS_ORDER = ("generated", "zoo") + bl.KINDS


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

    def to_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "dataset_id": self.dataset_id, "seen": self.seen,
                "accuracy": self.accuracy, "novelty": self.novelty, "finetune": self.finetune}


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
                for key in ("iou_max_orig_gen", "nn_l2_mean"):
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
                             "iou_max_orig_gen": nv.get("iou_max_orig_gen"), "nn_l2": nv.get("nn_l2_mean")})
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


def evaluate_condition(gen: WeightGenerator, condition: str | Dataset | Condition, store=None, n: int = 100,
                       seed: int = 0, target: dict[str, float] | None = None, train_weights: torch.Tensor | None = None,
                       reference: torch.Tensor | None = None, with_baselines: bool = True, finetune_n: int = 16,
                       finetune_steps: Sequence[int] = STEPS, select: int = 1) -> ConditionReport:
    """Everything the report says about one condition (see module docstring)."""
    layout = gen.layout
    cond = as_condition(condition, target)
    ds = resolve_dataset(cond.dataset, cond.split_seed)
    if store is not None and isinstance(cond.dataset, str):
        check_store_layout(store, gen, ds.name)
    if reference is None:
        reference, _ = zoo_checkpoints(store, ds.name, layout.layout_id) if isinstance(cond.dataset, str) else (torch.empty(0), [])
    w_gen, _ = gen.sample(n, cond, seed=seed, select=select)
    kinds: dict[str, torch.Tensor] = {"generated": w_gen}
    if len(reference):
        kinds["zoo"] = reference
        if with_baselines:
            kinds.update(bl.baselines(reference, layout, n, seed=seed))
    results = {k: _scores(w, layout, ds) for k, w in kinds.items()}
    accuracy = {k: acc_stats(r.accuracy if ds.task == "classification" else r.r2) for k, r in results.items()}
    nov: dict[str, dict[str, float]] = {}
    nn_l2: dict[str, torch.Tensor] = {}
    ref_wrong = None
    if ds.task == "classification" and "zoo" in results:
        ref_wrong = wrong_sets(results["zoo"].predictions, ds.y_test)
    for k, r in results.items():
        if k == "zoo":
            continue
        stats: dict[str, float] = {}
        if ref_wrong is not None:
            stats.update(iou_stats(wrong_sets(r.predictions, ds.y_test), ref_wrong))
        if train_weights is not None and len(train_weights):
            nn_l2[k] = nearest_l2(kinds[k], train_weights)
            stats.update(l2_stats(nn_l2[k]))
        if stats:
            nov[k] = stats
    ft: dict[str, Any] = {}
    if finetune_n > 0:
        m = min(finetune_n, n)
        gen_curve = finetune_curve(w_gen[:m], layout, ds, finetune_steps)
        rnd_curve = finetune_curve(random_init(layout, m, seed=10_000 + seed), layout, ds, finetune_steps)
        ft = {"steps": gen_curve["steps"], "models": m, "generated": gen_curve, "random_init": rnd_curve}
    scores = {k: {"test_loss": results[k].loss, "test_acc": results[k].accuracy,
                  "nn_l2": nn_l2.get(k, torch.full((len(kinds[k]),), math.nan, dtype=torch.float64))}
              for k in kinds if k != "zoo"}
    seen = ds.name in (gen.fit_info.get("conditions") or {})
    return ConditionReport(cond.label(), ds.dataset_id, seen, accuracy, nov, ft,
                           {k: v for k, v in kinds.items() if k != "zoo"}, scores)


def evaluate_generator(gen: WeightGenerator, conditions: Sequence[str | Dataset | Condition], store=None, n: int = 100,
                       seed: int = 0, target: dict[str, float] | None = None, with_baselines: bool = True,
                       finetune_n: int = 16, finetune_steps: Sequence[int] = STEPS, progress=None,
                       select: int = 1) -> Report:
    """The report over several conditions; the zoo and training weights come from `store` when given."""
    layout = gen._require_fit()
    check_n(n)
    if not conditions:
        raise UserError("no conditions to evaluate", "give at least one --dataset")
    t0 = time.perf_counter()
    tw = training_weights(store, gen)
    out = []
    for cond in conditions:
        out.append(evaluate_condition(gen, cond, store, n, seed, target, tw, None, with_baselines, finetune_n,
                                      finetune_steps, select))
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
