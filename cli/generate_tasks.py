"""`wsl generate fit --datasets ...`: a generator fit from task names alone (methods with needs_weights = False).

No zoo weights are read: the tasks' own train splits are the training signal (hyper's `task` mode).
The layout comes from `--arch` or from the store's one layout.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List

from cli import common
from cli.generate_common import emit_summary, open_store, parse_options
from store.errors import UserError


def _task_names(items: List[str]) -> list[str]:
    """--datasets values: names and family patterns (digits-pair:*), repeatable or comma-separated, in order, once each."""
    from zoo.datasets import expand_pattern

    out: list[str] = []
    for item in items:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            for t in (expand_pattern(name) if name.endswith(":*") else [name]):
                if t not in out:
                    out.append(t)
    return out


def fit_tasks(klass, method: str, store, out, datasets, arch, where, protocol, seed, options, fmt) -> None:
    """`fit --datasets ...`: a generator fit from tasks alone (klass.needs_weights is False), no zoo weights read."""
    import dataclasses

    from generators.evaluation.records import keep, store_folder
    from zoo import config_for, load_dataset
    from zoo.population import layout_for

    if getattr(klass, "needs_weights", True):
        raise UserError(f"the {method} method learns from a zoo's weights: --datasets alone cannot fit it",
                        "fit it on a store's checkpoints (--where / --protocol), or use --method hyper")
    if where is not None or protocol is not None:
        raise UserError("--datasets fits on the named tasks; --where / --protocol select zoo checkpoints",
                        "give either --datasets or --where / --protocol")
    names = _task_names(datasets)
    if not names:
        raise UserError("--arch without --datasets: no tasks to fit on", "give --datasets NAME (repeatable)")
    config = parse_options(options)
    if "seed" in {f.name for f in dataclasses.fields(klass.Config)}:
        config["seed"] = seed
    gen = klass(**config)  # validates the options before any work
    first = load_dataset(names[0])
    zs = open_store(store, create=False) if arch is None else None
    if arch is not None:
        arch_cfg = common.arch_config(arch)
        if "name" not in arch_cfg:
            raise UserError(f"--arch {arch!r} is not an architecture config", 'give a JSON object with a "name"')
        layout = layout_for(config_for(first, arch_cfg))
    else:
        ids = (list(zs.sql("SELECT DISTINCT layout_id FROM checkpoints ORDER BY layout_id")["layout_id"])
               if zs.count("checkpoints") else [])
        if len(ids) != 1:
            raise UserError(f"store {zs.path} has checkpoints of {len(ids)} layouts: no single architecture to generate",
                            'give --arch \'{"name": "mlp", "width": 32, "depth": 2}\' (or a store with one layout)')
        layout = zs.layout(ids[0])
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory", "give a new or existing directory")
    t0 = time.perf_counter()
    with common.progress_bar(f"fit {method} on {len(names)} tasks", total=None, unit="steps") as update:
        gen.fit_tasks(layout, names, progress=update)
    zs = zs or open_store(store, create=True)
    path = keep(zs, gen, out)
    summary = {"generator_id": gen.generator_id, "method": method, "layout_id": layout.layout_id,
               "num_params": layout.num_params, "num_train": 0, "conditions": len(names),
               "mode": gen.fit_info.get("mode"), "final_task_loss": gen.fit_info.get("final_task_loss"),
               "seconds": round(time.perf_counter() - t0, 2), "path": str(path),
               "in_store": out is None or Path(path).resolve() == store_folder(zs, gen.generator_id).resolve()}
    emit_summary(summary, fmt, "wsl generate fit")
