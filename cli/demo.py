"""`wsl demo`: the whole flow on the built-in default, minutes on a laptop CPU."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cli import common


def demo(
    store: Optional[Path] = common.StoreOption,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's plots and reports."),
    seed: int = typer.Option(0, "--seed", help="Seed for data split and initialisation."),
) -> None:
    """Run the whole flow on the built-in default (digits): minutes on a laptop CPU."""
    import torch
    import torch.nn.functional as F

    from wsl import ParamLayout
    from zoo import config_for, load_dataset

    t0 = time.perf_counter()
    ds = load_dataset("digits", seed=seed)
    arch = config_for(ds, {"name": "mlp", "width": 32, "depth": 2})
    layout = ParamLayout.from_config(arch)
    typer.echo(f"[1] dataset {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test, "
               f"architecture {arch['name']} with {layout.num_params} parameters (layout {layout.layout_id})")
    torch.manual_seed(seed)
    model = layout.build_module()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _epoch in range(20):
        for idx in torch.randperm(len(ds.x_train), generator=g).split(64):
            loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    flat = layout.flatten(model)
    typer.echo(f"[1] trained one model: test accuracy {acc:.3f}; flattened to {tuple(flat.shape)}")
    typer.echo(f"demo finished in {time.perf_counter() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
