"""The generator part of `wsl demo`: fit on the seen digits-pairs tasks, generate for a held-out one, report.

    from generators.demo import run
    lines, summary = run(store, "demo-out/generator")     # the store holds the digits-pairs zoo
    for line in lines: print(line)

A reduced training budget (FAST) keeps the fit short on 2 CPU cores, and a rerun with the same
store content and options reuses the saved generator; the full defaults are what
benchmarks/generate.py measures. Every figure is printed next to what a user gets without a
generator (retrieval from the zoo, the majority class) and with the wrong condition.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from generators.diffusion import LatentDiffusion
from generators.evaluation.fit_cache import fit_or_reuse
from generators.evaluation.records import record, record_generator
from generators.evaluation.report import evaluate_generator
from generators.protocols import check_held_out_unseen, resolve

FAST = {"ae_steps": 800, "steps": 1500}
SELECT = 4


def run(store, out: str | Path, held_out: str = "digits-pair:0-2", seen: str = "digits-pair:0-1",
        zoo: str = "digits-pairs", n: int = 100, fast: bool = True,
        echo: Callable[[str], None] | None = None, progress=None,
        options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Fit (or reuse), sample, evaluate, save (out/), record in the store; returns printable lines and the summary.

    progress: the fit's progress callback (`update(advance, total=, info=)`, as cli.common.progress_bar yields).
    options: generator options over the budget (tests use tiny ones). A rerun with the same store content and fit options loads the generator saved in `out`
    (fit_cache.py) instead of fitting again.
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
    config = {**(FAST if fast else {}), **dict(options or {})}
    gen, reused = fit_or_reuse(LatentDiffusion.method, store, out, where="zoo = $zoo", params={"zoo": zoo}, last=True,
                               protocol=split, metric="test_acc", progress=progress, config=config)
    check_held_out_unseen([held_out], gen.fit_info, f"generator {gen.generator_id}")
    record_generator(store, gen, out, None)  # its generators row (once): what it was fit on
    c = gen.config
    what = (f"{c.ae_steps} autoencoder + {c.steps} denoiser steps ({'the demo budget' if fast else 'the defaults'}; "
            f"benchmarks/generate.py measures the defaults), mean model {gen.fit_info.get('mean_choice')} "
            f"{gen.fit_info.get('ridge_kernel')} ridge")
    if reused:
        emit(f"generator {gen.generator_id}: reused from {out} (same store content and fit options): latent diffusion, "
             f"{what}, fit on {gen.fit_info['num_train']} checkpoints of {len(gen.fit_info['conditions'])} seen tasks")
    else:
        emit(f"generator {gen.generator_id}: latent diffusion, {what}, fit on {gen.fit_info['num_train']} checkpoints "
             f"of {len(gen.fit_info['conditions'])} seen tasks in {time.perf_counter() - t0:.0f}s -> {out}")
    t1 = time.perf_counter()
    rep = evaluate_generator(gen, [held_out, seen], store=store, n=n, target={"test_acc": 1.0}, select=SELECT,
                             held_out=[held_out])
    rep.save(out / "report")
    record(store, gen, rep, out)
    for cr in rep.conditions:
        a = cr.accuracy
        tag = "seen" if cr.seen else "held out: the generator saw only its training samples"

        def m(kind: str) -> str:
            return f"{a[kind]['mean']:.3f}" if a.get(kind, {}).get("n") else "n/a"

        emit(f"{cr.condition.split('|')[0]} ({tag}): {n} generated models, raw samples mean {m('generated-raw')} "
             f"(gap closed {cr.gap_closed.get('generated-raw', float('nan')):.2f}), best {n} of {SELECT * n} by "
             f"training loss {m('generated')}; zoo's {a.get('zoo', {}).get('n', 0)} trained models {m('zoo')}, "
             f"majority class {m('majority')}")
        emit(f"  without a generator: retrieval-select (best {n} zoo models of the other tasks by training loss) "
             f"{m('retrieval-select')}, retrieval-nearest (models of {cr.extra.get('retrieval_nearest_task')}) "
             f"{m('retrieval-nearest')}; the generator asked for another task ({cr.extra.get('shuffled_task')}) "
             f"{m('shuffled-condition')}")
        if a.get("retrieval-nearest+head", {}).get("n"):
            emit(f"  the samples' last layer is fit on the task's training split (head_fit={c.head_fit}); the same head on "
                 f"the lookups: retrieval-select {m('retrieval-select+head')}, retrieval-nearest "
                 f"{m('retrieval-nearest+head')}, freshly initialised networks {m('random-init+head')}")
        nv = cr.novelty.get("generated-raw", {})
        n6 = cr.novelty.get("noise-0.06", {})
        emit(f"  novelty: distance to nearest training checkpoint {nv.get('nn_l2_aligned_mean', float('nan')):.2f} "
             f"(zoo checkpoints + 6% noise: {n6.get('nn_l2_aligned_mean', float('nan')):.2f})")
        if cr.finetune:
            ft = cr.finetune
            emit("  fine-tuning (steps " + "/".join(map(str, ft["steps"])) + "): generated "
                 + "/".join(f"{v:.3f}" for v in ft["generated"]["mean"]) + ", random init "
                 + "/".join(f"{v:.3f}" for v in ft["random_init"]["mean"]))
    emit(f"report: {out / 'report' / 'report.json'} (+ 3 PNGs), samples stored; evaluation "
         f"{time.perf_counter() - t1:.0f}s; the benchmark's figures over every held-out task: BENCHMARKS.md `generate`")
    return lines, rep.summary()
