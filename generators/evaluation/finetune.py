"""Fine-tuning curves: test accuracy after 0, 1, 5, 25 optimizer steps, from generated weights vs random init.

A generated model is useful beyond its own accuracy if it is a good starting
point. All models of a curve train at once through
`wsl.functional.population_forward` (one batched forward/backward per step,
each model its own loss and its own Adam state): full-batch Adam on the
dataset's train split, learning rate 0.01 by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from store.layout import ParamLayout
from wsl.data import Dataset
from wsl.evaluate import evaluate
from wsl.functional import population_forward

STEPS = (0, 1, 5, 25)


def random_init(layout: ParamLayout, n: int, seed: int = 0) -> torch.Tensor:
    """[n, P]: the layout's architecture built after torch.manual_seed(seed + i) (how the zoo initialises)."""
    rows = []
    with torch.random.fork_rng(devices=[]):
        for i in range(n):
            torch.manual_seed(int(seed) + i)
            rows.append(layout.flatten(layout.build_module()))
    return torch.stack(rows)


def finetune_curve(weights: torch.Tensor, layout: ParamLayout, dataset: Dataset, steps=STEPS, lr: float = 0.01,
                   split: str = "test") -> dict[str, list[float]]:
    """{"steps": [...], "mean": [...], "median": [...]}: accuracy of the models after each step count."""
    steps = sorted({int(s) for s in steps})
    names = layout.names
    params = {k: v.detach().clone().to(torch.float32).requires_grad_(True) for k, v in layout.unflatten(weights).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    x, y = dataset.x_train.to(torch.float32), dataset.y_train
    n = len(weights)
    out = {"steps": steps, "mean": [], "median": []}
    done = 0
    for target in steps:
        while done < target:
            logits = population_forward(layout, params, x)  # [n, B, out]
            if dataset.task == "classification":
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(n), reduction="sum") / len(y)
            else:
                loss = (logits.reshape(n, len(y), -1) - y.reshape(1, len(y), -1).to(logits.dtype)).pow(2).mean((1, 2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        flat = torch.cat([params[k].detach().reshape(n, -1) for k in names], 1)
        res = evaluate(flat, layout, dataset, split=split)
        score = res.accuracy if dataset.task == "classification" else res.r2
        out["mean"].append(float(score.mean()))
        out["median"].append(float(score.median()))
    return out
