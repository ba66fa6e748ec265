"""The baselines a skeptic asks for first: what a user with a zoo and no generator gets for a new task.

    maj = majority_accuracy(ds)                          # always predicting the train split's larger class
    pool = Pool(weights, layout, tasks)                  # the generator's training checkpoints and their tasks
    w = pool.retrieval_select(ds, n)                     # the best n of the pool by loss on ds's TRAIN split
    w, task = pool.retrieval_nearest(ds)                 # every checkpoint of the nearest seen task, no selection
    other = shuffled_task("digits-pair:3-8", seen, seed)  # another task's condition, for `shuffled-condition`
    gap_closed(0.95, 0.60, 0.99)                         # (generated - majority) / (zoo - majority)

- `majority`: the accuracy on the test split of always answering the class that is most
  frequent in the train split (ties: the lower class). On imbalanced tasks (class subsets)
  this is 50-90%, which is why a raw accuracy says little and `gap closed` is reported.
- `retrieval-select`: every checkpoint of the pool (the generator's training set, i.e. the
  seen tasks' zoo models; for a seen task, its own models are left out) scored on the new
  task's train split in one fused call; the n with the lowest loss are kept (all of them when
  the pool has fewer). Compare it with the generator's `--select k` samples: both look at
  the train split only, and both pick from candidates.
- `retrieval-nearest`: the checkpoints of the seen task whose dataset embedding is nearest to
  the new task's (L2 between `components.mean_model.dataset_statistics`: per-class mean and
  std of the train inputs, a method-independent embedding), no selection. Compare it with the
  raw samples: neither looks at a loss.
- `shuffled-condition` (report.py samples it): the generator asked for another task's
  weights and scored on this one. How much accuracy comes from the conditioning at all.
- `retrieval-select+head`, `retrieval-nearest+head` (only for a generator whose sampling fits the
  last layer on the condition's train split, `head_fit`): the same lookups given that same head
  fit (for select: every pool checkpoint gets the head, then the n best by train loss are kept).
  Compare the raw / selected samples with these too: they say what the generated body adds
  beyond a lookup plus a closed-form probe.
- `random-init+head` (same condition): n freshly initialised networks of the layout (torch's
  default init, seeded) given that head fit: a random-features probe, what the head fit gives
  with no generator and no zoo at all (digits-pairs: 97.3% held-out against the zoo's 99.4%).
- `gap closed`: the fraction of the learnable gap (majority -> trained zoo) captured.

All deterministic: the pool is kept in checkpoint-id order, ties are broken by that order,
and the shuffled task is drawn by numpy's default_rng from (seed, task name).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset

TASK_KINDS = ("majority", "retrieval-select", "retrieval-nearest", "shuffled-condition")
# the retrieval baselines with the generator's sampling-time head fit (components/head_fit.py), when it has one
HEAD_KINDS = ("retrieval-select+head", "retrieval-nearest+head", "random-init+head")


def majority_class(ds: Dataset) -> int:
    """The most frequent class of the train split (ties: the lower class)."""
    counts = torch.bincount(ds.y_train.long(), minlength=int(ds.num_classes))
    return int(torch.argmax(counts))  # argmax returns the first maximum


def majority_accuracy(ds: Dataset) -> float:
    """Test accuracy of always predicting the train split's majority class (NaN for regression)."""
    if ds.task != "classification":
        return math.nan
    return float((ds.y_test.long() == majority_class(ds)).double().mean())


def gap_closed(generated: float, majority: float, zoo: float) -> float:
    """(generated - majority) / (zoo - majority); NaN when the zoo does not beat the majority class."""
    vals = (generated, majority, zoo)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals) or zoo - majority <= 1e-12:
        return math.nan
    return (generated - majority) / (zoo - majority)


def dataset_embedding(ds: Dataset) -> torch.Tensor:
    """[F] method-independent dataset embedding: per-class mean and std of the train inputs."""
    from generators.components.mean_model import dataset_statistics

    k = int(ds.num_classes) if ds.task == "classification" else 0
    return dataset_statistics(ds.x_train, ds.y_train, k)


def shuffled_task(task: str, candidates: Sequence[str], seed: int = 0) -> str:
    """Another task than `task`, drawn from `candidates` by default_rng(seed, hash of the task name)."""
    others = sorted(set(candidates) - {task})
    if not others:
        raise UserError(f"no other task than {task!r} to take a shuffled condition from",
                        "fit the generator on at least two tasks")
    h = int(hashlib.sha256(task.encode()).hexdigest()[:8], 16)
    return others[int(np.random.default_rng([int(seed), h]).integers(len(others)))]


