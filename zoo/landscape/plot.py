"""Phase diagrams: temperature x load heatmaps of every landscape metric, plus the phase map.

    df = phase_table(store, where="zoo = 'phases'")          # one row per model
    paths = plot_phase_diagram(df, "out/", fmt="svg")        # one file per metric + phase map + overview (png|pdf|svg)

Temperature is the training noise of SGD, lr / batch size by default (Yang et
al. 2021 vary batch size; lr / B is the quantity both knobs move); load is the
amount of data per parameter, here the model width by default (or any SQL
expression over `models` columns, e.g. n_train). A cell is one (load,
temperature) configuration: metrics are averaged over its seeds and its phase
is the most common label among them. Cells whose models all diverged are
marked, since they have no landscape values, and a cell whose label is
uncertain for one of its models (the trace within its error of the threshold,
`phase_uncertain`) gets a `*`.

Figures use matplotlib's constrained layout and wrap long titles and axis
labels (a --load expression can be long) to the figure's width, so no text is
cut off; `clipped_texts` checks that (tests draw with a long title).
"""
from __future__ import annotations

import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from store import filters
from store.errors import UserError
from zoo.landscape.phases import PHASES
from zoo.landscape.run import _open

FORMATS = ("png", "pdf", "svg")

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

    Models that diverged in training are included with status 'diverged' and no values. `where`
    goes through store/filters.py (the pool of models and checkpoints); a filter that selects no
    model, or no model with landscape rows, is a UserError naming it.
    """
    store = _open(store)
    w = filters.clean(where)
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
    try:
        selected = filters.select_models(store, where, allow_empty=True)
    except UserError as e:
        raise UserError(f"--where {w!r} is not a valid condition ({e.message})", filters.HINT) from None
    if selected.empty:
        raise UserError(f"--where {w!r} selects no models" if w else f"store {store.path} has no models", filters.HINT)
    params: dict[str, Any] = {"rid": recipe_id, "diverged": "diverged"}
    in_sel = filters.in_list("m.model_id", "ids", selected["model_id"], params)
    if epoch is not None:
        params["epoch"] = int(epoch)
        pick = "l.epoch = $epoch"
    else:
        pick = "l.epoch = (SELECT max(l2.epoch) FROM landscape l2 WHERE l2.model_id = l.model_id AND l2.recipe_id = l.recipe_id)"
    try:
        df = store.sql(f"SELECT l.*, m.zoo, m.seed, m.status, ({load}) AS load, ({temperature}) AS temperature "
                       f"FROM landscape l JOIN models m ON l.model_id = m.model_id "
                       f"WHERE l.recipe_id = $rid AND {pick} AND {in_sel}", {k: v for k, v in params.items() if k != "diverged"})
        div = store.sql(f"SELECT m.model_id, m.zoo, m.seed, m.status, ({load}) AS load, ({temperature}) AS temperature "
                        f"FROM models m WHERE m.status = $diverged AND {in_sel}",
                        {k: params[k] for k in ("diverged", "ids")})
    except UserError as e:
        raise UserError(f"cannot select the phase table ({e.message})",
                        "check --load and --temperature: SQL expressions over the models table's columns") from None
    if not len(df):
        raise UserError(f"--where {w!r} selects {len(selected)} models, none with landscape rows of recipe {recipe_id}"
                        + ("" if epoch is None else f" at epoch {int(epoch)}") if w else
                        f"no landscape rows of recipe {recipe_id}" + ("" if epoch is None else f" at epoch {int(epoch)}"),
                        "relax --where or --epoch, or compute them: wsl zoo landscape")
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
        flags = ok.get("phase_uncertain", pd.Series(dtype=object))
        row["uncertain"] = int(sum(1 for f in flags if f is True or (isinstance(f, (bool, np.bool_)) and bool(f))))
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


LABEL_SIZE, TITLE_SIZE, SUPTITLE_SIZE = 10.0, 12.0, 14.0


def _fill(text: str, inches: float, fontsize: float) -> str:
    """`text` broken into lines that fit `inches` at `fontsize` points (about 0.6 em per character)."""
    chars = max(12, int(inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in str(text).split("\n"))


def _axes_inches(ax) -> tuple[float, float]:
    pos, fig = ax.get_position(), ax.get_figure()
    return pos.width * fig.get_figwidth(), pos.height * fig.get_figheight()


def _axes(ax, xs, ys, load_label, temp_label):
    w, h = _axes_inches(ax)
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set_xlabel(_fill(f"load: {load_label}", w, LABEL_SIZE), fontsize=LABEL_SIZE)
    ax.set_ylabel(_fill(f"temperature: {temp_label}", h, LABEL_SIZE), fontsize=LABEL_SIZE)  # runs along the height


def _title(ax, text: str) -> None:
    ax.set_title(_fill(text, _axes_inches(ax)[0], TITLE_SIZE), fontsize=TITLE_SIZE)


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
    _title(ax, spec["title"])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _dark(im, v: float) -> bool:
    r, g, b, _ = im.cmap(im.norm(v))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def _draw_phases(ax, c: pd.DataFrame, load_label: str, temp_label: str) -> None:
    from matplotlib import colors
    from matplotlib.patches import Patch

    z, xs, ys = _grid(c, "phase")
    unsure, _, _ = _grid(c, "uncertain") if "uncertain" in c else (np.zeros(z.shape), xs, ys)
    names = list(PHASE_COLORS)
    idx = np.full(z.shape, np.nan)
    for (i, j), p in np.ndenumerate(z):
        if isinstance(p, str):
            idx[i, j] = names.index(p)
    cmap = colors.ListedColormap([PHASE_COLORS[n] for n in names])
    ax.imshow(np.ma.masked_invalid(idx), origin="lower", cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
    starred = False
    for (i, j), p in np.ndenumerate(z):
        if isinstance(p, str):
            text = "div" if p == "diverged" else ("?" if p == "unlabelled" else p)
            if np.isfinite(unsure[i, j]) and unsure[i, j] > 0:
                text, starred = text + "*", True
            ax.text(j, i, text, ha="center", va="center",
                    fontsize=9, fontweight="bold", color="white" if p in ("I", "IV-B", "III", "diverged") else "black")
    _axes(ax, xs, ys, load_label, temp_label)
    _title(ax, "phase (Yang et al. 2021)")
    present = [n for n in names if (z == n).any()]
    handles = [Patch(color=PHASE_COLORS[n], label=n) for n in present]
    if starred:
        handles.append(Patch(color="none", label="* a model's trace within\n  its error of the threshold"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def phase_figures(c: pd.DataFrame, load_label: str = "width", temp_label: str = "lr / batch size",
                  metrics: Sequence[str] = tuple(PANELS), title: str | None = None) -> dict[str, Any]:
    """name -> matplotlib Figure: phase_map, one per metric, phase_diagram (all panels); constrained layout."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6.2, 4.2), layout="constrained")
    _draw_phases(ax, c, load_label, temp_label)
    if title:
        fig.suptitle(_fill(title, 0.9 * fig.get_figwidth(), SUPTITLE_SIZE), fontsize=SUPTITLE_SIZE)
    figs["phase_map"] = fig
    for m in metrics:
        fig, ax = plt.subplots(figsize=(5.6, 4.2), layout="constrained")
        _draw_metric(ax, fig, c, m, load_label, temp_label)
        figs[m] = fig
    panels = ["phase", *metrics]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), layout="constrained", squeeze=False)
    for ax, p in zip(np.ravel(axes), panels):
        if p == "phase":
            _draw_phases(ax, c, load_label, temp_label)
        else:
            _draw_metric(ax, fig, c, p, load_label, temp_label)
    for ax in np.ravel(axes)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(_fill(title, 0.9 * fig.get_figwidth(), SUPTITLE_SIZE), fontsize=SUPTITLE_SIZE)
    figs["phase_diagram"] = fig
    return figs


