"""Global magnitude pruning of whole populations, evaluated batched.

    pruned, mask = magnitude_prune(weights, layout, sparsity=0.9)   # [N, P] each
    table = prune_sweep(weights, layout, dataset, [0.5, 0.8, 0.9])  # accuracy per model x sparsity

"Global": per model, the smallest-magnitude entries over all prunable tensors
together are zeroed (not a per-layer quota), exactly round(sparsity * Q) of
the Q prunable entries (ties broken by position), so the achieved sparsity
equals the requested one up to rounding. Prunable: weight matrices and
kernels (tensors with 2+ dims, excluding a transformer's `pos` table) unless
`include_bias=True` adds the 1-D tensors (biases, norm gains). Buffers
(BatchNorm running statistics) are never pruned: they are not weights.
"""
from __future__ import annotations

from typing import Iterable

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset
from wsl.evaluate import evaluate

__all__ = ["prunable_mask", "magnitude_prune", "prune_sweep"]


def prunable_mask(layout: ParamLayout, include_bias: bool = False) -> torch.Tensor:
    """[P] bool: which coordinates global magnitude pruning may zero."""
    m = torch.zeros(layout.num_params, dtype=torch.bool)
    for e in layout.param_entries:
        if (len(e.shape) >= 2 and e.name != "pos") or include_bias:
            m[e.offset:e.offset + e.numel] = True
    return m


def _check_sparsity(s: float) -> float:
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise UserError(f"sparsity {s!r} is not a number", "give fractions in [0, 1), e.g. 0.5,0.9") from None
    if not 0.0 <= s < 1.0:
        raise UserError(f"sparsity {s} is outside [0, 1)", "give the fraction of weights to zero, e.g. 0.9")
    return s


def magnitude_prune(weights: torch.Tensor, layout: ParamLayout, sparsity: float, include_bias: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the round(sparsity * Q) smallest |w| among each model's Q prunable entries.

    Returns (pruned weights, keep-mask), both shaped like `weights` ([N, P] or [P]).
    """
    s = _check_sparsity(sparsity)
    w = layout.check_flat(weights)
    single = w.dim() == 1
    w2 = w.unsqueeze(0) if single else w
    cols = prunable_mask(layout, include_bias).to(w.device).nonzero().squeeze(1)
    k = int(round(s * len(cols)))
    keep = torch.ones_like(w2, dtype=torch.bool)
    if k > 0:
        mags = w2[:, cols].abs()
        drop = torch.topk(mags, k, dim=1, largest=False, sorted=False).indices  # exactly k per model
        sub = torch.ones_like(mags, dtype=torch.bool)
        sub.scatter_(1, drop, False)
        keep[:, cols] = sub
    pruned = w2 * keep
    return (pruned[0], keep[0]) if single else (pruned, keep)


def prune_sweep(weights: torch.Tensor, layout: ParamLayout, dataset: Dataset, sparsities: Iterable[float],
                split: str = "test", device: str = "cpu", include_bias: bool = False,
                model_ids: list[str] | None = None):
    """Evaluate every model at every sparsity (and unpruned) in one fused call; a DataFrame.

    Columns: model, sparsity, achieved (fraction of prunable entries that are zero), loss,
    accuracy (r2 for regression), delta (vs the same model unpruned).
    """
    import pandas as pd

    levels = [_check_sparsity(s) for s in sparsities]
    if not levels:
        raise UserError("no sparsities given", "pass e.g. [0.5, 0.8, 0.9]")
    w = layout.check_flat(weights)
    w = w.unsqueeze(0) if w.dim() == 1 else w
    N = w.shape[0]
    cols = prunable_mask(layout, include_bias).to(w.device)
    stacks, achieved = [w], [torch.zeros(N)]
    for s in levels:
        p, _ = magnitude_prune(w, layout, s, include_bias)
        stacks.append(p)
        achieved.append((p[:, cols] == 0).double().mean(1).cpu())
    res = evaluate(torch.cat(stacks), layout, dataset, split=split, device=device)
    metric = "accuracy" if res.task == "classification" else "r2"
    vals = res.accuracy if metric == "accuracy" else res.r2
    ids = model_ids if model_ids is not None else list(range(N))
    rows = []
    for li, s in enumerate([0.0] + levels):
        for i in range(N):
            j = li * N + i
            rows.append({"model": ids[i], "sparsity": s, "achieved": float((w[i, cols] == 0).double().mean())
                         if li == 0 else float(achieved[li][i]), "loss": float(res.loss[j]),
                         metric: float(vals[j]), "delta": float(vals[j] - vals[i])})
    return pd.DataFrame(rows)
