"""The condition vector a generator is steered by: dataset embedding + target metric + init group.

    cond = Conditioner(in_features, num_classes, target_dim, n_metrics, set_hidden, cond_dim, latent_dim, n_groups)
    c = cond.combine(embedding, drop_dataset, metric, drop_metric, group)     # [B, cond_dim]

Each part can be dropped (replaced by a learned null vector) per row, which is what
classifier-free guidance trains on and what "no target given" means at sampling time.
`align` maps an embedding to the mean latent of the dataset's models (D2NWG aligns its
dataset encoder to the weights); a method that has no latent can leave it unused.
"""
from __future__ import annotations

import torch
from torch import nn

from generators.components.set_encoder import SetEncoder


class Conditioner(nn.Module):
    """Condition vector = set-encoder embedding of the dataset (+ target metric, + init group); learned nulls for dropping."""

    def __init__(self, in_features: int, num_classes: int, target_dim: int, n_metrics: int, set_hidden: int,
                 cond_dim: int, latent_dim: int, n_groups: int = 1):
        super().__init__()
        self.group_emb = nn.Embedding(n_groups, cond_dim) if n_groups > 1 else None
        if self.group_emb is not None:
            nn.init.zeros_(self.group_emb.weight)
        self.set_encoder = SetEncoder(in_features, num_classes, target_dim, set_hidden, cond_dim)
        self.null_dataset = nn.Parameter(torch.zeros(cond_dim))
        self.align = nn.Linear(cond_dim, latent_dim)  # embedding -> mean latent of the dataset's models
        self.n_metrics = int(n_metrics)
        if n_metrics:
            self.metric_mlp = nn.Sequential(nn.Linear(n_metrics, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
            self.null_metric = nn.Parameter(torch.zeros(cond_dim))
            self.register_buffer("metric_mean", torch.zeros(n_metrics))
            self.register_buffer("metric_std", torch.ones(n_metrics))

    def combine(self, ds_emb: torch.Tensor, drop_ds: torch.Tensor, metric: torch.Tensor | None,
                drop_metric: torch.Tensor | None, group: torch.Tensor | None = None) -> torch.Tensor:
        c = torch.where(drop_ds[:, None], self.null_dataset.expand_as(ds_emb), ds_emb)
        if self.group_emb is not None and group is not None:
            c = c + self.group_emb(group)
        if self.n_metrics:
            if metric is None:
                m = self.null_metric.expand_as(c)
            else:
                m = self.metric_mlp((metric - self.metric_mean) / self.metric_std)
                m = torch.where(drop_metric[:, None], self.null_metric.expand_as(m), m)
            c = c + m
        return c