def clipped_texts(fig) -> list[str]:
    """The texts a drawn figure shows that reach outside it (empty when nothing is cut off).

    Tick labels count only where their tick lies in the axis' view (matplotlib keeps, but does not
    draw, labels of ticks outside it).
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) * 1e-6
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not (lo - span <= tick.get_loc() <= hi + span):
                    hidden.update(id(t) for t in tick.findobj(Text))
    box = fig.bbox
    out = []
    for t in fig.findobj(Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        bb = t.get_window_extent(renderer)
        if bb.x0 < box.x0 - 0.5 or bb.y0 < box.y0 - 0.5 or bb.x1 > box.x1 + 0.5 or bb.y1 > box.y1 + 0.5:
            out.append(t.get_text())
    return out


def plot_phase_diagram(df: pd.DataFrame, out_dir, load_label: str = "width", temp_label: str = "lr / batch size",
                       metrics: Sequence[str] = tuple(PANELS), title: str | None = None, dpi: int = 110,
                       fmt: str = "png") -> list[Path]:
    """Write phase_map.<fmt>, one <metric>.<fmt> per metric, phase_diagram.<fmt> and cells.csv into out_dir.

    fmt: png, pdf or svg (anything else is a UserError, before any file is written).
    """
    import matplotlib.pyplot as plt

    fmt = check_format(fmt)
    out = Path(out_dir)
    c = cells(df)
    figs = phase_figures(c, load_label, temp_label, metrics, title)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, fig in figs.items():
            written.append(_save(fig, out / f"{name}.{fmt}", dpi, fmt))
    finally:
        for fig in figs.values():
            plt.close(fig)
    tmp = out / ".cells.csv.tmp"
    c.to_csv(tmp, index=False)
    tmp.replace(out / "cells.csv")
    written.append(out / "cells.csv")
    return written


def check_format(fmt: str) -> str:
    f = str(fmt).lower().lstrip(".")
    if f not in FORMATS:
        raise UserError(f"--plot-format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    return f


def _save(fig, path: Path, dpi: int, fmt: str) -> Path:
    tmp = path.with_name("." + path.name + ".tmp")
    fig.savefig(tmp, dpi=dpi, format=fmt)
    tmp.replace(path)
    return path


def plot_phases(store, out_dir, where: str | None = None, recipe_id: str | None = None, epoch: int | None = None,
                load: str = "width", temperature: str = "lr / batch_size", fmt: str = "png",
                title: str | None = None) -> list[Path]:
    """phase_table + plot_phase_diagram: what `wsl plot phases` runs (title defaults to the zoos and model count)."""
    fmt = check_format(fmt)
    df = phase_table(store, where=where, recipe_id=recipe_id, epoch=epoch, load=load, temperature=temperature)
    if title is None:
        zoos = sorted({z for z in df["zoo"] if isinstance(z, str)})
        title = f"zoo {', '.join(zoos)}: {len(df)} models" if zoos else None
    return plot_phase_diagram(df, out_dir, load_label=load, temp_label=temperature.replace("_", " "), title=title, fmt=fmt)
