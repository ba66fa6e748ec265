"""`wsl demo`: the whole flow on the built-in default, a few minutes on a laptop CPU.

    [1] train the built-in `phases` zoo (75 digits MLPs, batched cohorts) into the store
    [2] SQL over the store: accuracy by width x learning rate, weights -> one torch tensor
    [3] fused evaluation of every final checkpoint in one batched call, also on a shifted digits variant
    [4] aligned averaging of the seeds of one configuration
    [5] loss-landscape metrics, phase labels and the phase diagram
    [6] the digits-pairs zoo, a dataset-conditioned latent-diffusion generator, weights for a held-out task
    [7] the Hugging Face dataset folder of the zoo (a dry run: nothing is uploaded)

Every step reads what the previous ones wrote to the store, so a second run
skips the training (the store already holds every model) and repeats the rest.
"""
from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer

from cli import common

PHASE_ZOO = "phases"
PAIRS_ZOO = "digits-pairs"
HELD_OUT = "digits-pair:3-8"  # a held-out pair that is not trivially separable
# the --where a user would type to select the phases zoo; the landscape, plot and Hub APIs take filter text
PHASE_FILTER = f"zoo = '{PHASE_ZOO}'"


def _say(step: int | str, text: str) -> None:
    typer.echo(f"[{step}] {text}")


def _train(spec: str, store_path: Path, step: int):
    import zoo

    with common.progress_bar(f"[{step}] training {spec}", unit="model-epochs") as update:
        def progress(p) -> None:
            update(advance=0, total=p.work_total or 1, info=f"{p.models_done}/{p.models_total} models, "
                   f"epoch {p.epoch}/{p.epochs}, {p.samples_per_s:,.0f} samples/s")
            update(advance=p.work_done - done[0])
            done[0] = p.work_done

        done = [0]
        return zoo.train(spec, store_path, progress=progress)


