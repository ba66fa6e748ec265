"""Phase diagrams: temperature x load heatmaps of every landscape metric, plus the phase map.

    df = phase_table(store, where="zoo = 'phases'")          # one row per model
    paths = plot_phase_diagram(df, "out/")                   # PNGs, one per metric + phase map + overview

Temperature is the training noise of SGD, lr / batch size by default (Yang et
al. 2021 vary batch size; lr / B is the quantity both knobs move); load is the
amount of data per parameter, here the model width by default (or any SQL
expression over `models` columns, e.g. n_train). A cell is one (load,
temperature) configuration: metrics are averaged over its seeds and its phase
is the most common label among them. Cells whose models all diverged are
marked, since they have no landscape values.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from store.errors import UserError
from zoo.landscape.phases import PHASES
from zoo.landscape.run import _open, models_filter

PANELS: dict[str, dict[str, Any]] = {
    "train_loss": {"title": "train loss", "cmap": "viridis_r", "log": True},
    "train_acc": {"title": "train accuracy", "cmap": "viridis"},
    "hessian_top_eig": {"title": "Hessian top eigenvalue", "cmap": "magma", "log": True},
    "hessian_trace": {"title": "Hessian trace", "cmap": "magma", "log": True},
    "mode_connectivity": {"title": "mode connectivity mc", "cmap": "RdBu", "diverging": True},
    "cka_logits": {"title": "CKA (logits)", "cmap": "viridis", "vmin": 0.0, "vmax": 1.0},
    "cka_hidden": {"title": "CKA (last hidden layer)", "cmap": "viridis", "vmin": 0.0, "vmax": 1.0},
}
PHASE_COLORS = {"I": "#d62728", "II": "#ff7f0e", "III": "#9467bd", "IV-A": "#2ca02c", "IV-B": "#1f77b4",
                "unlabelled": "#d9d9d9", "diverged": "#404040"}


def phase_table(store, where: str | None = None, recipe_id: str | None = None, epoch: int | None = None,
                load: str = "width", temperature: str = "lr / batch_size") -> pd.DataFrame:
    """One row per model: its landscape values (one recipe, one epoch) with `load` and `temperature` columns.

    Models that diverged in training are included with status 'diverged' and no values.
    """
    store = _open(store)
    cond = models_filter(where)
    ids = store.sql("SELECT recipe_id, count(*) AS n FROM landscape GROUP BY recipe_id ORDER BY n DESC")
    if not len(ids):
        raise UserError(f"store {store.path} has no landscape rows", "compute them first: wsl zoo landscape")
    if recipe_id is None:
        if len(ids) > 1:
            raise UserError(f"the landscape table holds {len(ids)} recipes ({', '.join(ids['recipe_id'][:4])})",
                            "pick one with --recipe ID (`wsl query \"SELECT recipe_id, recipe, count(*) FROM landscape "
                            "GROUP BY ALL\"` lists them)")
        recipe_id = str(ids["recipe_id"].iloc[0])
    elif recipe_id not in set(ids["recipe_id"]):
        raise UserError(f"no landscape rows with recipe_id {recipe_id!r}", f"use one of: {', '.join(ids['recipe_id'][:8])}")
    rid = "'" + recipe_id.replace("'", "''") + "'"
    pick = f"l.epoch = {int(epoch)}" if epoch is not None else \
        "l.epoch = (SELECT max(l2.epoch) FROM landscape l2 WHERE l2.model_id = l.model_id AND l2.recipe_id = l.recipe_id)"
    try:
        df = store.sql(
            f"SELECT l.*, m.zoo, m.seed, m.status, ({load}) AS load, ({temperature}) AS temperature "
            f"FROM landscape l JOIN models m ON l.model_id = m.model_id "
            f"WHERE l.recipe_id = {rid} AND {pick} AND m.model_id IN (SELECT model_id FROM models WHERE {cond})")
        div = store.sql(f"SELECT model_id, zoo, seed, status, ({load}) AS load, ({temperature}) AS temperature "
                        f"FROM models WHERE status = 'diverged' AND {cond}")
    except UserError as e:
        raise UserError(f"cannot select the phase table ({e.message})",
                        "check --where, --load and --temperature: SQL over the models table's columns") from None
    if not len(df):
        raise UserError(f"no landscape rows match (recipe {recipe_id}, where {where!r})", "relax --where or --epoch")
    return pd.concat([df, div], ignore_index=True) if len(div) else df


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per (load, temperature): metric means over seeds, majority phase, model counts."""
    out = []
    for (load, temp), g in df.groupby(["load", "temperature"], dropna=False):
        ok = g[g["status"] != "diverged"]
        row: dict[str, Any] = {"load": load, "temperature": temp, "models": len(g), "diverged": int(len(g) - len(ok))}
        for m in PANELS:
            vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else pd.Series(dtype=float)
            row[m] = float(vals.mean()) if vals.notna().any() else float("nan")
        labels = [p for p in ok.get("phase", pd.Series(dtype=object)) if isinstance(p, str)]
        if labels:
            counts = Counter(labels)
            best = max(counts.values())
            row["phase"] = next(p for p in PHASES if counts.get(p) == best)
            row["agreement"] = best / len(ok)
        else:
            row["phase"] = "diverged" if len(ok) == 0 else "unlabelled"
            row["agreement"] = float("nan")
        out.append(row)
    return pd.DataFrame(out).sort_values(["temperature", "load"]).reset_index(drop=True)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if v == 0 or not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"
    return str(v)


