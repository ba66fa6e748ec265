"""Model averaging, with the accuracy change it buys (the Phase-Transition Model Zoo stores these deltas).

Two averages a zoo supports:

- over time: the uniform average of a model's last k epoch checkpoints (like
  stochastic weight averaging over a trajectory);
- over seeds: models trained the same way from different seeds, averaged
  after aligning their hidden units to one reference (wsl.align weight
  matching); the naive unaligned average is reported next to it.

    rep = average_last_k(history, layout, dataset, k=3)   # history [M, E, P], epochs in order
    rep.table                                             # per model: final vs averaged loss/accuracy, delta
    rep = average_seeds(final_weights, layout, dataset)   # [S, P]
    rep.summary                                           # endpoints' mean accuracy vs naive vs aligned average
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset
from wsl.evaluate import evaluate

__all__ = ["uniform_average", "average_last_k", "average_seeds", "AverageReport"]


@dataclass
class AverageReport:
    """Averaged weights and what they score compared with their sources."""

    weights: torch.Tensor  # [M, P] (last-k: one per model) or [1, P] (seeds)
    table: Any  # pandas DataFrame, one row per averaged model
    summary: dict[str, Any] = field(default_factory=dict)


def uniform_average(weights: torch.Tensor) -> torch.Tensor:
    """Mean over the first axis: [k, P] -> [P], [M, k, P] -> [M, P] (float64 accumulation)."""
    if not isinstance(weights, torch.Tensor) or weights.dim() not in (2, 3) or weights.shape[-2] == 0:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise UserError(f"cannot average weights of shape {shape}", "pass [k, P] or [M, k, P] with k >= 1")
    return weights.double().mean(-2).to(weights.dtype)


def average_last_k(history: torch.Tensor, layout: ParamLayout, dataset: Dataset, k: int = 3, split: str = "test",
                   device: str = "cpu", model_ids: list[str] | None = None) -> AverageReport:
    """Average each model's last k checkpoints; compare with its final checkpoint.

    history: [M, E, P] (M models, E checkpoints in epoch order) or [E, P] for one model.
    """
    if not isinstance(history, torch.Tensor) or history.dim() not in (2, 3):
        raise UserError("history must be [M, E, P] or [E, P]", "stack each model's checkpoints in epoch order")
    h = history.unsqueeze(0) if history.dim() == 2 else history
    M, E, P = h.shape
    if not 1 <= k <= E:
        raise UserError(f"k={k} but models have {E} checkpoints", f"pick 1 <= k <= {E}")
    layout.check_flat(h.reshape(M * E, P), what="checkpoint weights")
    final = h[:, -1]
    avg = uniform_average(h[:, E - k:])
    res = evaluate(torch.cat([final, avg]), layout, dataset, split=split, device=device)
    import pandas as pd

    metric, vals = _metric(res)
    df = pd.DataFrame({
        "model": model_ids if model_ids is not None else list(range(M)),
        "loss_final": res.loss[:M].numpy(), "loss_avg": res.loss[M:].numpy(),
        f"{metric}_final": vals[:M].numpy(), f"{metric}_avg": vals[M:].numpy(),
    })
    df[f"delta_{metric}"] = df[f"{metric}_avg"] - df[f"{metric}_final"]
    df["delta_loss"] = df["loss_avg"] - df["loss_final"]
    summary = {"mode": "last-k", "k": k, "models": M, "dataset": dataset.name, "split": split,
               f"mean_{metric}_final": float(vals[:M].mean()), f"mean_{metric}_avg": float(vals[M:].mean()),
               f"mean_delta_{metric}": float(df[f"delta_{metric}"].mean()),
               "mean_delta_loss": float(df["delta_loss"].mean()),
               "improved": int((df[f"delta_{metric}"] > 0).sum())}
    return AverageReport(avg, df, summary)


def average_seeds(weights: torch.Tensor, layout: ParamLayout, dataset: Dataset, reference: int = 0,
                  split: str = "test", device: str = "cpu", align_units: bool = True,
                  model_ids: list[str] | None = None) -> AverageReport:
    """Average S models (e.g. seeds of one configuration), after aligning them to `reference`.

    Reports every endpoint, the naive average and the aligned average; the
    delta is aligned average minus the endpoints' mean.
    """
    w = layout.check_flat(weights)
    if w.dim() != 2 or w.shape[0] < 2:
        raise UserError(f"average_seeds needs [S, P] with S >= 2 models, got {tuple(w.shape)}",
                        "select at least two models of one layout")
    S = w.shape[0]
    if not 0 <= reference < S:
        raise UserError(f"reference {reference} is not one of the {S} models", f"pick 0..{S - 1}")
    naive = uniform_average(w)
    rows = [w, naive.unsqueeze(0)]
    if align_units:
        from wsl.align import align

        others = torch.cat([w[:reference], w[reference + 1:]])
        aligned = torch.cat([w[reference:reference + 1], align(w[reference], others, layout)])
        avg_aligned = uniform_average(aligned)
        rows.append(avg_aligned.unsqueeze(0))
    res = evaluate(torch.cat(rows), layout, dataset, split=split, device=device)
    metric, vals = _metric(res)
    import pandas as pd

    names = list(model_ids) if model_ids is not None else [f"model {i}" for i in range(S)]
    names += ["naive average"] + (["aligned average"] if align_units else [])
    df = pd.DataFrame({"model": names, "loss": res.loss.numpy(), metric: vals.numpy()})
    ends = vals[:S]
    best = vals[S + 1] if align_units else vals[S]
    summary = {"mode": "seeds", "models": S, "dataset": dataset.name, "split": split, "aligned": align_units,
               f"mean_{metric}_endpoints": float(ends.mean()), f"{metric}_naive_avg": float(vals[S]),
               f"delta_{metric}": float(best - ends.mean()), f"delta_{metric}_naive": float(vals[S] - ends.mean())}
    if align_units:
        summary[f"{metric}_aligned_avg"] = float(vals[S + 1])
    out = rows[-1]
    return AverageReport(out, df, summary)


def _metric(res) -> tuple[str, torch.Tensor]:
    return ("accuracy", res.accuracy) if res.task == "classification" else ("r2", res.r2)
