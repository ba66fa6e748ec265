"""The generator part of `wsl demo`: fit on the seen digits-pairs tasks, generate for a held-out one, report.

    from generators.demo import run
    lines, summary = run(store, "demo-out/generator")     # the store holds the digits-pairs zoo
    for line in lines: print(line)

A reduced training budget (FAST) keeps it near 30 s on 2 CPU cores; the full defaults are what
benchmarks/generate.py measures.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from generators.evaluation.baselines import KINDS as BASELINES
from generators.diffusion import LatentDiffusion
from generators.protocols import check_held_out_unseen, resolve
from generators.evaluation.records import keep, record
from generators.evaluation.report import evaluate_generator
from wsl.evaluate import evaluate
from zoo.datasets import load_dataset

FAST = {"ae_steps": 800, "steps": 1500}


def run(store, out: str | Path, held_out: str = "digits-pair:0-2", seen: str = "digits-pair:0-1",
        zoo: str = "digits-pairs", n: int = 100, fast: bool = True,
        echo: Callable[[str], None] | None = None, progress=None) -> tuple[list[str], dict[str, Any]]:
    """Fit, sample, evaluate, save (out/), record in the store; returns printable lines and the summary.

    progress: the fit's progress callback (`update(advance, total=, info=)`, as cli.common.progress_bar yields).
    """
    say = echo or (lambda _s: None)
    lines: list[str] = []

    def emit(s: str) -> None:
        lines.append(s)
        say(s)

    out = Path(out)
    t0 = time.perf_counter()
    # the seen tasks' last checkpoints of the zoo (the zoo's name and the task lists travel as bound parameters);
    # the generator records the protocol's held-out tasks with the exact checkpoints it was fit on
    split = resolve("digits-pairs", store, "zoo = $zoo", {"zoo": zoo}).split()
    gen = LatentDiffusion.fit(store, "zoo = $zoo", params={"zoo": zoo}, last=True, protocol=split, metric="test_acc",
                              progress=progress, **(FAST if fast else {}))
    check_held_out_unseen([held_out], gen.fit_info, f"generator {gen.generator_id}")
    keep(store, gen, out)  # the folder, then its generators row (what it was fit on)
    emit(f"generator {gen.generator_id}: latent diffusion fit on {gen.fit_info['num_train']} checkpoints of "
         f"{len(gen.fit_info['conditions'])} seen tasks in {time.perf_counter() - t0:.0f}s -> {out}")
    t1 = time.perf_counter()
    rep = evaluate_generator(gen, [held_out, seen], store=store, n=n, target={"test_acc": 1.0})
    rep.save(out / "report")
    record(store, gen, rep, out)
    for c in rep.conditions:
        g, z = c.accuracy["generated"], c.accuracy.get("zoo", {})
        tag = "seen" if c.seen else "held out: the generator saw only its training samples"
        emit(f"{c.condition.split('|')[0]} ({tag}): {g['n']} generated models, accuracy mean {g['mean']:.3f} "
             f"median {g['median']:.3f} best {g['best']:.3f} min {g['min']:.3f}; zoo's {z.get('n', 0)} trained "
             f"models mean {z.get('mean', float('nan')):.3f}")
        nv = c.novelty.get("generated", {})
        n6 = c.novelty.get("noise-0.06", {})
        emit(f"  novelty: distance to nearest training checkpoint {nv.get('nn_l2_mean', float('nan')):.2f} "
             f"(zoo checkpoints + 6% noise: {n6.get('nn_l2_mean', float('nan')):.2f}); baselines' mean accuracy: "
             + ", ".join(f"{k} {c.accuracy[k]['mean']:.3f}" for k in BASELINES if k in c.accuracy))
        if c.finetune:
            ft = c.finetune
            emit("  fine-tuning (steps " + "/".join(map(str, ft["steps"])) + "): generated "
                 + "/".join(f"{v:.3f}" for v in ft["generated"]["mean"]) + ", random init "
                 + "/".join(f"{v:.3f}" for v in ft["random_init"]["mean"]))
    best, layout = gen.sample(n, held_out, target={"test_acc": 1.0}, select=4)
    acc = evaluate(best, layout, load_dataset(held_out)).accuracy
    emit(f"{held_out}, the best {n} of {4 * n} samples by training loss (gen.sample(..., select=4)): accuracy mean "
         f"{float(acc.mean()):.3f} min {float(acc.min()):.3f}")
    emit(f"report: {out / 'report' / 'report.json'} (+ 3 PNGs), samples stored; evaluation {time.perf_counter() - t1:.0f}s")
    return lines, rep.summary()
