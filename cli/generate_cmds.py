"""`wsl generate fit | sample | eval`: weight generators on a zoo.

    wsl generate fit --method diffusion --protocol digits-pairs --where "zoo = 'digits-pairs'" --out gen/
    wsl generate sample gen/ --dataset digits-pair:0-2 -n 256          # samples + scores -> `samples` table
    wsl generate eval gen/ --dataset digits-pair:0-2 --dataset digits-pair:3-5 --out gen/report

--where is a SQL condition over checkpoints JOIN models (as for `wsl eval`);
without it, the last checkpoint of every finished model. Each selected
checkpoint's condition is its model's dataset.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from cli import common
from store.errors import UserError


def _method_help() -> str:
    from generators.registry import method_names

    return f"Generator method (registry: {', '.join(method_names())}; third-party methods through the 'wsl.generators' entry point)."


def _open_store(store: Optional[Path], create: bool):
    from store.store import ZooStore

    return ZooStore(common.store_path(store), create=create)


def _parse_options(options: List[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs -> dict (values parsed as JSON where they parse, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in options or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set latent_dim=16")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _target(target_acc: Optional[float]) -> Optional[dict[str, float]]:
    if target_acc is None:
        return None
    if not (0.0 <= target_acc <= 1.0):
        raise UserError(f"--target-acc {target_acc} is outside [0, 1]", "give an accuracy such as 1.0 or 0.95")
    return {"test_acc": float(target_acc)}


def _load(gen_dir: Path):
    from generators import load_generator

    return load_generator(gen_dir)


# --------------------------------------------------------------------------- fit
def fit_cmd(
    method: str = typer.Option("diffusion", "--method", help=_method_help()),
    store: Optional[Path] = common.StoreOption,
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL condition over checkpoints JOIN models (default: the last checkpoint of every finished model)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the fitted generator (config.json + model.safetensors)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Fit on a protocol's seen tasks only: a built-in (digits-pairs, digits-pairs-random, digits-subsets), a .toml file, or 'pattern=digits-pair:*,split-seed=3,held-out=10' (docs/generators.md, Protocols)."),
    metric: str = typer.Option("test_acc", "--metric", help="Checkpoint column used as a target-metric condition (G.pt style); 'none' to skip."),
    align_by: str = typer.Option("seed", "--align-by", help="Models column grouping shared initialisations for hidden-unit alignment; 'none' to skip."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoiser training steps (default 3000)."),
    ae_steps: Optional[int] = typer.Option(None, "--ae-steps", help="Autoencoder training steps (default 1500)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    options: List[str] = typer.Option([], "--set", help="Any other generator option as KEY=VALUE (see docs/generators.md); repeatable."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged", help="Leave out checkpoints whose stored weights fail their integrity check (reported on stderr) instead of stopping."),
    fmt: str = common.FormatOption,
) -> None:
    """Fit a weight generator on the checkpoints a SQL filter selects; save it to --out."""
    from generators import get_method, read_config

    common.check_format(fmt, ("table", "json"))
    klass = get_method(method)  # an unknown name is a UserError listing what the registry has
    if protocol is not None:
        from generators.protocols import parse_protocol

        protocol_spec = parse_protocol(protocol)
    config = _parse_options(options)
    config["seed"] = seed
    if steps is not None:
        config["steps"] = steps
    if ae_steps is not None:
        config["ae_steps"] = ae_steps
    klass(**config)  # validates the options before any work
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory", "give a new or existing directory")
    previous = read_config(out) if out.is_dir() and (out / "config.json").exists() else None
    zs = _open_store(store, create=False)
    if skip_damaged:
        import warnings

        from store.verified_read import DamagedRowsSkipped

        warnings.simplefilter("ignore", DamagedRowsSkipped)  # reported below, in words
    params, resolution, last = None, None, None
    if protocol is not None:
        from generators.protocols import resolve

        resolution = resolve(protocol_spec, zs, where)
        last = not (where and where.strip())  # no --where: the last checkpoint of every finished model, as without a protocol
        where, params = resolution.seen_filter(where)
    t0 = time.perf_counter()
    with common.progress_bar(f"fit {method}", total=None, unit="steps") as update:
        gen = klass.fit(zs, where, metric=None if metric == "none" else metric,
                        align_by=None if align_by == "none" else align_by, progress=update, params=params, last=last,
                        skip_damaged=skip_damaged, **config)
    if resolution is not None:  # the record `check_held_out_unseen` reads: which tasks it saw, which it held out
        gen.fit_info["protocol"] = resolution.to_dict()
        gen.generator_id = gen._compute_id()
    if previous is not None and previous.get("layout_id") != gen.layout.layout_id:
        raise UserError(f"--out {out} holds a generator of layout {previous.get('layout_id')}, this one makes "
                        f"{gen.layout.layout_id}", "give another --out directory (or delete the old generator)")
    gen.save_pretrained(out)
    info = gen.fit_info
    summary = {"generator_id": gen.generator_id, "method": method, "layout_id": gen.layout.layout_id,
               "num_params": gen.layout.num_params, "num_train": info["num_train"],
               "conditions": len(info.get("conditions", {})), "metrics": info.get("metrics"),
               "aligned_groups": info.get("aligned_groups"), "ridge_loo_explained": info.get("ridge_loo_explained"),
               "ae_relative_recon_error": info.get("ae_relative_recon_error"),
               "seconds": round(time.perf_counter() - t0, 2), "path": str(out),
               "skipped_damaged": len(zs.skipped_rows)}
    if zs.skipped_rows:
        from store.verified_read import skipped_message

        typer.echo(f"warning: {skipped_message(zs.skipped_rows)}", err=True)
    if fmt == "json":
        sys.stdout.write(json.dumps(common.json_safe(summary)) + "\n")
    else:
        common.print_summary(summary, "wsl generate fit")


# --------------------------------------------------------------------------- sample
def sample_cmd(
    gen_dir: Path = typer.Argument(..., help="Generator directory (written by `wsl generate fit`)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to generate weights for, e.g. digits-pair:0-2."),
    n: int = typer.Option(100, "-n", "--n", help="How many models to generate."),
    store: Optional[Path] = common.StoreOption,
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same weights)."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Target test accuracy (generators fit with --metric test_acc)."),
    dataset_seed: int = typer.Option(0, "--dataset-seed", help="Split seed of the dataset."),
    select: int = typer.Option(1, "--select", help="Draw SELECT x n candidates, keep the n with the lowest training-split loss (1 = every sample)."),
    fmt: str = common.FormatOption,
) -> None:
    """Generate n models for a dataset, score them (fused) and append them to the `samples` table."""
    import torch

    from generators.conditions import Condition, check_n
    from generators.evaluation.novelty import nearest_l2
    from generators.evaluation.records import record_generator, sample_kind, sample_rows
    from generators.evaluation.references import check_store_layout, training_weights
    from wsl.evaluate import evaluate
    from zoo import load_dataset

    common.check_format(fmt, ("table", "json"))
    check_n(n)
    target = _target(target_acc)
    gen = _load(gen_dir)
    ds = load_dataset(dataset, seed=dataset_seed)
    gen.check_dataset(ds)
    zs = _open_store(store, create=True)
    check_store_layout(zs, gen, ds.name)
    t0 = time.perf_counter()
    cond = Condition(dataset, target, dataset_seed)
    w, layout = gen.sample(n, cond, seed=seed, select=select)
    t_gen = time.perf_counter() - t0
    res = evaluate(w, layout, ds, split="test")
    tw = training_weights(zs, gen)
    nn = nearest_l2(w, tw) if tw is not None else torch.full((n,), math.nan, dtype=torch.float64)
    t_all = time.perf_counter() - t0
    rows = sample_rows(gen, cond.label(), ds.dataset_id, seed, sample_kind("generated", select),
                       {"test_loss": res.loss, "test_acc": res.accuracy, "nn_l2": nn})
    record_generator(zs, gen, gen_dir, None)  # a samples row always names a generator that has a row
    written = zs.append_weights("samples", w, rows, layout)
    score = res.accuracy if ds.task == "classification" else res.r2
    summary = {"generator_id": gen.generator_id, "condition": cond.label(),
               "seen": ds.name in (gen.fit_info.get("conditions") or {}), "n": n, "seed": seed, "select": select,
               "best": float(score.max()), "mean": float(score.mean()), "median": float(score.median()),
               "min": float(score.min()), "std": float(score.std()) if n > 1 else 0.0,
               "nn_l2_mean": float(nn.mean()), "written": int(written), "store": str(zs.path),
               "seconds_generate": round(t_gen, 3), "seconds_total": round(t_all, 3)}
    if fmt == "json":
        sys.stdout.write(json.dumps(common.json_safe(summary)) + "\n")
    else:
        common.print_summary(summary, "wsl generate sample")


# --------------------------------------------------------------------------- eval
def eval_cmd(
    gen_dir: Path = typer.Argument(..., help="Generator directory (written by `wsl generate fit`)."),
    datasets: List[str] = typer.Option([], "--dataset", "-d", help="Condition(s) to evaluate; repeatable (default: every dataset the store has a zoo of for this layout)."),
    n: int = typer.Option(100, "-n", "--n", help="Generated models per condition (and per baseline)."),
    store: Optional[Path] = common.StoreOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default: GEN_DIR/report)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Target test accuracy (generators fit with --metric test_acc)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the baselines (noise, checkpoint average, Gaussian fit, aligned interpolation)."),
    finetune_models: int = typer.Option(16, "--finetune-models", help="Models per fine-tuning curve (0 skips the curves)."),
    select: int = typer.Option(1, "--select", help="Draw SELECT x n candidates, keep the n with the lowest training-split loss (1 = every sample)."),
    fmt: str = common.FormatOption,
) -> None:
    """The report: accuracy vs the zoo, novelty vs baselines, fine-tuning curves; PNG + JSON, stored in the store."""
    import pandas as pd

    from generators.conditions import check_n
    from generators.evaluation.records import record
    from generators.evaluation.report import KINDS_ORDER, default_conditions, evaluate_generator
    from zoo import load_dataset

    common.check_format(fmt, ("table", "json"))
    check_n(n)
    if finetune_models < 0:
        raise UserError(f"--finetune-models {finetune_models}", "give 0 (skip) or a positive number")
    target = _target(target_acc)
    gen = _load(gen_dir)
    for d in datasets:
        gen.check_dataset(load_dataset(d))
    zs = _open_store(store, create=True)
    conds = list(datasets) or default_conditions(zs, gen)
    if not conds:
        raise UserError("no dataset to evaluate on", "give --dataset NAME")
    out = out or (gen_dir / "report")
    with common.progress_bar("eval generator", total=len(conds), unit="conditions") as update:
        rep = evaluate_generator(gen, conds, store=zs, n=n, seed=seed, target=target,
                                 with_baselines=not no_baselines, finetune_n=finetune_models, progress=update,
                                 select=select)
    rep.save(out)
    written = record(zs, gen, rep, gen_dir)
    summary = rep.summary()
    if fmt == "json":
        sys.stdout.write(json.dumps(common.json_safe({"summary": summary, "rows": rep.table(), "report": str(out / "report.json"),
                                            "written": written}), default=str) + "\n")
        return
    per = []
    for c in rep.conditions:
        row = {"condition": c.condition, "seen": c.seen}
        for kind in KINDS_ORDER:
            if c.accuracy.get(kind, {}).get("n"):
                row[kind] = c.accuracy[kind]["mean"]
        g = c.accuracy["generated"]
        row.update({"gen_best": g["best"], "gen_min": g["min"], "gen_nn_l2": c.novelty.get("generated", {}).get("nn_l2_mean")})
        per.append(row)
    common.print_table(pd.DataFrame(per), f"mean test accuracy of {n} models per condition")
    for group, s in summary.items():
        common.print_summary(s, f"{group} conditions")
    typer.echo(f"report: {out / 'report.json'} (+ accuracy.png, novelty.png, finetune.png); "
               f"stored {written['samples']} samples and the report (table generator_reports)")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="generate", help="Weight generators: fit on a zoo, sample for a dataset, evaluate (accuracy, novelty, baselines).",
                      no_args_is_help=True)
    sub.command("fit")(fit_cmd)
    sub.command("sample")(sample_cmd)
    sub.command("eval")(eval_cmd)
    app.add_typer(sub, name="generate")
