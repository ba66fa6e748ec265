"""The population trainer: a cohort of models trained as one batched computation.

A cohort is a set of models that can be stacked: the same layout (so one
[M, P] parameter tensor holds them all), batch size, steps per epoch, epochs,
optimizer family and schedule. Everything else may differ per model: learning
rate, momentum, betas, weight decay, seed, even the dataset (the binary
class-pair tasks of one base dataset train in one cohort).

Each step runs `wsl.functional.population_forward` (hand-batched MLP / CNN /
ResNet paths, vmap fallback) in train mode on a per-model batch [M, B, *in],
sums the models' mean losses, takes gradients with autograd, and updates every
model with `zoo.optim.PopulationOptimizer`. The optimizer sees only the
parameters (the first `layout.num_trainable` columns of the [M, P] tensor);
BatchNorm's running statistics (the buffer columns after them) are replaced by
the ones the train-mode forward returns, each model's from its own batch, as
nn.BatchNorm does. Checkpoint metrics are eval mode (running statistics). Each model draws its data order and dropout
masks from its own seed (and the epoch), never from the cohort: so a model
trained in a cohort matches the same model trained alone, and a resumed run
needs nothing but the stored weights, optimizer buffers and step count.

A model whose loss turns NaN/inf is dropped from the cohort at the end of
that epoch (reported through `on_diverged`); the others keep training.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset
from wsl.functional import bernoulli_masks, population_forward
from zoo.architectures import build
from zoo.datasets import load_dataset
from zoo.optim import BUFFERS, PopulationOptimizer, lr_factor

EVAL_CHUNK_FLOATS = 1 << 24  # activations per evaluation chunk (~64 MB of float32)


# ----- per-model randomness ------------------------------------------------------------
def derive_seed(seed: int, epoch: int, tag: str) -> int:
    """A 63-bit seed for (model seed, epoch, purpose): independent streams, no carried RNG state."""
    h = hashlib.sha256(f"{int(seed)}/{int(epoch)}/{tag}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def data_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which a model with `seed` visits n training samples in `epoch` (1-based)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, "data"))
    return torch.randperm(n, generator=g)


def dropout_generators(seeds: Sequence[int], epoch: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per model for its dropout masks in `epoch`."""
    return [torch.Generator(device=device).manual_seed(derive_seed(s, epoch, "dropout")) for s in seeds]


def layout_for(arch: Mapping[str, Any]) -> ParamLayout:
    """The layout of a full architecture config (as stored in `models.arch_config`)."""
    module = build(dict(arch))
    return ParamLayout.from_module(module, module.arch_config)


def init_params(arch: Mapping[str, Any], seeds: Sequence[int]) -> torch.Tensor:
    """[M, P] initial weights: model i is the architecture built right after torch.manual_seed(seeds[i]).

    Only the seed matters (not the learning rate or batch size), so models that
    differ only in training hyperparameters start from the same point.
    """
    layout = layout_for(arch)
    out = torch.empty(len(seeds), layout.num_params)
    with torch.random.fork_rng(devices=[]):
        for i, s in enumerate(seeds):
            torch.manual_seed(int(s))
            out[i] = layout.flatten(build(dict(arch)))
    return out


# ----- cohorts ----------------------------------------------------------------------------
_HAS_BUFFERS: dict[str, bool] = {}


def _has_buffers(row: Mapping[str, Any]) -> bool:
    lid = row["layout_id"]
    if lid not in _HAS_BUFFERS:
        _HAS_BUFFERS[lid] = layout_for(json.loads(row["arch_config"])).num_buffers > 0
    return _HAS_BUFFERS[lid]


def cohort_key(row: Mapping[str, Any], start_epoch: int = 0) -> tuple:
    """Models with equal keys can train as one cohort.

    Models with BatchNorm also need equal training-set sizes: a cohort pads smaller datasets' last
    batch, which a masked loss ignores but batch statistics would not.
    """
    hp = json.loads(row["hparams"])
    key = (row["layout_id"], int(row["batch_size"]), int(row["steps_per_epoch"]), int(row["epochs"]),
           row["optimizer"], json.dumps(hp["schedule"], sort_keys=True), row["task"], row["checkpoint_epochs"],
           int(start_epoch))
    return key + (int(row["n_train"]),) if _has_buffers(row) else key


