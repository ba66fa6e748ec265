"""PNG plots of a generator report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from pathlib import Path


COLORS = {"generated": "tab:blue", "generated-raw": "tab:cyan", "zoo": "tab:green", "fresh": "darkgreen",
          "majority": "black", "retrieval-select": "tab:pink", "retrieval-nearest": "magenta",
          "shuffled-condition": "gold", "noise-0.06": "tab:orange", "noise-0.12": "tab:red",
          "avg16": "tab:purple", "gaussfit": "tab:brown", "interp": "tab:olive", "random_init": "tab:gray"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def plot_report(report, directory: str | Path) -> list[Path]:
    """accuracy.png, novelty.png and finetune.png in `directory`; returns their paths."""
    plt = _plt()
    d = Path(directory)
    out = []
    conds = report.conditions
    from generators.evaluation.kinds import KINDS_ORDER

    kinds = [k for k in KINDS_ORDER if any(c.accuracy.get(k, {}).get("n") for c in conds)]

    # 1. accuracy per condition: mean (marker) and min..best (line) of every kind
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(conds) + 3), 4))
    width = 0.8 / max(1, len(kinds))
    for j, k in enumerate(kinds):
        xs, means, lo, hi = [], [], [], []
        for i, c in enumerate(conds):
            a = c.accuracy.get(k)
            if a and a.get("n"):
                xs.append(i + (j - (len(kinds) - 1) / 2) * width)
                means.append(a["mean"]), lo.append(a["min"]), hi.append(a["best"])
        ax.vlines(xs, lo, hi, color=COLORS.get(k), alpha=0.5)
        ax.scatter(xs, means, color=COLORS.get(k), label=k, s=12, zorder=3)
    ax.set_xticks(range(len(conds)))
    ax.set_xticklabels([("* " if c.seen else "") + c.condition.split(":")[-1] for c in conds], rotation=90, fontsize=7)
    ax.set_ylabel("test accuracy (mean; line: min..best)")
    ax.set_title(f"{report.method} generator {report.generator_id}: {report.n} models per condition (* = seen)")
    _legend(ax, fontsize=7, ncol=3)
    fig.tight_layout()
    out.append(d / "accuracy.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    # 2. novelty vs accuracy: one point per condition x kind
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "iou_max_orig_gen", "max IoU with a zoo checkpoint (lower = more novel)"),
                           (axes[1], "nn_l2_mean", "L2 to nearest training checkpoint (higher = more novel)")):
        for k in kinds:
            pts = [(c.accuracy[k]["mean"], c.novelty[k].get(key)) for c in conds
                   if k in c.novelty and c.novelty[k].get(key) is not None and not math.isnan(c.novelty[k][key])]
            if pts:
                ax.scatter([p[1] for p in pts], [p[0] for p in pts], color=COLORS.get(k), label=k, s=14)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("mean test accuracy")
    _legend(axes[0], fontsize=7)
    _legend(axes[1], fontsize=7)
    fig.suptitle("novelty next to accuracy (Zeng et al. 2025 baselines)")
    fig.tight_layout()
    out.append(d / "novelty.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    # 3. fine-tuning curves, averaged over conditions (seen and unseen separately)
    fig, ax = plt.subplots(figsize=(5, 4))
    for group, style in (("seen", "-"), ("unseen", "--")):
        fts = [c.finetune for c in conds if c.finetune and (c.seen == (group == "seen"))]
        if not fts:
            continue
        steps = fts[0]["steps"]
        for k in ("generated", "random_init"):
            ys = [sum(f[k]["mean"][i] for f in fts) / len(fts) for i in range(len(steps))]
            ax.plot([max(s, 0.5) for s in steps], ys, style, marker="o", color=COLORS[k], label=f"{k} ({group})")
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning steps (0 plotted at 0.5)")
    ax.set_ylabel("mean test accuracy")
    _legend(ax, fontsize=7)
    fig.tight_layout()
    out.append(d / "finetune.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out
