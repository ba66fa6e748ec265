"""`wsl datasets` and `wsl layout`: look at the built-in data and architectures before training."""
from __future__ import annotations

from typing import Optional

import typer

from cli import common


def datasets(
    name: Optional[str] = typer.Argument(None, help="A dataset name to describe, e.g. digits-pair:3-5; none lists the patterns."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    fmt: str = common.FormatOption,
) -> None:
    """List the built-in dataset names, or describe one (shapes, classes, sizes, dataset_id)."""
    from zoo.datasets import dataset_names, load_dataset

    if name is None:
        common.emit([{"dataset": n} for n in dataset_names()], fmt)
        return
    common.emit(load_dataset(name, seed=seed).descriptor(), fmt)


def layout(
    arch: str = typer.Argument(..., help='Architecture config as JSON, e.g. \'{"name": "mlp", "width": 32}\'.'),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Dataset that fixes input and output sizes."),
    fmt: str = common.FormatOption,
) -> None:
    """Show the parameter layout (names, shapes, offsets, layout_id) of an architecture on a dataset."""
    from wsl import ParamLayout
    from zoo import config_for, load_dataset

    config = common.arch_config(arch, "architecture")
    lay = ParamLayout.from_config(config_for(load_dataset(dataset), config))
    if fmt == "json":
        common.emit({"layout_id": lay.layout_id, "num_params": lay.num_params, **lay.to_dict()}, fmt)
        return
    rows = [{"name": e.name, "shape": list(e.shape), "offset": e.offset, "numel": e.numel} for e in lay.entries]
    common.emit(rows, fmt, title=f"layout {lay.layout_id}: {lay.num_params} parameters ({lay.arch['name']})")


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets)
    app.command("layout")(layout)