def demo(
    store: Optional[Path] = common.StoreOption,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's plots, generator and Hub folder."),
    skip_generator: bool = typer.Option(False, "--skip-generator", help="Stop before the generator step (saves ~1-2 minutes)."),
) -> None:
    """Run the whole flow on the built-in default (digits): a few minutes on a laptop CPU."""
    import torch

    from store.store import ZooStore
    from wsl import evaluate
    from wsl.average import average_seeds
    from zoo import load_dataset

    t_start = time.perf_counter()
    store_path = common.store_path(store)
    out.mkdir(parents=True, exist_ok=True)

    # [1] a population trained in batched cohorts, every checkpoint into the store
    s = _train(PHASE_ZOO, store_path, 1)
    _say(1, f"zoo '{s.zoo}': {s.models} models ({s.already_finished} already in the store, {s.trained} trained now, "
            f"{s.diverged} diverged) in {s.seconds:.1f}s -> {store_path}")
    zs = ZooStore(store_path, create=False)

    # [2] SQL over the store (our values bound as parameters), then the selected weights as one tensor
    from store.filters import select_checkpoints

    zoo_param = {"zoo": PHASE_ZOO, "done": "done"}
    table = zs.sql(
        "SELECT m.width, m.lr, count(*) AS seeds, round(avg(c.test_acc), 3) AS test_acc "
        "FROM checkpoints c JOIN models m USING (model_id) "
        "WHERE m.zoo = $zoo AND m.status = $done AND c.epoch = m.epochs "
        "GROUP BY ALL ORDER BY test_acc DESC LIMIT 5", zoo_param)
    common.print_table(table, title="[2] best configurations by SQL")
    t0 = time.perf_counter()
    final = select_checkpoints(zs, None, "zoo = $zoo", "status = $done", "checkpoints.epoch = epochs",
                               params=zoo_param)
    groups = zs.weights(final.checkpoint_id.tolist(), grouped=True)
    n = sum(len(m) for _, m in groups.values())
    _say(2, f"{n} final checkpoints as {len(groups)} tensors (one per width: "
            + ", ".join(str(tuple(w.shape)) for w, _ in groups.values())
            + f") in {(time.perf_counter() - t0) * 1e3:.0f} ms")

    # [3] fused evaluation: every model of a layout in one batched call
    for name in ("digits", "digits-shift:1"):
        ds = load_dataset(name)
        results = [evaluate(w, zs.layout(lid), ds) for lid, (w, _) in groups.items()]
        acc = torch.cat([r.accuracy for r in results])
        ms = sum(r.seconds for r in results) * 1e3
        _say(3, f"fused evaluation on {name}: {len(acc)} models x {results[0].n_samples} samples in {ms:.0f} ms; "
                f"accuracy mean {acc.mean():.3f}, median {acc.median():.3f}, best {acc.max():.3f}")

    # [4] averaging the seeds of the best configuration, with and without aligning hidden units
    best = table.iloc[0]
    seeds = select_checkpoints(zs, None, "zoo = $zoo", "status = $done", "checkpoints.epoch = epochs",
                               "width = $width", "lr = $lr", order_by="seed",
                               params={**zoo_param, "width": int(best.width), "lr": float(best.lr)})
    sw, smeta = zs.weights(seeds.checkpoint_id.tolist())
    avg = average_seeds(sw, zs.layout(smeta.layout_id[0]), load_dataset("digits")).summary
    _say(4, f"averaging the {avg['models']} seeds of width {int(best.width)}, lr {float(best.lr)}: endpoints "
            f"{avg['mean_accuracy_endpoints']:.3f}, naive average {avg['accuracy_naive_avg']:.3f}, "
            f"aligned average {avg['accuracy_aligned_avg']:.3f} (Git Re-Basin weight matching)")

    # [5] loss landscape: Hessian, mode connectivity, CKA, phases, the phase diagram
    from zoo.landscape import compute_landscape
    from zoo.landscape.plot import plot_phases

    with common.progress_bar("[5] loss landscape") as update:
        ls = compute_landscape(zs, where=PHASE_FILTER,
                               progress=lambda adv, info, total=None: update(advance=adv, info=info, total=total))
    phases = zs.sql("SELECT phase, count(*) AS models, round(avg(c.test_acc), 3) AS test_acc FROM landscape l "
                    "JOIN models m USING (model_id) JOIN checkpoints c USING (model_id, epoch) "
                    "WHERE m.zoo = $zoo AND l.recipe_id = $recipe GROUP BY phase ORDER BY phase",
                    {"zoo": PHASE_ZOO, "recipe": ls.recipe_id})
    pngs = plot_phases(zs, out / "phases", where=PHASE_FILTER, recipe_id=ls.recipe_id)
    _say(5, f"landscape of {ls.selected} models ({ls.computed} computed now, {ls.already_stored} stored before): "
            + ", ".join(f"{r.phase} {r.models} (acc {r.test_acc:.3f})" for r in phases.itertuples())
            + f"; diagrams in {out / 'phases'} ({len(pngs)} PNG)")

    # [6] weights for a dataset the generator never saw
    if not skip_generator:
        from generators.demo import run as run_generator

        s = _train(PAIRS_ZOO, store_path, 6)
        _say(6, f"zoo '{s.zoo}': {s.models} models on 45 binary pair tasks ({s.trained} trained now) in {s.seconds:.1f}s")
        gen_dir = out / "generator"
        with ExitStack() as bar:
            update = bar.enter_context(common.progress_bar("[6] fitting the generator", unit="steps"))

            def say(line: str) -> None:
                bar.close()  # the first line comes after the fit: the bar ends above the results
                _say(6, line)

            run_generator(zs, gen_dir, held_out=HELD_OUT, zoo=PAIRS_ZOO, echo=say, progress=update)

    # [7] the Hub dataset repo's folder, as `wsl publish --dry-run` writes it
    from store.hub import build_folder

    hub_dir = out / "hub"
    if (hub_dir / "wsl-zoo.json").exists():  # our own earlier output; build_folder wants a new folder
        shutil.rmtree(hub_dir)
    report = build_folder(zs, hub_dir, where=PHASE_FILTER)
    _say(7, f"Hub dataset folder (dry run) {hub_dir}: "
            + ", ".join(f"{r['table']} {r['rows']}" for r in report.rows())
            + f"; publish with: wsl publish --store {store_path} --repo-id ORG/NAME")

    typer.echo(f"demo finished in {time.perf_counter() - t_start:.0f}s; try: "
               f"wsl query \"SELECT phase, count(*) FROM landscape GROUP BY phase\" --store {store_path}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
