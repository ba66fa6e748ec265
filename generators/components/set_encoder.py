"""Dataset embedding: a set encoder over labelled samples (x, y) of a dataset.

D2NWG conditions its weight diffusion on such an embedding, so that a dataset
the generator never saw still gets a meaningful condition. Ours is DeepSets
with one mean per class, in class order:

    h_i = [x_i, phi(x_i)]                  per sample: the flattened input and an MLP's features of it
    m_c = mean of h_i over samples with y_i = c      one vector per class
    e   = rho(m) + L m,  m = [m_0, ..., m_{K-1}]     the embedding (an MLP plus a linear path)

Why per-class means in class order rather than a symmetric pool over (x, y):
output unit c of the generated classifier answers "is it class c", so the
weights depend on which samples carry which label; keeping the class order
lets the embedding say exactly that, and a class mean is the statistic a
linear head is built from. The linear paths (raw inputs kept, `L`) matter
for unseen datasets: on the digits-pairs zoo a ridge regression from raw class
means to weights already reaches ~97% on held-out pairs, so the embedding must
be able to carry that structure without squeezing it through an MLP fit on 35
points. For a binary pair task (A vs B) the embedding is a
function of (mean phi of A's samples, mean phi of B's samples), which is what
lets a pair the generator never saw reuse what it learned about A and B in
other pairs.

Regression datasets (num_classes = 0) are embedded with one mean of
phi([x, y]) over all samples.

A batch of sets is given as concatenated samples plus a set index, so a whole
training batch embeds in one call.
"""
from __future__ import annotations

import torch
from torch import nn

from store.errors import UserError


class SetEncoder(nn.Module):
    """Embeds labelled sample sets: `forward(x, y, set_index, n_sets) -> [n_sets, out_features]`."""

    def __init__(self, in_features: int, num_classes: int, target_dim: int = 1, hidden: int = 64,
                 out_features: int = 64):
        super().__init__()
        self.in_features, self.num_classes, self.target_dim = int(in_features), int(num_classes), int(target_dim)
        self.hidden, self.out_features = int(hidden), int(out_features)
        phi_in = self.in_features + (0 if self.num_classes else self.target_dim)
        self.phi = nn.Sequential(nn.Linear(phi_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.feat_dim = phi_in + hidden  # raw inputs are kept next to phi's features (a linear path)
        slots = max(1, self.num_classes)
        self.rho = nn.Sequential(nn.Linear(slots * self.feat_dim, out_features), nn.SiLU(),
                                 nn.Linear(out_features, out_features))
        self.rho_linear = nn.Linear(slots * self.feat_dim, out_features)

    def check(self, x: torch.Tensor, y: torch.Tensor, what: str = "dataset") -> None:
        """Raise a UserError when samples do not fit this encoder (input size, labels)."""
        feats = x[0].numel() if len(x) else self.in_features
        if feats != self.in_features:
            raise UserError(f"{what} has inputs of shape {list(x.shape[1:])} ({feats} values), the generator was fit "
                            f"on inputs of {self.in_features} values",
                            "condition on a dataset with the same input shape as the zoo the generator was fit on")
        if self.num_classes:
            if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
                raise UserError(f"{what} has targets of dtype {y.dtype} and shape {list(y.shape)}",
                                "condition a classification generator on a classification dataset")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise UserError(f"{what} has labels outside 0..{self.num_classes - 1}",
                                f"condition on a dataset with {self.num_classes} classes, like the zoo's")

    def forward(self, x: torch.Tensor, y: torch.Tensor, set_index: torch.Tensor | None = None,
                n_sets: int = 1) -> torch.Tensor:
        x = x.reshape(len(x), -1).to(torch.float32)
        if set_index is None:
            set_index = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.num_classes:
            h = torch.cat([x, self.phi(x)], 1)
            slot = set_index * self.num_classes + y.long()
            n_slots = n_sets * self.num_classes
        else:
            xy = torch.cat([x, y.reshape(len(y), -1).to(torch.float32)], 1)
            h = torch.cat([xy, self.phi(xy)], 1)
            slot, n_slots = set_index, n_sets
        sums = torch.zeros(n_slots, self.feat_dim, dtype=h.dtype, device=h.device).index_add_(0, slot, h)
        counts = torch.zeros(n_slots, dtype=h.dtype, device=h.device).index_add_(0, slot, torch.ones_like(h[:, 0]))
        means = sums / counts.clamp_min(1.0)[:, None]  # a class without samples embeds as a zero mean
        flat = means.reshape(n_sets, -1)
        return self.rho(flat) + self.rho_linear(flat)


class ContextTable:
    """Every training dataset's train samples, indexed by class, to draw a fresh context per step.

    `draw(rows, m, generator)` picks m samples per class (with replacement) for each
    distinct dataset in `rows` and returns what `SetEncoder.forward` takes for one
    batched call: (x, y, set_index, n_sets) plus the inverse map from rows to sets.
    Drawing a new random subset at every step keeps the encoder from memorizing one
    fixed context per dataset.
    """

    def __init__(self, datasets, num_classes: int):
        k = int(num_classes)
        xs, ys, offs = [], [], [0]
        for d in datasets:
            xs.append(d.x_train.reshape(len(d.x_train), -1).to(torch.float32))
            ys.append(d.y_train)
            offs.append(offs[-1] + len(d.x_train))
        self.x, self.y = torch.cat(xs), torch.cat(ys)
        slots = max(1, k)
        per = [[(torch.nonzero(ys[i] == c).flatten() + offs[i]) if k else (torch.arange(len(ys[i])) + offs[i])
                for c in range(slots)] for i in range(len(datasets))]
        max_n = max(1, max(len(p) for row in per for p in row))
        self.table = torch.zeros(len(datasets), slots, max_n, dtype=torch.long)
        self.counts = torch.zeros(len(datasets), slots, dtype=torch.long)
        for i, row in enumerate(per):
            for c, p in enumerate(row):
                self.table[i, c, :len(p)] = p
                self.counts[i, c] = len(p)

    def draw(self, rows: torch.Tensor, m: int, generator: torch.Generator):
        """(x, y, set_index, n_sets, uniq, inv): m samples per class for each distinct dataset index in `rows`."""
        uniq, inv = torch.unique(rows, return_inverse=True)
        cnt = self.counts[uniq]  # [U, K]
        r = (torch.rand(len(uniq), cnt.shape[1], m, generator=generator) * cnt[:, :, None]).long()
        ids = torch.gather(self.table[uniq], 2, r).reshape(-1)
        set_index = torch.arange(len(uniq)).repeat_interleave(cnt.shape[1] * m)
        return self.x[ids], self.y[ids], set_index, len(uniq), uniq, inv


def embed_dataset(encoder: SetEncoder, dataset, per_class: int) -> torch.Tensor:
    """The embedding [out_features] of a dataset from (at most `per_class` per class of) its train split.

    Deterministic: the first `per_class` samples of each class, so a seed-free call
    gives the same embedding every time.
    """
    x, y = dataset.x_train, dataset.y_train
    encoder.check(x, y, f"dataset {dataset.name!r}")
    k = encoder.num_classes
    if k:
        keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(k)])
    else:
        keep = torch.arange(min(len(x), per_class))
    if len(keep) == 0:
        raise UserError(f"dataset {dataset.name!r} has no training samples", "give a dataset with a non-empty train split")
    return encoder(x[keep].reshape(len(keep), -1), y[keep])[0]