def group_cohorts(rows: Sequence[Mapping[str, Any]], start_epochs: Mapping[str, int] | None = None,
                  max_size: int = 256) -> list[list[dict]]:
    """Split model rows into cohorts (same cohort_key), each at most max_size models, in a stable order."""
    start_epochs = start_epochs or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(cohort_key(r, start_epochs.get(r["model_id"], 0)), []).append(dict(r))
    out = []
    for members in groups.values():
        k = math.ceil(len(members) / max_size)
        size = math.ceil(len(members) / k)  # even chunks: 300 models at max 256 -> 150 + 150
        out.extend(members[i:i + size] for i in range(0, len(members), size))
    return out


@dataclass
class ResumeState:
    """Where a cohort continues: after `epoch` epochs, `step` optimizer updates."""

    epoch: int
    params: torch.Tensor  # [M, P]
    opt_state: torch.Tensor  # [M, K * P]
    step: int


@dataclass
class Checkpoint:
    """What a cohort hands out at a checkpoint epoch (tensors on the CPU, rows in `model_ids` order)."""

    epoch: int
    step: int
    model_ids: list[str]
    params: torch.Tensor  # [m, P]
    opt_state: torch.Tensor  # [m, K * P]
    metrics: dict[str, np.ndarray]  # train_loss, train_acc, test_loss, test_acc: [m] (acc NaN for regression)


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    models: int  # models still training
    samples: int  # training samples processed this epoch, summed over models
    seconds: float


@dataclass
class CohortResult:
    status: dict[str, str] = field(default_factory=dict)  # model_id -> done | diverged
    diverged_epoch: dict[str, int] = field(default_factory=dict)
    final: Checkpoint | None = None


