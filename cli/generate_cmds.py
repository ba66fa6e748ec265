"""`wsl generate fit | sample | eval | push | methods`: weight generators on a zoo, in the store and on the Hub.

    wsl generate fit --method diffusion --protocol digits-pairs --where "zoo = 'digits-pairs'"   # -> STORE/generators/<id>/
    wsl generate sample GEN --dataset digits-pair:0-2 -n 256           # samples + scores -> `samples` table
    wsl generate eval GEN --dataset digits-pair:0-2 --dataset digits-pair:3-5
    wsl generate push GEN --repo-id my-lab/digits-diffusion            # a Hugging Face model repo
    wsl generate sample my-lab/digits-diffusion --dataset digits-pair:0-2   # downloaded, pinned by commit

GEN is a generator folder, a generator id recorded in the store, or a Hub repo ORG/NAME.
--where is a SQL condition over the pool of models and checkpoints (as for `wsl eval`);
without it, the last checkpoint of every finished model. Each selected checkpoint's
condition is its model's dataset.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from cli import common
from cli.generate_common import emit_summary as _emit, open_store as _open_store, parse_options as _parse_options, target as _target
from store.errors import UserError

GenArgument = typer.Argument(..., help="Generator: its folder, its generator_id in the store, or a Hub model repo ORG/NAME.")
RevisionOption = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub generator (default: main).")


def _method_help() -> str:
    from generators.registry import method_names

    return (f"Generator method: {', '.join(method_names())} (the registry; `wsl generate methods` lists them, "
            "third-party methods come through the 'wsl.generators' entry point).")


# --------------------------------------------------------------------------- fit
def fit_cmd(
    method: str = typer.Option("diffusion", "--method", help=_method_help()),
    store: Optional[Path] = common.StoreOption,
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL condition over models and checkpoints (default: the last checkpoint of every finished model)."),
    last: bool = typer.Option(False, "--last", help="With --where: keep only the last checkpoint of every finished model (always so without --where)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the fitted generator (default: STORE/generators/<generator_id>/; the store's row records where it is)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Fit on a protocol's seen tasks only (its held-out tasks are recorded with the generator): a built-in (digits-pairs, digits-pairs-random, digits-subsets), a .toml file, or 'pattern=digits-pair:*,split-seed=3,held-out=10' (docs/generators.md, Protocols)."),
    metric: str = typer.Option("test_acc", "--metric", help="Checkpoint column used as a target-metric condition (G.pt style); 'none' to skip."),
    align_by: str = typer.Option("seed", "--align-by", help="Models column grouping shared initialisations for hidden-unit alignment; 'none' to skip."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoiser training steps (default 3000)."),
    ae_steps: Optional[int] = typer.Option(None, "--ae-steps", help="Autoencoder training steps (default 1500)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    options: List[str] = typer.Option([], "--set", help="Any other generator option as KEY=VALUE (see docs/generators.md); repeatable."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged", help="Leave out checkpoints whose stored weights fail their integrity check (reported on stderr) instead of stopping."),
    datasets: List[str] = typer.Option([], "--datasets", help="Fit from tasks alone, no zoo weights (methods that need none, e.g. hyper with mode=task): dataset names or patterns such as digits-pair:*, repeatable or comma-separated."),
    arch: Optional[str] = typer.Option(None, "--arch", help="With --datasets: the generated models' architecture as JSON, e.g. '{\"name\": \"mlp\", \"width\": 32, \"depth\": 2}' (sizes filled from the first dataset); default: the store's one layout."),
    fmt: str = common.FormatOption,
) -> None:
    """Fit a weight generator on the checkpoints a SQL filter selects; keep it in the store (or --out) with its row."""
    from generators import get_method, read_config
    from generators.evaluation.records import keep, store_folder

    common.check_format(fmt, ("table", "json"))
    klass = get_method(method)  # an unknown name is a UserError listing what the registry has
    if datasets or arch is not None:
        from cli.generate_tasks import fit_tasks

        return fit_tasks(klass, method, store, out, datasets, arch, where, protocol, seed, options, fmt)
    if protocol is not None:
        from generators.protocols import parse_protocol

        protocol_spec = parse_protocol(protocol)
    import dataclasses

    config = _parse_options(options)
    if "seed" in {f.name for f in dataclasses.fields(klass.Config)}:
        config["seed"] = seed
    if steps is not None:
        config["steps"] = steps
    if ae_steps is not None:
        config["ae_steps"] = ae_steps
    klass(**config)  # validates the options before any work
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory", "give a new or existing directory")
    previous = read_config(out) if out is not None and (out / "config.json").exists() else None
    zs = _open_store(store, create=False)
    if skip_damaged:
        import warnings

        from store.verified_read import DamagedRowsSkipped

        warnings.simplefilter("ignore", DamagedRowsSkipped)  # reported below, in words
    split = None
    if protocol is not None:  # the seen tasks among the store's (under --where); the fit records both sides
        from generators.protocols import resolve

        split = resolve(protocol_spec, zs, where).split()
    t0 = time.perf_counter()
    with common.progress_bar(f"fit {method}", total=None, unit="steps") as update:
        gen = klass.fit(zs, where, last=True if last else None, protocol=split,
                        metric=None if metric == "none" else metric,
                        align_by=None if align_by == "none" else align_by, progress=update,
                        skip_damaged=skip_damaged, **config)
    if previous is not None and previous.get("layout_id") != gen.layout.layout_id:
        raise UserError(f"--out {out} holds a generator of layout {previous.get('layout_id')}, this one makes "
                        f"{gen.layout.layout_id}", "give another --out directory (or delete the old generator)")
    path = keep(zs, gen, out)
    info = gen.fit_info
    summary = {"generator_id": gen.generator_id, "method": method, "layout_id": gen.layout.layout_id,
               "num_params": gen.layout.num_params, "num_train": info["num_train"],
               "train_digest": gen.training.get("digest"), "conditions": len(info.get("conditions", {})),
               "held_out": len(gen.training.get("held_out") or []), "metrics": info.get("metrics"),
               "aligned_groups": info.get("aligned_groups"), "ridge_loo_explained": info.get("ridge_loo_explained"),
               "ae_relative_recon_error": info.get("ae_relative_recon_error"),
               "seconds": round(time.perf_counter() - t0, 2), "path": str(path),
               "in_store": out is None or Path(path).resolve() == store_folder(zs, gen.generator_id).resolve(),
               "skipped_damaged": len(zs.skipped_rows)}
    if zs.skipped_rows:
        from store.verified_read import skipped_message

        typer.echo(f"warning: {skipped_message(zs.skipped_rows)}", err=True)
    _emit(summary, fmt, "wsl generate fit")


# --------------------------------------------------------------------------- sample
def sample_cmd(
    gen_ref: str = GenArgument,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to generate weights for, e.g. digits-pair:0-2."),
    n: int = typer.Option(100, "-n", "--n", help="How many models to generate."),
    store: Optional[Path] = common.StoreOption,
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same weights)."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Target test accuracy (generators fit with --metric test_acc)."),
    dataset_seed: int = typer.Option(0, "--dataset-seed", help="Split seed of the dataset."),
    select: int = typer.Option(1, "--select", help="Draw SELECT x n candidates, keep the n with the lowest training-split loss (1 = every sample)."),
    layout_id: Optional[str] = typer.Option(None, "--layout", help="Layout id to generate, for a generator fit on several layouts (vqar): one of its layouts, or another width of its family from the store's layouts table (default: the generator's main layout)."),
    revision: Optional[str] = RevisionOption,
    fmt: str = common.FormatOption,
) -> None:
    """Generate n models for a dataset, score them (fused) and append them to the `samples` table."""
    import torch

    from generators.conditions import Condition, check_n
    from generators.evaluation.novelty import nearest_l2
    from generators.evaluation.records import open_generator, record_generator, sample_kind, sample_rows
    from generators.evaluation.references import check_store_layout, training_weights
    from wsl.evaluate import evaluate
    from zoo import load_dataset

    common.check_format(fmt, ("table", "json"))
    check_n(n)
    target = _target(target_acc)
    zs = _open_store(store, create=True)
    gen, source = open_generator(gen_ref, zs, revision)
    ds = load_dataset(dataset, seed=dataset_seed)
    gen.check_dataset(ds)
    layout = _sample_layout(gen, zs, layout_id)
    check_store_layout(zs, gen, ds.name, layout)
    tw = training_weights(zs, gen, layout)  # by recorded id: a store with only part of them is an error, before any write
    t0 = time.perf_counter()
    cond = Condition(dataset, target, dataset_seed)
    w, layout = gen.sample(n, cond, seed=seed, select=select, layout=layout)
    t_gen = time.perf_counter() - t0
    res = evaluate(w, layout, ds, split="test")
    nn = nearest_l2(w, tw) if tw is not None else torch.full((n,), math.nan, dtype=torch.float64)
    t_all = time.perf_counter() - t0
    kind = sample_kind("generated", select)
    if layout.layout_id != gen.layout.layout_id:  # another layout of a multi-layout generator: its own sample ids
        kind = f"{kind}-layout{layout.layout_id}"
    rows = sample_rows(gen, cond.label(), ds.dataset_id, seed, kind,
                       {"test_loss": res.loss, "test_acc": res.accuracy, "nn_l2": nn})
    record_generator(zs, gen, source, None)  # a samples row always names a generator that has a row
    written = zs.append_weights("samples", w, rows, layout)
    score = res.accuracy if ds.task == "classification" else res.r2
    summary = {"generator_id": gen.generator_id, "source": source, "condition": cond.label(),
               "seen": ds.name in (gen.fit_info.get("conditions") or {}), "n": n, "seed": seed, "select": select,
               "best": float(score.max()), "mean": float(score.mean()), "median": float(score.median()),
               "min": float(score.min()), "std": float(score.std()) if n > 1 else 0.0,
               "nn_l2_mean": float(nn.mean()), "written": int(written), "store": str(zs.path),
               "seconds_generate": round(t_gen, 3), "seconds_total": round(t_all, 3)}
    if tw is None:
        typer.echo("note: nn_l2 not computed: the generator's training checkpoints are not in this store "
                   "(pull its zoo with --weights, or use the store it was fit on)", err=True)
    _emit(summary, fmt, "wsl generate sample")


def _sample_layout(gen, zs, layout_id: Optional[str]):
    """The ParamLayout `--layout` names: one the generator was fit on, else the store's layouts table; None without it."""
    if layout_id is None:
        return None
    fit = {lay.layout_id: lay for lay in getattr(gen, "layouts", [gen.layout])}
    if layout_id in fit:
        return fit[layout_id]
    if not getattr(gen, "multi_layout", False):
        raise UserError(f"--layout {layout_id}: this {gen.method} generator makes layout {gen.layout.layout_id} only",
                        "leave --layout out, or use a generator fit on several layouts (--method vqar)")
    try:
        return zs.layout(layout_id)
    except UserError:
        raise UserError(f"--layout {layout_id} is neither a layout this generator was fit on ({', '.join(fit)}) nor one "
                        f"in store {zs.path}'s layouts table",
                        "give one of the generator's layouts, or a layout id the store holds "
                        "(wsl query \"SELECT layout_id, architecture, num_params FROM layouts\")") from None


