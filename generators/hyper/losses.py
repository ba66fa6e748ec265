"""What a hypernetwork is trained on: the tasks' own loss (fused), the zoo's checkpoints (IMLE), diversity.

    data = TaskBatches(datasets)                        # every task's train split, drawn from in one call
    x, y = data.draw(task_ids, batch_size, generator)    # [T, B, *in], [T, B]
    loss = task_losses(layout, w, x, y, k)               # [T*k]: row i = model i on its task's batch
    loss = imle_loss(w, targets, scales, k)              # zoo regression, nearest of k samples per checkpoint
    loss = repulsion(w, scales, k)                       # -mean log distance between the k samples of a task

`task_losses` is ONE `wsl.functional.population_forward` over every generated model of a
step: the k models of task t share that task's batch, each task its own batch
(shared_input=False), so T tasks x k noise draws cost one batched forward, not T*k.

Zoo regression with a noise input needs care: plain MSE from (dataset, z) to the dataset's
checkpoints teaches the network to ignore z and output their mean. `imle_loss` instead pulls,
for every checkpoint, the nearest of k generated samples (implicit maximum likelihood
estimation, Li & Malik 2018): different z's then cover different checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from store.layout import ParamLayout
from wsl.data import Dataset
from wsl.functional import population_forward


class TaskBatches:
    """Every task's train split in one tensor, with per-task offsets, for drawing [T, B] batches."""

    def __init__(self, datasets: list[Dataset]):
        xs, ys, offs, sizes = [], [], [], []
        o = 0
        for d in datasets:
            xs.append(d.x_train.to(torch.float32))
            ys.append(d.y_train)
            offs.append(o)
            sizes.append(len(d.x_train))
            o += len(d.x_train)
        self.x, self.y = torch.cat(xs), torch.cat(ys)
        self.offsets, self.sizes = torch.tensor(offs), torch.tensor(sizes)
        self.task = datasets[0].task

    def draw(self, task_ids: torch.Tensor, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.rand(len(task_ids), batch, generator=generator)
        idx = self.offsets[task_ids, None] + (r * self.sizes[task_ids, None]).long()
        return self.x[idx], self.y[idx]


def task_losses(layout: ParamLayout, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, k: int,
                task: str = "classification") -> torch.Tensor:
    """[T*k] mean loss of each generated model (rows grouped k per task) on its task's batch x [T, B, ...]."""
    xk = x.repeat_interleave(k, 0)
    yk = y.repeat_interleave(k, 0)
    out = population_forward(layout, layout.unflatten(w, allow_nonfinite=True), xk, shared_input=False)
    if task == "classification":
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yk.reshape(-1), reduction="none")
        return ce.reshape(len(w), -1).mean(1)
    return ((out - yk.reshape(out.shape).to(out.dtype)) ** 2).reshape(len(w), -1).mean(1)


def task_accuracy(layout: ParamLayout, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] accuracy of each model on its own batch (x [N, B, ...]); no gradient."""
    with torch.no_grad():
        out = population_forward(layout, layout.unflatten(w), x, shared_input=False)
        return (out.argmax(-1) == y).to(torch.float32).mean(1)


def imle_loss(w: torch.Tensor, targets: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over checkpoints of min over their k samples of the scaled squared distance (per value)."""
    p = targets.shape[1]
    d = (((w[:, :p] - targets.repeat_interleave(k, 0)) / scales) ** 2).mean(1).reshape(-1, k)
    return d.min(1).values.mean()


def repulsion(w: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
    """-mean log(scaled mean squared distance) over pairs of the k samples of each task (0 when k = 1)."""
    if k < 2:
        return w.new_zeros(())
    p = len(scales)
    v = (w[:, :p] / scales).reshape(-1, k, p)
    d = ((v[:, :, None] - v[:, None]) ** 2).mean(-1)  # [T, k, k] (not cdist: its gradient at 0 is NaN)
    off = ~torch.eye(k, dtype=torch.bool)
    return -torch.log(d[:, off] + 1e-4).mean()