class Pool:
    """Checkpoints a user already has (weights as stored, each with its task): what retrieval picks from."""

    def __init__(self, weights: torch.Tensor, layout: ParamLayout, tasks: Sequence[str]):
        if len(weights) != len(tasks):
            raise UserError(f"{len(weights)} pool checkpoints but {len(tasks)} task names", "give one task per row")
        self.weights = weights.to(torch.float32)
        self.layout = layout
        self.tasks = [str(t) for t in tasks]
        self._embeddings: dict[str, torch.Tensor] = {}
        self._logits: dict[tuple, torch.Tensor] = {}

    def _rows(self, exclude: str | None) -> torch.Tensor:
        keep = [i for i, t in enumerate(self.tasks) if t != exclude]
        if not keep:
            raise UserError(f"the pool has no checkpoint of a task other than {exclude!r}",
                            "fit the generator on more than one task")
        return torch.tensor(keep, dtype=torch.long)

    def train_losses(self, ds: Dataset, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows)] mean cross-entropy of pool rows on ds's train split.

        Tasks of one family often share their inputs (every digits-subset task has the same
        images, only the labels differ): the pool's logits on an input set are computed once
        (one fused forward) and kept, so scoring a further task of that family costs only the
        cross-entropy with its labels.
        """
        from wsl.evaluate import evaluate

        if ds.task != "classification":
            return evaluate(self.weights[rows], self.layout, ds, split="train").loss.to(torch.float64)
        x = ds.x_train.reshape(len(ds.x_train), -1).to(torch.float32).contiguous()
        key = (tuple(x.shape), hashlib.sha256(x.numpy().tobytes()).hexdigest())
        if key not in self._logits:
            self._logits[key] = _pool_logits(self.weights, self.layout, ds.x_train)
        logits = self._logits[key][rows]  # [R, n, C]
        y = ds.y_train.long()
        logp = torch.log_softmax(logits.to(torch.float64), -1)
        return -logp.gather(2, y.view(1, -1, 1).expand(len(rows), -1, 1)).squeeze(2).mean(1)

    def retrieval_select(self, ds: Dataset, n: int, exclude: str | None = None, transform=None) -> torch.Tensor:
        """The n pool checkpoints (all, when fewer) with the lowest train-split loss on ds, best first.

        transform(weights [R, P]) -> [R, P]: applied to every candidate before scoring (the head fit).
        """
        rows = self._rows(exclude)
        if transform is None:
            cand = self.weights[rows]
            loss = self.train_losses(ds, rows)
        else:
            from wsl.evaluate import evaluate

            cand = transform(self.weights[rows])
            loss = evaluate(cand, self.layout, ds, split="train").loss.to(torch.float64)
        order = torch.sort(torch.nan_to_num(loss, nan=math.inf), stable=True).indices[:n]
        return cand[order].contiguous()

    def embedding(self, task: str) -> torch.Tensor:
        if task not in self._embeddings:
            from generators.conditions import resolve_dataset

            self._embeddings[task] = dataset_embedding(resolve_dataset(task))
        return self._embeddings[task]

    def nearest_task(self, ds: Dataset, exclude: str | None = None) -> str:
        """The pool task (not `exclude`) whose dataset embedding is nearest to ds's (ties: first by name)."""
        target = dataset_embedding(ds)
        best = None
        for t in sorted(set(self.tasks) - {exclude}):
            d = float((self.embedding(t) - target).norm())
            if best is None or d < best[0]:
                best = (d, t)
        if best is None:
            raise UserError(f"the pool has no task other than {exclude!r}", "fit the generator on more than one task")
        return best[1]

    def retrieval_nearest(self, ds: Dataset, exclude: str | None = None) -> tuple[torch.Tensor, str]:
        """Every pool checkpoint of the nearest task, and that task's name."""
        task = self.nearest_task(ds, exclude)
        rows = torch.tensor([i for i, t in enumerate(self.tasks) if t == task], dtype=torch.long)
        return self.weights[rows].contiguous(), task


def _pool_logits(weights: torch.Tensor, layout: ParamLayout, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[N, n, C] logits of every pool model on inputs x, in chunks of models (fused forward)."""
    from wsl.functional import population_forward, prepare_params

    out = []
    with torch.inference_mode():
        for i in range(0, len(weights), chunk):
            p = prepare_params(layout, layout.unflatten(weights[i:i + chunk]))
            out.append(population_forward(layout, p, x.to(torch.float32)).to(torch.float32))
    return torch.cat(out)
