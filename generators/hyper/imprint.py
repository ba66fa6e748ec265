"""Imprinted output layer: the generated network's last layer from its own class-mean features of the task's samples.

    imp = Imprint.for_layout(layout, num_classes)        # None: no final Linear with one output per class
    w = imp(w, layout, x_context, y_context)             # w [N, P]; x [N, M, *in] (or [M, *in] shared), y [N, M] / [M]

For each generated model, its penultimate features h(x) of the condition's train samples give
one mean mu_c per class, and the last layer becomes a nearest-class-mean classifier added to
what the hypernetwork generated:

    W_last[c] += a * mu_c,   b_last[c] += -a * ||mu_c||^2 / 2      (a: one learned scale, softplus)

Why: the hypernetwork must otherwise learn, from a few dozen seen tasks, a map from a dataset
embedding to which output unit answers which class; on an unseen task that map can fail whole
(a task answered with the classes swapped). Imprinting (Qi et al. 2018, "Low-shot learning with
imprinted weights"; the prototype classifier of Snell et al. 2017) reads the class roles from the
task's own train samples, the same samples the embedding is computed from, so the
hypernetwork learns a body whose class means separate any task of the family. It is trained
through (task mode), and it is only a function of the condition's train split.
"""
from __future__ import annotations

import torch
from torch import nn

from generators.components.head_fit import final_linear
from store.layout import ParamLayout
from wsl.functional import population_forward


class Imprint(nn.Module):
    """The learned scale of the imprinted class means (see module docstring)."""

    def __init__(self, weight: str, bias: str, num_classes: int):
        super().__init__()
        self.weight, self.bias, self.num_classes = weight, bias, int(num_classes)
        self.raw_scale = nn.Parameter(torch.tensor(0.0))

    @classmethod
    def for_layout(cls, layout: ParamLayout, num_classes: int) -> "Imprint | None":
        found = final_linear(layout, num_classes) if num_classes >= 2 else None
        return None if found is None else cls(*found, num_classes)

    def forward(self, w: torch.Tensor, layout: ParamLayout, x: torch.Tensor, y: torch.Tensor,
                shared: bool = False) -> torch.Tensor:
        feats = population_forward(layout, layout.unflatten(w, allow_nonfinite=True), x, shared_input=shared,
                                   features=True)  # [N, M, H]
        n, m, hdim = feats.shape
        yy = y.expand(n, m) if shared else y
        onehot = torch.nn.functional.one_hot(yy.long(), self.num_classes).to(feats.dtype)  # [N, M, K]
        mu = onehot.transpose(1, 2) @ feats / onehot.sum(1).clamp_min(1.0)[:, :, None]  # [N, K, H]
        a = torch.nn.functional.softplus(self.raw_scale)
        ew, eb = layout[self.weight], layout[self.bias]
        add = torch.zeros_like(w)
        add[:, ew.offset:ew.offset + ew.numel] = (a * mu).reshape(n, -1)
        add[:, eb.offset:eb.offset + eb.numel] = -0.5 * a * (mu ** 2).sum(-1)
        return w + add
