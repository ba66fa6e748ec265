"""`wsl zoo ...`: train model zoos from specs, list the built-in specs.

`zoo_app` is the `wsl zoo` sub-app; other modules add their commands to it
(e.g. `wsl zoo landscape`) with `@zoo_app.command(...)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli import common

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
                info = (f"models {p.models_done}/{p.models_total} | cohort {p.cohort}/{p.cohorts} | "
                        f"epoch {p.epoch}/{p.epochs} | {p.samples_per_s:,.0f} samples/s")
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


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
