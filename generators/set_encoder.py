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


def context_samples(x: torch.Tensor, y: torch.Tensor, num_classes: int, max_per_class: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subset of at most `max_per_class` samples per class (all samples for regression, capped)."""
    if len(x) == 0:
        raise UserError("the conditioning dataset has no training samples", "give a dataset with a non-empty train split")
    if not num_classes:
        idx = torch.randperm(len(x), generator=generator)[:max_per_class * 4]
        return x[idx], y[idx]
    keep = []
    order = torch.randperm(len(x), generator=generator)
    ys = y[order]
    for c in range(num_classes):
        keep.append(order[ys == c][:max_per_class])
    idx = torch.cat(keep)
    return x[idx], y[idx]

