"""What a generator generates for: a dataset (by name or as an object) and optional target metrics.

    Condition("digits-pair:3-5")                              # a registry name (split seed 0)
    Condition(ds)                                             # a wsl.Dataset the user built
    Condition("digits-pair:3-5", target={"test_acc": 1.0})    # G.pt style: "a model with this accuracy"

A generator embeds the dataset from the samples of its train split only, so the same
call works for a dataset it never saw. `best_by_train_loss` is the generate-then-filter
step (`sample(..., select=k)`): it looks at the train split, never the test split.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset


@dataclasses.dataclass
class Condition:
    """What to generate for: a dataset (name or object) and optionally target metric values."""

    dataset: str | Dataset
    target: dict[str, float] | None = None
    split_seed: int = 0  # split seed when `dataset` is a registry name

    @property
    def name(self) -> str:
        return self.dataset if isinstance(self.dataset, str) else self.dataset.name

    def label(self) -> str:
        """One string for the `samples.condition` column."""
        if not self.target:
            return self.name
        return self.name + "|" + ",".join(f"{k}={v:g}" for k, v in sorted(self.target.items()))


def resolve_dataset(ds: str | Dataset, split_seed: int = 0) -> Dataset:
    """A dataset object for a condition: registry names go through `zoo.load_dataset`."""
    if isinstance(ds, Dataset):
        return ds
    if not isinstance(ds, str) or not ds:
        raise UserError(f"condition {ds!r} is not a dataset name or a wsl.Dataset", "pass e.g. 'digits-pair:3-5'")
    from zoo.datasets import load_dataset

    return load_dataset(ds, seed=split_seed)


def as_condition(condition: str | Dataset | Condition, target: Mapping[str, float] | None = None) -> Condition:
    """A Condition from a name, a dataset or a Condition, with `target` merged in."""
    if isinstance(condition, Condition):
        if target:
            return dataclasses.replace(condition, target={**(condition.target or {}), **dict(target)})
        return condition
    return Condition(condition, dict(target) if target else None)


def common_task(datasets) -> tuple[str, int]:
    """(task, class count) every training condition shares; a UserError when they mix input sizes or tasks."""
    shapes = {tuple(d.input_shape) for d in datasets}
    if len({math.prod(s) for s in shapes}) != 1:
        raise UserError(f"the training conditions mix input shapes {sorted(shapes)}",
                        "fit one generator per input shape (select one dataset family)")
    ks = {(d.task, int(d.num_classes)) for d in datasets}
    if len(ks) != 1:
        raise UserError(f"the training conditions mix tasks / class counts {sorted(ks)}",
                        "fit one generator per number of classes")
    return next(iter(ks))


def check_n(n: Any) -> int:
    """n as a positive int, or a UserError."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UserError(f"number of models to generate is {n!r}", "ask for n >= 1")
    return n


def best_by_train_loss(weights: torch.Tensor, layout: ParamLayout, ds: Dataset, n: int) -> torch.Tensor:
    """The n rows of `weights` with the lowest loss on ds's train split, best first (ties: lower row first)."""
    from wsl.evaluate import evaluate

    loss = evaluate(weights, layout, ds, split="train").loss.to(torch.float64)
    loss = torch.nan_to_num(loss, nan=math.inf)
    order = torch.sort(loss, stable=True).indices[:n]
    return weights[order].contiguous()