def _grid(c: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list]:
    xs = sorted(c["load"].dropna().unique().tolist())
    ys = sorted(c["temperature"].dropna().unique().tolist())
    z = np.full((len(ys), len(xs)), np.nan, dtype=object if column == "phase" else float)
    for _, r in c.iterrows():
        if r["load"] in xs and r["temperature"] in ys:
            z[ys.index(r["temperature"]), xs.index(r["load"])] = r[column]
    return z, xs, ys


def _axes(ax, xs, ys, load_label, temp_label):
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set_xlabel(f"load: {load_label}")
    ax.set_ylabel(f"temperature: {temp_label}")


def _draw_metric(ax, fig, c: pd.DataFrame, metric: str, load_label: str, temp_label: str) -> None:
    from matplotlib import colors

    spec = PANELS[metric]
    z, xs, ys = _grid(c, metric)
    z = z.astype(float)
    finite = z[np.isfinite(z)]
    norm = None
    if finite.size:
        if spec.get("diverging"):
            lim = float(np.max(np.abs(finite))) or 1.0
            norm = colors.TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
        elif spec.get("log") and np.all(finite > 0):
            norm = colors.LogNorm(vmin=float(finite.min()), vmax=float(max(finite.max(), finite.min() * 1.0001)))
        else:
            norm = colors.Normalize(vmin=spec.get("vmin", float(finite.min())), vmax=spec.get("vmax", float(finite.max())))
    im = ax.imshow(np.ma.masked_invalid(z), origin="lower", cmap=spec["cmap"], norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(z):
        if np.isfinite(v):
            ax.text(j, i, _fmt(float(v)), ha="center", va="center", fontsize=7,
                    color="white" if norm is not None and _dark(im, v) else "black")
    _axes(ax, xs, ys, load_label, temp_label)
    ax.set_title(spec["title"])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _dark(im, v: float) -> bool:
    r, g, b, _ = im.cmap(im.norm(v))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def _draw_phases(ax, c: pd.DataFrame, load_label: str, temp_label: str) -> None:
    from matplotlib import colors
    from matplotlib.patches import Patch

    z, xs, ys = _grid(c, "phase")
    names = list(PHASE_COLORS)
    idx = np.full(z.shape, np.nan)
    for (i, j), p in np.ndenumerate(z):
        if isinstance(p, str):
            idx[i, j] = names.index(p)
    cmap = colors.ListedColormap([PHASE_COLORS[n] for n in names])
    ax.imshow(np.ma.masked_invalid(idx), origin="lower", cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
    for (i, j), p in np.ndenumerate(z):
        if isinstance(p, str):
            ax.text(j, i, "div" if p == "diverged" else ("?" if p == "unlabelled" else p), ha="center", va="center",
                    fontsize=9, fontweight="bold", color="white" if p in ("I", "IV-B", "III", "diverged") else "black")
    _axes(ax, xs, ys, load_label, temp_label)
    ax.set_title("phase (Yang et al. 2021)")
    present = [n for n in names if (z == n).any()]
    ax.legend(handles=[Patch(color=PHASE_COLORS[n], label=n) for n in present], loc="upper left",
              bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def plot_phase_diagram(df: pd.DataFrame, out_dir, load_label: str = "width", temp_label: str = "lr / batch size",
                       metrics: Sequence[str] = tuple(PANELS), title: str | None = None, dpi: int = 110) -> list[Path]:
    """Write phase_map.png, one <metric>.png per metric, phase_diagram.png (all panels) and cells.csv into out_dir."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = cells(df)
    written = []
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    _draw_phases(ax, c, load_label, temp_label)
    fig.tight_layout()
    written.append(_save(fig, out / "phase_map.png", dpi))
    for m in metrics:
        fig, ax = plt.subplots(figsize=(5.6, 4.2))
        _draw_metric(ax, fig, c, m, load_label, temp_label)
        fig.tight_layout()
        written.append(_save(fig, out / f"{m}.png", dpi))
    panels = ["phase", *metrics]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows))
    for ax, p in zip(np.ravel(axes), panels):
        if p == "phase":
            _draw_phases(ax, c, load_label, temp_label)
        else:
            _draw_metric(ax, fig, c, p, load_label, temp_label)
    for ax in np.ravel(axes)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    written.append(_save(fig, out / "phase_diagram.png", dpi))
    tmp = out / ".cells.csv.tmp"
    c.to_csv(tmp, index=False)
    tmp.replace(out / "cells.csv")
    written.append(out / "cells.csv")
    return written


def _save(fig, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_phases(store, out_dir, where: str | None = None, recipe_id: str | None = None, epoch: int | None = None,
                load: str = "width", temperature: str = "lr / batch_size") -> list[Path]:
    """phase_table + plot_phase_diagram: what `wsl plot phases` runs."""
    df = phase_table(store, where=where, recipe_id=recipe_id, epoch=epoch, load=load, temperature=temperature)
    zoos = sorted({z for z in df["zoo"] if isinstance(z, str)})
    title = f"zoo {', '.join(zoos)}: {len(df)} models" if zoos else None
    return plot_phase_diagram(df, out_dir, load_label=load, temp_label=temperature.replace("_", " "), title=title)
