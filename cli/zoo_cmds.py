"""`wsl zoo ...`: train model zoos from specs, list the built-in specs, see what a store's zoos hold.

    wsl zoo list                 # every zoo: models by status, checkpoints, grid columns, final accuracy
    wsl zoo show phases          # one zoo: its grid, accuracy spread per grid cell, phase counts

`zoo_app` is the `wsl zoo` sub-app; other modules add their commands to it
(e.g. `wsl zoo landscape`) with `@zoo_app.command(...)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli import common
from store.errors import UserError

zoo_app = typer.Typer(
    name="zoo",
    help="Train populations of models from a spec, every checkpoint into the store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@zoo_app.command("train")
def train(
    spec: str = typer.Argument(..., help="A spec file (.toml or .yaml) or a built-in spec name (see `wsl zoo specs`)."),
    store: Optional[Path] = common.StoreOption,
    backend: str = typer.Option("local", "--backend", help="local (this process) or ray (one task per cohort; RAY_ADDRESS attaches to a cluster)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N for one GPU of several)."),
    cohort_size: Optional[int] = typer.Option(None, "--cohort-size", help="Most models trained as one batched cohort (default: the spec's cohort_size, 256)."),
    fmt: str = common.FormatOption,
) -> None:
    """Train every model of SPEC not yet finished in the store; a rerun resumes where the last one stopped."""
    from zoo.train import TrainingInterrupted, train as train_zoo

    common.check_format(fmt, ("table", "json"))
    path = common.store_path(store)
    try:
        with common.progress_bar("training", total=None, unit="model-epochs") as update:
            last = {"work": 0}

            def progress(p) -> None:
                info = (f"epoch {p.epoch}/{p.epochs} of cohort {p.cohort}/{p.cohorts}, "
                        f"{p.models_done}/{p.models_total} models done, {p.samples_per_s:,.0f} samples/s")
                update(advance=p.work_done - last["work"], total=max(p.work_total, 1), info=info)
                last["work"] = p.work_done

            summary = train_zoo(spec, path, backend=backend, device=device, progress=progress, cohort_size=cohort_size)
    except TrainingInterrupted as e:  # Ctrl-C: say where it stopped (the bar is closed by now), exit 128 + SIGINT
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None
    common.emit(summary.as_dict(), fmt, title=f"zoo {summary.zoo}")


@zoo_app.command("specs")
def specs(fmt: str = common.FormatOption) -> None:
    """List the built-in specs (pass a name to `wsl zoo train`)."""
    from zoo.spec import builtin_specs, load_spec

    rows = []
    for name, path in builtin_specs().items():
        s = load_spec(path)
        epochs = s.epochs if isinstance(s.epochs, list) else "sampled"
        rows.append({"name": name, "models": s.num_models, "dataset": s.datasets[0] + (f" (+{len(s.datasets) - 1})" if len(s.datasets) > 1 else "")
                     if isinstance(s.datasets, list) else "sampled",
                     "architecture": s.architecture["name"], "epochs": ",".join(map(str, epochs)) if isinstance(epochs, list) else epochs,
                     "description": s.description})
    common.emit(rows, fmt, title="built-in zoo specs")


def _open(store: Optional[Path]):
    from store.store import ZooStore

    return ZooStore(common.store_path(store), create=False)


def _spread(lo, mean, hi) -> str:
    return "NULL" if lo is None else f"{lo:.3f} {mean:.3f} {hi:.3f}"


@zoo_app.command("list")
def list_cmd(store: Optional[Path] = common.StoreOption, fmt: str = common.FormatOption) -> None:
    """The store's zoos: models by status, checkpoints, which hyperparameters vary, final test accuracy."""
    from store.zoo_summary import list_zoos

    common.check_format(fmt, ("table", "csv", "json"))
    zs = _open(store)
    rows = list_zoos(zs)
    if not rows:
        raise UserError(f"store {zs.path} has no models", "train a zoo first: wsl zoo train SPEC")
    if fmt != "table":
        common.emit(rows, fmt)
        return
    status = lambda r: ", ".join(f"{k} {r[k]}" for k in ("done", "diverged", "other") if r[k])  # noqa: E731
    common.print_table([{"zoo": r["zoo"], "models": r["models"], "status": status(r),
                         "test_acc min mean max": _spread(r["test_acc_min"], r["test_acc_mean"], r["test_acc_max"]),
                         "grid": r["grid"] or "-", "ckpts": r["checkpoints"], "landscape": r["landscape_rows"]}
                        for r in rows],
                       f"zoos in {zs.path} (test_acc: each model's last checkpoint)")


@zoo_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="The zoo's name (see `wsl zoo list`)."),
    store: Optional[Path] = common.StoreOption,
    fmt: str = common.FormatOption,
) -> None:
    """One zoo: its grid (the hyperparameters that vary, and their values), counts, accuracy spread, phases."""
    import pandas as pd

    from store.zoo_summary import summarize_zoo, values_text

    common.check_format(fmt, ("table", "json"))
    s = summarize_zoo(_open(store), name)
    if fmt == "json":
        common.emit(s, "json")
        return
    acc = s["accuracy"]["test_acc"]
    overview = {"models": s["models"], "status": ", ".join(f"{k} {v}" for k, v in s["status"].items()),
                "seeds": s["seeds"], "checkpoints": s["checkpoints"],
                "epochs": f"{s['epochs'][0]} .. {s['epochs'][1]}" if s["epochs"] else None,
                "final test_acc": (f"min {acc['min']:.4g}, mean {acc['mean']:.4g}, max {acc['max']:.4g} "
                                   f"({acc['models']} models)") if acc["models"] else None,
                "landscape rows": s["landscape_rows"]}
    overview.update({f"fixed {k}": v for k, v in s["fixed"].items()})
    common.print_summary(overview, f"zoo {name}")
    if s["grid"]:
        common.print_table(pd.DataFrame([{"hyperparameter": k, "values": len(v), "grid": values_text(v)}
                                         for k, v in s["grid"].items()]), "grid (hyperparameters that vary)",
                           fold_last=True)
        cells = [{**{k: c[k] for k in s["grid"]}, "models": c["models"],
                  "test_acc min mean max": _spread(c["test_acc_min"], c["test_acc_mean"], c["test_acc_max"])}
                 for c in s["cells"]]
        common.print_table(cells, f"final test_acc per grid cell: {len(cells)} cells")
    if s["phases"]:
        common.print_table(pd.DataFrame([{"phase": k, "rows": v} for k, v in s["phases"].items()]),
                           f"landscape phases ({s['landscape_rows']} rows, {s['landscape_recipes']} recipes)")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
