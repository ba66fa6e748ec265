"""Hypernetworks: MIP vs the plain parametrization, and continual learning vs fine-tuning (last line: JSON).

1. MIP (Ortiz et al. 2023). For each hypernetwork architecture (mlp, chunked, rnn) and seed, the
   same task-mode fit twice in this process, MIP on and off, same budget (--steps), tasks, seeds,
   learning rates (--lrs) and batches, the imprinted head off (every weight from the
   parametrization compared): the steps until the smoothed train loss (EMA 0.9 of the per-step task loss)
   first reaches --target-loss. A run that never reaches it counts as budget + 1 (censored; the
   count of censored runs is reported). `mip_step_ratio` = total steps without MIP / with MIP
   over all runs (> 1: MIP gets there faster).
2. Continual (Chandra et al. 2022): --tasks digits-pair tasks (drawn by default_rng(--task-seed)
   from the 45, with both label orders allowed, so later tasks can contradict earlier ones),
   learned one at a time by a continual hypernetwork (--cont-arch, output regularizer), versus
   (a) one network fine-tuned through the same sequence, (b) one network per task, all with the
   same steps per task. Forgetting: mean over tasks but the last of (accuracy right after
   learning the task - accuracy after the last task), in points.
   continual_avg_final_rel = mean final accuracy of the hypernetwork's models / per-task models'.

Targets (issue 18): mip_step_ratio > 1; continual_avg_final_rel >= 0.95, continual forgetting
<= 2 points, against the fine-tuning baseline's forgetting.

    .venv/bin/python benchmarks/hyper_mip.py            # full run
    .venv/bin/python benchmarks/hyper_mip.py --quick    # a smaller one while developing
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.hyper import HyperNetwork  # noqa: E402
from generators.hyper.continual import accuracy_on_tasks, finetune_sequence, per_task_models  # noqa: E402
from zoo import config_for, load_dataset  # noqa: E402
from zoo.population import layout_for  # noqa: E402


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def steps_to(curve: list[float], target: float, ema: float = 0.9) -> int | None:
    s = None
    for i, v in enumerate(curve):
        s = v if s is None else ema * s + (1 - ema) * v
        if s <= target:
            return i + 1
    return None


def forgetting(after: list[list[float]]) -> float:
    """Mean over tasks but the last of (accuracy right after learning it - final accuracy), in points."""
    last = after[-1]
    drops = [after[t][t] - last[t] for t in range(len(after) - 1)]
    return 100.0 * float(np.mean(drops)) if drops else 0.0


def mip_part(args, layout, tasks) -> dict:
    runs, totals = [], {True: 0, False: 0}
    censored = {True: 0, False: 0}
    for arch, lr, seed in [(a, lr, s) for a in args.archs for lr in args.lrs for s in range(args.seeds)]:
        row = {"arch": arch, "lr": lr, "seed": seed}
        for mip in (True, False):
            t0 = time.perf_counter()
            gen = HyperNetwork(arch=arch, mip=mip, steps=args.steps, seed=seed, hidden=args.hidden,
                               lr=lr, imprint=False).fit_tasks(layout, tasks)
            n = steps_to(gen.history["task_loss"], args.target_loss)
            if n is None:
                censored[mip] += 1
                n = args.steps + 1
            totals[mip] += n
            key = "mip" if mip else "plain"
            row[f"{key}_steps"] = n
            row[f"{key}_final_loss"] = round(gen.fit_info["final_task_loss"], 5)
            row[f"{key}_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({**row, "load": load1()}), flush=True)
        runs.append(row)
    return {"mip_step_ratio": round(totals[False] / totals[True], 3), "mip_steps_total": totals[True],
            "plain_steps_total": totals[False], "mip_censored": censored[True], "plain_censored": censored[False],
            "mip_runs": runs, "target_loss": args.target_loss, "mip_budget_steps": args.steps}


def continual_part(args, layout) -> dict:
    rng = np.random.default_rng(args.task_seed)
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    picked = [pairs[i] for i in rng.choice(len(pairs), args.tasks, replace=False)]
    names = [f"digits-pair:{a}-{b}" for a, b in picked]
    datasets = [load_dataset(n) for n in names]
    t0 = time.perf_counter()
    gen = HyperNetwork(continual=True, arch=args.cont_arch, steps=args.cont_steps, lr=args.cont_lr,
                       seed=0).fit_tasks(layout, datasets)
    hyper_s = time.perf_counter() - t0
    hyper_final = accuracy_on_tasks(gen, datasets)
    hyper_forget = forgetting(gen.history["acc_after_task"])
    t0 = time.perf_counter()
    _, ft_after = finetune_sequence(layout, datasets, args.cont_steps, seed=0)
    ft_s = time.perf_counter() - t0
    _, per_task = per_task_models(layout, datasets, args.cont_steps, seed=0)
    out = {"continual_tasks": names, "continual_steps_per_task": args.cont_steps,
           "continual_avg_final_acc": round(float(np.mean(hyper_final)), 4),
           "finetune_avg_final_acc": round(float(np.mean(ft_after[-1])), 4),
           "per_task_avg_acc": round(float(np.mean(per_task)), 4),
           "continual_avg_final_rel": round(float(np.mean(hyper_final) / np.mean(per_task)), 4),
           "continual_forgetting_points": round(hyper_forget, 2),
           "finetune_forgetting_points": round(forgetting(ft_after), 2),
           "continual_fit_s": round(hyper_s, 1), "finetune_fit_s": round(ft_s, 1)}
    print(json.dumps({k: v for k, v in out.items() if k != "continual_tasks"} | {"load": load1()}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller budgets while developing")
    ap.add_argument("--archs", default="mlp,chunked,rnn")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600, help="MIP part: step budget of every run")
    ap.add_argument("--target-loss", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lrs", default="1e-3,3e-3", help="MIP part: learning rates (MIP claims stability at larger ones)")
    ap.add_argument("--mip-tasks", type=int, default=10, help="MIP part: the first N digits-pair tasks")
    ap.add_argument("--tasks", type=int, default=10, help="continual part: number of tasks in the sequence")
    ap.add_argument("--task-seed", type=int, default=0)
    ap.add_argument("--cont-arch", default="mlp")
    ap.add_argument("--cont-steps", type=int, default=300)
    ap.add_argument("--cont-lr", type=float, default=3e-3)
    ap.add_argument("--skip-mip", action="store_true")
    ap.add_argument("--skip-continual", action="store_true")
    args = ap.parse_args()
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    if args.quick:
        args.seeds, args.steps, args.cont_steps = 1, 300, 150
    torch.manual_seed(0)
    from zoo.datasets import expand_pattern

    all_pairs = expand_pattern("digits-pair:*")
    tasks = all_pairs[:args.mip_tasks]
    layout = layout_for(config_for(load_dataset(tasks[0]), {"name": "mlp", "width": 32, "depth": 2}))
    t0 = time.perf_counter()
    load_start = load1()
    out: dict = {"benchmark": "hyper_mip", "layout_params": layout.num_params, "load_start": load_start}
    if not args.skip_mip:
        out.update(mip_part(args, layout, tasks))
    if not args.skip_continual:
        out.update(continual_part(args, layout))
    out.update({"seconds": round(time.perf_counter() - t0, 1), "load_end": load1(),
                "threads": torch.get_num_threads()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
