"""`wsl zoo landscape` (loss-landscape metrics and phase labels into the store) and `wsl plot phases`.

    wsl zoo landscape --store wsl-store --where "zoo = 'phases'"
    wsl plot phases --store wsl-store --out plots/ --plot-format svg

The metric code lives in zoo/landscape/; docs/landscape.md explains the recipes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli import common
from cli.zoo_cmds import zoo_app

plot_app = typer.Typer(
    name="plot",
    help="Draw figures from a store (PNG, PDF or SVG).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

WHERE_HELP = ("SQL condition on models and checkpoints columns (e.g. \"zoo = 'phases' AND width >= 8\"), or a SELECT "
              "returning model_id; selecting no model is an error.")


@zoo_app.command("landscape")
def landscape(
    store: Optional[Path] = common.StoreOption,
    where: Optional[str] = typer.Option(None, "--where", help=WHERE_HELP),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Checkpoint epoch to analyse (default: each model's last)."),
    split: str = typer.Option("train", "--split", help="Data split the metrics are measured on: train or test."),
    batches: int = typer.Option(2, "--batches", help="Batches of the split every metric is measured on."),
    batch_size: int = typer.Option(512, "--batch-size", help="Samples per batch."),
    probes: int = typer.Option(40, "--probes", help="Rademacher probes of the deflated Hutchinson trace (>= 2; its standard error is stored)."),
    iterations: int = typer.Option(64, "--iterations", help="Lanczos steps at most for the top Hessian eigenvalue."),
    eig_tol: float = typer.Option(1e-3, "--eig-tol", help="Relative tolerance of the top eigenvalue (Lanczos residual bound)."),
    deflation: int = typer.Option(40, "--deflation", help="Lanczos steps at least: the basis the trace estimate is deflated with."),
    curve_epochs: int = typer.Option(20, "--curve-epochs", help="Epochs training each Bezier curve's control point (0: straight line)."),
    curve_lr: float = typer.Option(0.01, "--curve-lr", help="Adam learning rate of the curve's control point."),
    curve_points: int = typer.Option(9, "--curve-points", help="Points t in [0, 1] the curve is evaluated at (>= 5)."),
    partners: int = typer.Option(0, "--partners", help="Pair each seed with this many neighbours per side in a ring of its configuration's seeds (0: with every other seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data sample, the probes and the curves."),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="Phase thresholds, k=v pairs or JSON (keys: loss, mc_tol, hessian_trace, cka, cka_metric)."),
    relabel: bool = typer.Option(False, "--relabel", help="Only label stored metrics again with --thresholds (no recomputation)."),
    cohort: Optional[int] = typer.Option(None, "--cohort", help="Models per batched Hessian computation (default: planned from the model size so a tile stays in cache)."),
    fmt: str = common.FormatOption,
) -> None:
    """Hessian, mode connectivity, CKA and phase labels for models in the store (written to the landscape table)."""
    from zoo.landscape import Recipe, Thresholds, compute_landscape
    from zoo.landscape.run import relabel as relabel_rows

    common.check_format(fmt, ("table", "json"))
    th = Thresholds.parse(thresholds)
    path = common.store_path(store)
    if relabel:
        n = relabel_rows(path, th, where=where)
        common.emit({"relabelled": n, "thresholds": th.to_json()}, fmt, title="landscape relabel")
        return
    if cohort is not None and cohort < 1:
        from store.errors import UserError

        raise UserError(f"--cohort {cohort}", "give a positive number of models")
    recipe = Recipe(split=split, batches=batches, batch_size=batch_size, data_seed=seed, probes=probes,
                    iterations=iterations, eig_tol=eig_tol, deflation=deflation, hessian_seed=seed, curve_points=curve_points, curve_epochs=curve_epochs,
                    curve_lr=curve_lr, curve_seed=seed, partners=partners)
    from store.store import ZooStore
    from zoo.landscape.run import selected_models

    zs = ZooStore(path, create=False)
    selected_models(zs, where)  # a bad or empty --where fails here, before the progress bar and before any write
    with common.progress_bar("landscape", total=None, unit="models") as update:
        def progress(advance: float, info: str, total: int | None = None) -> None:
            update(advance=advance, info=info, total=total)

        summary = compute_landscape(zs, where=where, epoch=epoch, recipe=recipe, thresholds=th, progress=progress,
                                    chunk=cohort)
    d = summary.as_dict()
    d["phases"] = ", ".join(f"{k}: {v}" for k, v in sorted(summary.phases.items())) or "-"
    common.emit(d if fmt == "table" else summary.as_dict(), fmt, title="landscape")


@plot_app.command("phases")
def plot_phases(
    out: Path = typer.Option(..., "--out", help="Folder for the figures (phase_map, one per metric, phase_diagram) and cells.csv."),
    store: Optional[Path] = common.StoreOption,
    where: Optional[str] = typer.Option(None, "--where", help=WHERE_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="recipe_id of the landscape rows to draw (needed when the store holds several)."),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Epoch to draw (default: each model's last analysed one)."),
    load: str = typer.Option("width", "--load", help="Load axis: SQL expression over models columns (e.g. width, n_train)."),
    temperature: str = typer.Option("lr / batch_size", "--temperature", help="Temperature axis: SQL expression over models columns."),
    plot_format: str = typer.Option("png", "--plot-format", help="File format of the figures: png, pdf or svg (the files' extension)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the figures (default: the zoos and the model count)."),
) -> None:
    """Temperature x load heatmaps of every landscape metric, plus the phase map (matplotlib Agg)."""
    from store.store import ZooStore
    from zoo.landscape.plot import check_format, plot_phases as draw

    fmt = check_format(plot_format)
    path = common.store_path(store)
    paths = draw(ZooStore(path, create=False), out, where=where, recipe_id=recipe, epoch=epoch, load=load,
                 temperature=temperature, fmt=fmt, title=title)
    for p in paths:
        typer.echo(str(p))


def register(app: typer.Typer) -> None:
    # `wsl zoo landscape` joined zoo_app when this module was imported (the decorator above)
    app.add_typer(plot_app, name="plot")