class _Data:
    """The cohort's training and test data on the device, shared or one dataset per model."""

    def __init__(self, datasets: list[Dataset], device: torch.device):
        names = [d.dataset_id for d in datasets]
        uniq = list(dict.fromkeys(names))
        self.shared = len(uniq) == 1
        by_id = {d.dataset_id: d for d in datasets}
        self.task = datasets[0].task
        self.n_train = torch.tensor([len(d.x_train) for d in datasets])
        self.n_test = torch.tensor([len(d.x_test) for d in datasets])
        if self.shared:
            d = datasets[0].to(device)
            self.x_train, self.y_train, self.x_test, self.y_test = d.x_train, d.y_train, d.x_test, d.y_test
            self.index = None
        else:  # stack the distinct datasets, padded to the largest: [D, n_max, ...]
            ds = [by_id[i] for i in uniq]
            self.x_train, self.y_train = _pad_stack([d.x_train for d in ds]), _pad_stack([d.y_train for d in ds])
            self.x_test, self.y_test = _pad_stack([d.x_test for d in ds]), _pad_stack([d.y_test for d in ds])
            self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)
            self.x_test, self.y_test = self.x_test.to(device), self.y_test.to(device)
            self.index = torch.tensor([uniq.index(i) for i in names], device=device)

    def select(self, keep: torch.Tensor) -> None:
        self.n_train, self.n_test = self.n_train[keep.cpu()], self.n_test[keep.cpu()]
        if self.index is not None:
            self.index = self.index[keep.to(self.index.device)]

    def batch(self, idx: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """idx [M, b] sample indices (each model into its own dataset) -> x [M, b, *in], y [M, b, ...]."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if self.index is None:
            return x[idx], y[idx]
        return x[self.index[:, None], idx], y[self.index[:, None], idx]


def _pad_stack(ts: list[torch.Tensor]) -> torch.Tensor:
    n = max(len(t) for t in ts)
    out = ts[0].new_zeros((len(ts), n, *ts[0].shape[1:]))
    for i, t in enumerate(ts):
        out[i, :len(t)] = t
    return out


def _per_model_loss(out: torch.Tensor, y: torch.Tensor, task: str, mask: torch.Tensor | None) -> torch.Tensor:
    """out [M, b, C], y [M, b] (or [M, b, d]) -> [M] mean loss of each model over its valid samples."""
    m, b = out.shape[0], out.shape[1]
    if task == "classification":
        l = F.cross_entropy(out.reshape(m * b, -1), y.reshape(-1), reduction="none").view(m, b)
    else:
        l = F.mse_loss(out, y.reshape(out.shape), reduction="none").reshape(m, b, -1).mean(2)
    if mask is None:
        return l.mean(1)
    return (l * mask).sum(1) / mask.sum(1)


class CohortTrainer:
    """Train one cohort of model rows (from `zoo.expand`) as one batched computation.

    rows: the cohort's model rows (same `cohort_key`). start: a ResumeState to
    continue from, else the models start from their seeds' initialisation.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu",
                 start: ResumeState | None = None):
        if not rows:
            raise UserError("a cohort needs at least one model", "pass model rows from zoo.expand")
        keys = {cohort_key(r) for r in rows}
        if len(keys) != 1:
            raise UserError(f"these {len(rows)} models cannot train as one cohort ({len(keys)} different cohort keys)",
                            "group them with zoo.population.group_cohorts")
        self.rows = [dict(r) for r in rows]
        self.device = torch.device(device)
        r0 = self.rows[0]
        self.arch = json.loads(r0["arch_config"])
        self.layout = layout_for(self.arch)
        if self.layout.layout_id != r0["layout_id"]:
            raise UserError(f"architecture config of model {r0['model_id']} gives layout {self.layout.layout_id}, "
                            f"the row says {r0['layout_id']}", "re-expand the spec with this version of wsl-zoo")
        hp = json.loads(r0["hparams"])
        self.schedule = hp["schedule"]
        self.kind = r0["optimizer"]
        self.batch_size = int(r0["batch_size"])
        self.epochs = int(r0["epochs"])
        self.steps_per_epoch = int(r0["steps_per_epoch"])
        self.total_steps = self.epochs * self.steps_per_epoch
        self.checkpoint_epochs = set(json.loads(r0["checkpoint_epochs"]))
        self.dropout = float(self.arch.get("dropout", 0.0) or 0.0)
        self.model_ids = [r["model_id"] for r in self.rows]
        self.seeds = [int(r["seed"]) for r in self.rows]
        datasets = [load_dataset(r["dataset"], int(r.get("data_seed", 0) or 0)) for r in self.rows]
        for r, d in zip(self.rows, datasets):
            if d.dataset_id != r["dataset_id"]:
                raise UserError(f"dataset {r['dataset']!r} has id {d.dataset_id} here, the model row says {r['dataset_id']}",
                                "the dataset changed since the spec was expanded; use a new zoo name")
        self.data = _Data(datasets, self.device)
        self.ragged = bool((self.data.n_train != self.data.n_train[0]).any())
        m = len(self.rows)
        opt_kw = {k: [r.get(k) if r.get(k) is not None else None for r in self.rows]
                  for k in ("momentum", "weight_decay", "beta1", "beta2", "eps")}
        opt_kw = {k: v for k, v in opt_kw.items() if all(x is not None for x in v)}
        self.opt = PopulationOptimizer(self.kind, [float(r["lr"]) for r in self.rows], self.layout.num_trainable,
                                       device=self.device, **opt_kw)
        self.fresh = start is None
        if start is None:
            self.epoch = 0
            self.params = init_params(self.arch, self.seeds).to(self.device)
        else:
            if tuple(start.params.shape) != (m, self.layout.num_params):
                raise UserError(f"resume weights have shape {tuple(start.params.shape)}, expected {(m, self.layout.num_params)}",
                                "resume a cohort from its own checkpoints")
            self.epoch = int(start.epoch)
            self.params = start.params.to(self.device, torch.float32).clone()
            self.opt.load_state_vector(start.opt_state.to(self.device, torch.float32), start.step)
        self.alive = torch.ones(m, dtype=torch.bool, device=self.device)
        self._entries = [(e.name, e.offset, e.numel, e.shape, e.buffer) for e in self.layout.entries]

    # ----- the pieces -----------------------------------------------------------------
    def _views(self, flat: torch.Tensor, requires_grad: bool) -> dict[str, torch.Tensor]:
        """name -> [M, *shape] views of the flat tensor; parameters as leaves (grads come back per tensor, no
        full-size slices), buffers as plain views."""
        m = flat.shape[0]
        out = {}
        for name, off, n, shape, buffer in self._entries:
            v = flat[:, off:off + n].view(m, *shape)
            out[name] = v.requires_grad_() if requires_grad and not buffer else v
        return out

    def _epoch_indices(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[M, S*B] sample indices of every step of the epoch (and a validity mask when datasets differ in size)."""
        n = self.data.n_train.tolist()
        perms = [data_order(s, epoch, k) for s, k in zip(self.seeds, n)]
        if not self.ragged:
            return torch.stack(perms).to(self.device), None
        width = self.steps_per_epoch * self.batch_size
        idx = torch.zeros(len(perms), width, dtype=torch.int64)
        mask = torch.zeros(len(perms), width)
        for i, p in enumerate(perms):
            idx[i, :len(p)] = p
            mask[i, :len(p)] = 1.0
        return idx.to(self.device), mask.to(self.device)

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> int:
        """Train every model one epoch (epoch is 1-based: it picks the data order); returns samples seen.

        max_steps stops early (benchmarks time a fixed number of steps)."""
        idx, mask = self._epoch_indices(epoch)
        masks = None
        if self.dropout > 0:
            masks = bernoulli_masks(self.dropout, dropout_generators(self.seeds, epoch, self.device), self.device)
        B = self.batch_size
        steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        for s in range(steps):
            ib = idx[:, s * B:(s + 1) * B]
            # only the last step can be partial, and only when datasets differ in size
            mb = mask[:, s * B:(s + 1) * B] if mask is not None and s == self.steps_per_epoch - 1 else None
            xb, yb = self.data.batch(ib)
            params = self._views(self.params, True)
            out, buffers = population_forward(self.layout, params, xb, shared_input=False, train=True,
                                              dropout_masks=masks, return_buffers=True)
            loss = _per_model_loss(out, yb, self.data.task, mb)
            self.alive &= torch.isfinite(loss.detach())
            grads = torch.autograd.grad(loss.sum(), [params[n] for n in self.layout.trainable_names])  # layout order
            T = self.layout.num_trainable
            self.opt.step(self.params[:, :T], grads, lr_factor(self.schedule, self.opt.step_count, self.total_steps))
            if buffers:  # BatchNorm: each model's running statistics after its own batch
                with torch.no_grad():
                    self.params[:, T:] = torch.cat([buffers[n].reshape(self.params.shape[0], -1)
                                                    for n in self.layout.buffer_names], 1)
        if steps < self.steps_per_epoch:
            return int(idx[:, :steps * B].numel())
        return int(self.data.n_train.sum())

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy of every model on a whole split ([M] each; accuracy NaN for regression)."""
        m = self.params.shape[0]
        params = self._views(self.params, False)
        n = self.data.n_test if split == "test" else self.data.n_train
        n_max = int(n.max())
        chunk = max(16, EVAL_CHUNK_FLOATS // max(m * self._activations_per_sample(), 1))
        loss_sum = torch.zeros(m, dtype=torch.float64, device=self.device)
        correct = torch.zeros(m, dtype=torch.float64, device=self.device)
        x_all, y_all = (self.data.x_train, self.data.y_train) if split == "train" else (self.data.x_test, self.data.y_test)
        for a in range(0, n_max, chunk):
            b = min(n_max, a + chunk)
            if self.data.index is None:
                out = population_forward(self.layout, params, x_all[a:b], shared_input=True)
                y = y_all[a:b].unsqueeze(0).expand(m, *y_all[a:b].shape)
                valid = None
            else:
                ar = torch.arange(a, b, device=self.device)
                x, y = self.data.batch(ar.unsqueeze(0).expand(m, -1), split)
                out = population_forward(self.layout, params, x, shared_input=False)
                valid = (ar.unsqueeze(0) < n.to(self.device).unsqueeze(1)).to(out.dtype)
            if self.data.task == "classification":
                l = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(m, -1)
                c = (out.argmax(-1) == y).to(l.dtype)
            else:
                l = F.mse_loss(out, y.reshape(out.shape), reduction="none").reshape(m, out.shape[1], -1).mean(2)
                c = torch.zeros_like(l)
            if valid is not None:
                l, c = l * valid, c * valid
            loss_sum += l.sum(1, dtype=torch.float64)
            correct += c.sum(1, dtype=torch.float64)
        nn_ = n.to(torch.float64).numpy()
        loss = loss_sum.cpu().numpy() / nn_
        acc = correct.cpu().numpy() / nn_ if self.data.task == "classification" else np.full(m, np.nan)
        return loss, acc

    def _activations_per_sample(self) -> int:
        """Largest intermediate activation of one model on one sample (sizes the evaluation chunks)."""
        if not hasattr(self, "_act_size"):
            module = build(dict(self.arch)).eval()
            sizes = [1]
            hooks = [mod.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()) if torch.is_tensor(o) else None)
                     for mod in module.modules()]
            with torch.no_grad():
                one = self.data.x_train[:1] if self.data.index is None else self.data.x_train[0, :1]
                module(one.cpu())
            for h in hooks:
                h.remove()
            self._act_size = max(sizes)
        return self._act_size

    def _checkpoint(self, epoch: int) -> Checkpoint:
        train_loss, train_acc = self.evaluate("train")
        test_loss, test_acc = self.evaluate("test")
        return Checkpoint(epoch=epoch, step=self.opt.step_count, model_ids=list(self.model_ids),
                          params=self.params.detach().cpu().clone(), opt_state=self.opt.state_vector().cpu(),
                          metrics={"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                                   "test_acc": test_acc})

    def _drop(self, keep: torch.Tensor) -> None:
        """Keep only models `keep` (indices) in every per-model structure."""
        keep_list = keep.tolist()
        self.params = self.params.index_select(0, keep.to(self.device))
        self.opt.select(keep)
        self.data.select(keep)
        self.alive = self.alive.index_select(0, keep.to(self.device))
        self.model_ids = [self.model_ids[i] for i in keep_list]
        self.seeds = [self.seeds[i] for i in keep_list]
        self.rows = [self.rows[i] for i in keep_list]

    def _check_divergence(self, epoch: int, result: CohortResult, on_diverged) -> None:
        finite = self.alive & torch.isfinite(self.params).all(1)
        if bool(finite.all()):
            return
        bad = (~finite).nonzero().flatten().cpu()
        ids = [self.model_ids[i] for i in bad.tolist()]
        for mid in ids:
            result.status[mid] = "diverged"
            result.diverged_epoch[mid] = epoch
        if on_diverged is not None:
            on_diverged(ids, epoch)
        self._drop(finite.nonzero().flatten().cpu())

    # ----- the loop -------------------------------------------------------------------------
    def run(self, on_checkpoint: Callable[[Checkpoint], None] | None = None,
            on_diverged: Callable[[list[str], int], None] | None = None,
            on_epoch: Callable[[EpochReport], None] | None = None) -> CohortResult:
        """Train to the last epoch; calls on_checkpoint at every checkpoint epoch (epoch 0 included when starting fresh)."""
        result = CohortResult()
        if self.fresh and 0 in self.checkpoint_epochs:
            self._checkpoint_or_diverge(0, result, on_checkpoint, on_diverged)
        for epoch in range(self.epoch + 1, self.epochs + 1):
            if not self.model_ids:
                break
            t0 = time.perf_counter()
            samples = self.train_epoch(epoch)
            self.epoch = epoch
            self._check_divergence(epoch, result, on_diverged)
            if self.model_ids and (epoch in self.checkpoint_epochs or epoch == self.epochs):
                self._checkpoint_or_diverge(epoch, result, on_checkpoint, on_diverged)
            if on_epoch is not None:
                on_epoch(EpochReport(epoch, self.epochs, len(self.model_ids), samples, time.perf_counter() - t0))
        for mid in self.model_ids:
            result.status[mid] = "done"
        return result

    def _checkpoint_or_diverge(self, epoch, result, on_checkpoint, on_diverged) -> None:
        ck = self._checkpoint(epoch)
        bad = ~np.isfinite(ck.metrics["train_loss"]) | ~np.isfinite(ck.metrics["test_loss"])
        if bad.any():  # finite weights whose loss overflows: diverged as well
            self.alive &= torch.as_tensor(~bad, device=self.device)
            self._check_divergence(epoch, result, on_diverged)
            ck = self._checkpoint(epoch) if self.model_ids else None
        if ck is not None:
            result.final = ck
            if on_checkpoint is not None:
                on_checkpoint(ck)


def train_cohort(rows: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu",
                 start: ResumeState | None = None, **callbacks) -> CohortResult:
    """Convenience: CohortTrainer(rows, device, start).run(**callbacks)."""
    return CohortTrainer(rows, device, start).run(**callbacks)


__all__ = ["CohortTrainer", "train_cohort", "group_cohorts", "cohort_key", "init_params", "data_order",
           "dropout_generators", "derive_seed", "layout_for", "ResumeState", "Checkpoint", "EpochReport",
           "CohortResult", "BUFFERS"]