# --------------------------------------------------------------------------- eval
def eval_cmd(
    gen_ref: str = GenArgument,
    datasets: List[str] = typer.Option([], "--dataset", "-d", help="Condition(s) to evaluate; repeatable (default: every dataset the store has a zoo of for this layout)."),
    n: int = typer.Option(100, "-n", "--n", help="Generated models per condition (and per baseline)."),
    store: Optional[Path] = common.StoreOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default: the generator's folder/report)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Target test accuracy (generators fit with --metric test_acc)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the Zeng et al. baselines (noise, checkpoint average, Gaussian fit, aligned interpolation); majority, retrieval and shuffled-condition stay."),
    finetune_models: int = typer.Option(16, "--finetune-models", help="Models per fine-tuning curve (0 skips the curves)."),
    select: int = typer.Option(1, "--select", help="Draw SELECT x n candidates, keep the n with the lowest training-split loss (1 = every sample); the raw samples are reported beside them."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Evaluate a protocol's held-out tasks (default conditions without --dataset); refused when the generator saw one of them. A built-in, a .toml file or inline items (docs/generators.md, Protocols)."),
    fresh_store: Optional[Path] = typer.Option(None, "--fresh-store", help="Store of freshly trained models of the same spec (new seeds): reported as the `fresh` kind, the novelty reference."),
    revision: Optional[str] = RevisionOption,
    fmt: str = common.FormatOption,
) -> None:
    """The report: accuracy vs the zoo, the majority class, retrieval and shuffled-condition baselines, gap closed,
    novelty vs baselines and fresh models, fine-tuning curves; PNG + JSON, stored in the store."""
    import pandas as pd

    from generators.conditions import check_n
    from generators.evaluation.records import open_generator, record
    from generators.evaluation.references import training_weights
    from generators.evaluation.report import KINDS_ORDER, default_conditions, evaluate_generator
    from zoo import load_dataset

    common.check_format(fmt, ("table", "json"))
    check_n(n)
    if isinstance(select, bool) or select < 1:
        raise UserError(f"--select {select}", "give select >= 1 (1 = keep every sample; k = best n of k*n)")
    if finetune_models < 0:
        raise UserError(f"--finetune-models {finetune_models}", "give 0 (skip) or a positive number")
    target = _target(target_acc)
    spec = None
    if protocol is not None:
        from generators.protocols import parse_protocol

        spec = parse_protocol(protocol)
    fresh = None
    if fresh_store is not None:
        if not (fresh_store / "zoo.json").is_file():
            raise UserError(f"--fresh-store {fresh_store} is not a store", "give a store of freshly trained models "
                            "(wsl zoo train SPEC --store DIR with new seeds)")
        fresh = _open_store(fresh_store, create=False)
    if spec is not None and not (common.store_path(store) / "zoo.json").is_file():
        raise UserError(f"--protocol needs the zoo's store; {common.store_path(store)} is not one",
                        "give --store DIR of the zoo the generator was fit on")
    zs = _open_store(store, create=spec is None)
    held: list[str] = []
    if spec is not None:  # before anything is written: the held-out tasks exist in the zoo and are unseen
        from generators.protocols import check_held_out_unseen, resolve

        held = list(resolve(spec, zs).held_out)
    gen, source = open_generator(gen_ref, zs, revision)
    if held:
        check_held_out_unseen(held, gen.fit_info, f"generator {gen.generator_id}")
    if out is None:
        if str(source).startswith("hf://"):
            raise UserError(f"{gen_ref} was downloaded from the Hub: its folder is the download cache",
                            "give --out DIR for the report")
        out = Path(source) / "report"
    for d in datasets:
        gen.check_dataset(load_dataset(d))
    training_weights(zs, gen)  # a store with only part of the training set is an error before any work
    conds = list(datasets) + [t for t in held if t not in datasets] if (datasets or held) else \
        default_conditions(zs, gen)
    if not conds:
        raise UserError("no dataset to evaluate on", "give --dataset NAME")
    with common.progress_bar("eval generator", total=len(conds), unit="conditions") as update:
        rep = evaluate_generator(gen, conds, store=zs, n=n, seed=seed, target=target,
                                 with_baselines=not no_baselines, finetune_n=finetune_models, progress=update,
                                 select=select, held_out=held or None, fresh_store=fresh)
    rep.save(out)
    written = record(zs, gen, rep, source)
    summary = rep.summary()
    if fmt == "json":
        sys.stdout.write(json.dumps(common.json_safe({"summary": summary, "rows": rep.table(), "report": str(out / "report.json"),
                                            "training_set": rep.training_set, "written": written}), default=str) + "\n")
        return
    per = []
    for c in rep.conditions:
        row = {"condition": c.condition, "seen": c.seen}
        for kind in KINDS_ORDER:
            if c.accuracy.get(kind, {}).get("n"):
                row[kind] = c.accuracy[kind]["mean"]
        g = c.accuracy["generated"]
        row.update({"gap_closed": c.gap_closed.get("generated"), "gen_best": g["best"], "gen_min": g["min"],
                    "gen_nn_l2": c.novelty.get("generated", {}).get("nn_l2_mean")})
        per.append(row)
    common.print_table(pd.DataFrame(per), f"mean test accuracy of {n} models per condition")
    for group, s in summary.items():
        common.print_summary(s, f"{group} conditions")
    if rep.training_set != "in store":
        typer.echo(f"note: training set {rep.training_set}: no distance to the training checkpoints (nn_l2)", err=True)
    typer.echo(f"report: {out / 'report.json'} (+ accuracy.png, novelty.png, finetune.png); "
               f"stored {written['samples']} samples and the report (table generator_reports)")


# --------------------------------------------------------------------------- push
def push_cmd(
    gen_ref: str = typer.Argument(..., help="Generator: its folder, or its generator_id in the store."),
    repo_id: str = typer.Option(..., "--repo-id", help="Model repo ORG/NAME to create or update."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    store: Optional[Path] = common.StoreOption,
    zoo_repo: Optional[str] = typer.Option(None, "--zoo-repo", help="Dataset repo ORG/NAME the zoo is published as (the card's reproduce lines pull it)."),
    license: str = typer.Option("cc-by-4.0", "--license", help="License id for the model card."),
    fmt: str = common.FormatOption,
) -> None:
    """Upload a generator as a Hugging Face model repo (config.json, model.safetensors, model card); one commit.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed or written.
    """
    from generators.evaluation.records import open_generator
    from generators.model_repo import push
    from generators.saving import looks_like_repo_id

    common.check_format(fmt, ("table", "json"))
    if looks_like_repo_id(gen_ref):
        raise UserError(f"{gen_ref!r} is not a local generator folder or a generator id of the store",
                        "push a generator you fit (its folder or generator_id); a Hub generator is already on the Hub")
    zs = _open_store(store, create=False) if common.store_path(store).exists() else None
    gen, source = open_generator(gen_ref, zs)
    report = push(gen, source, repo_id, private=private, zoo_repo=zoo_repo, license=license, store=zs)
    _emit({"generator_id": gen.generator_id, "repo_id": report.repo_id, "url": report.url, "commit": report.commit,
           "files": report.files, "bytes": report.bytes}, fmt, "wsl generate push")
    if fmt != "json":
        typer.echo(f"pushed {gen.generator_id} to {report.url}; load it: wsl generate sample {report.repo_id} --dataset ...")


# --------------------------------------------------------------------------- methods
def methods_cmd(fmt: str = common.FormatOption) -> None:
    """List the generator methods the registry has (built in, registered, installed through entry points)."""
    from generators.registry import get_method, method_names

    common.check_format(fmt)
    rows = []
    for name in method_names():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append({"method": name, "class": f"{cls.__module__}.{cls.__qualname__}",
                     "multi_layout": bool(getattr(cls, "multi_layout", False)),
                     "needs_weights": bool(getattr(cls, "needs_weights", True)), "about": doc[0] if doc else ""})
    common.emit(rows, fmt, title="generator methods")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="generate", help="Weight generators: fit on a zoo, sample for a dataset, evaluate (accuracy, novelty, baselines), push to the Hub.",
                      no_args_is_help=True)
    sub.command("fit")(fit_cmd)
    sub.command("sample")(sample_cmd)
    sub.command("eval")(eval_cmd)
    sub.command("push")(push_cmd)
    sub.command("methods")(methods_cmd)
    app.add_typer(sub, name="generate")
