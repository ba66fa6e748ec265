"""Sampling-time head fit: a generated network's last Linear layer solved in closed form on its condition's train split.

    w = fit_head(w, layout, dataset)        # w [N, P]: every model's last layer replaced, the rest kept
    final_linear(layout, num_outputs)       # (weight name, bias name) of the head, or None

A generator conditioned on a dataset sees that dataset's train split anyway (the set encoder
embeds it, the mean model reads its statistics). With `head_fit="lsq"` the generated body (every
layer but the last) is kept and the last Linear layer is the regularized least-squares answer on
the body's own penultimate features h(x) of (at most MAX_SAMPLES of) the train split:

    [W | b] = argmin ||[h, 1] [W | b]^T - T||^2 + lam * ||W||^2     (T: +1 for the class, -1 otherwise;
                                                                        regression: the targets)

then, for classification, scaled so that its weight matrix has the norm of the head it replaces
(least-squares logits sit near +-1; a scale fit by train cross-entropy instead grows without
bound on separable tasks (digit pairs: samples 143 from the nearest training checkpoint, fresh
models 6.9), which inflates every weight-space distance and the loss a later fine-tuning starts from; a positive scale leaves the
predictions as they are). lam = LAMBDA times the mean diagonal of h^T h (scale-free). Nothing is trained: one solve per
model, in chunks of models, deterministic.

Why: the weights a generator predicts for a new task are right in the body and wrong in the
details that decide the answer. Measured on digits-subsets (20 held-out class-subset tasks, the
per-seed kernel-ridge mean alone, no generated residual): test accuracy 0.9326 as predicted,
0.9507 with a nearest-class-mean head, 0.9694 with this head; the same head on the checkpoints
of the nearest seen task (retrieval-nearest) lifts them from 0.882 to 0.932 only, so most of
the gain is the generated body's. The report therefore also scores the retrieval baselines with
the same head (`retrieval-select+head`, `retrieval-nearest+head`): the comparison that says
what the generator adds beyond a lookup plus a closed-form probe. A library would add nothing
here: this is one batched `torch.linalg.solve`.
"""
from __future__ import annotations

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset

HEAD_FITS = ("auto", "lsq", "none")
MAX_SAMPLES = 4096  # train samples the head is solved on (a fixed, seeded subset when the split is larger)
LAMBDA = 1e-3  # ridge penalty, times the mean diagonal of the feature Gram matrix
FEATURE_BUDGET = 2 ** 24  # floats of penultimate features held at once (models per chunk follow from it)


def final_linear(layout: ParamLayout, num_outputs: int) -> tuple[str, str] | None:
    """(weight name, bias name) of the layout's last Linear when it has num_outputs outputs, else None.

    The head must be the last two parameter tensors (a weight [num_outputs, H] and its bias).
    """
    entries = layout.param_entries
    weights = [e for e in entries if e.name.endswith(".weight") and len(e.shape) == 2]
    if not weights or num_outputs < 1:
        return None
    w = weights[-1]
    bias = w.name[:-len("weight")] + "bias"
    names = {e.name: e for e in entries}
    if w.shape[0] != num_outputs or bias not in names or names[bias].shape != (num_outputs,):
        return None
    if len(entries) < 2 or w is not entries[-2] or names[bias] is not entries[-1]:
        return None
    return w.name, bias


def head_outputs(dataset: Dataset) -> int:
    return int(dataset.num_classes) if dataset.task == "classification" else int(dataset.output_dim)


def check_mode(mode: str) -> str:
    if mode not in HEAD_FITS:
        raise UserError(f"head_fit {mode!r}", f"use one of {', '.join(HEAD_FITS)}")
    return mode


def _head(mode: str, layout: ParamLayout, dataset: Dataset) -> tuple[str, str] | None:
    """The head `mode` fits for this layout and dataset, or None ("auto": whenever the layout ends in a fitting Linear)."""
    check_mode(mode)
    if mode == "none":
        return None
    found = final_linear(layout, head_outputs(dataset))
    if found is None and mode == "lsq":
        raise UserError(f"head_fit='lsq' but layout {layout.layout_id} does not end in a Linear layer with "
                        f"{head_outputs(dataset)} outputs", "use head_fit='auto' or 'none' for this architecture")
    return found


def active(mode: str, layout: ParamLayout, dataset: Dataset) -> bool:
    """Whether `mode` fits a head for this layout and dataset."""
    return _head(mode, layout, dataset) is not None


def _train_subset(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.x_train, dataset.y_train
    if len(x) > MAX_SAMPLES:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:MAX_SAMPLES].sort().values
        x, y = x[keep], y[keep]
    return x.to(torch.float32), y


@torch.no_grad()
def fit_head(weights: torch.Tensor, layout: ParamLayout, dataset: Dataset, mode: str = "lsq") -> torch.Tensor:
    """weights [N, P] with the last Linear layer solved on the dataset's train split (module docstring)."""
    found = _head(mode, layout, dataset)
    if found is None:
        return weights
    from wsl.functional import population_forward

    wname, bname = found
    ew, eb = layout[wname], layout[bname]
    x, y = _train_subset(dataset)
    classification = dataset.task == "classification"
    if classification:
        target = 2.0 * torch.nn.functional.one_hot(y.long(), int(dataset.num_classes)).to(torch.float64) - 1.0
    else:
        target = y.reshape(len(y), -1).to(torch.float64)
    hdim = ew.shape[1]
    out = weights.clone()
    step = max(1, FEATURE_BUDGET // max(1, len(x) * (hdim + 1)))
    for i in range(0, len(weights), step):
        w = weights[i:i + step]
        feats = population_forward(layout, layout.unflatten(w, allow_nonfinite=True), x, shared_input=True,
                                   features=True).to(torch.float64)  # [n, M, H]
        f1 = torch.cat([feats, torch.ones(*feats.shape[:2], 1, dtype=torch.float64)], -1)
        gram = f1.transpose(1, 2) @ f1  # [n, H+1, H+1]
        scale = gram.diagonal(dim1=1, dim2=2)[:, :hdim].mean(1).clamp_min(1e-12)
        reg = torch.zeros(hdim + 1, dtype=torch.float64)
        reg[:hdim] = LAMBDA
        gram = gram + (scale[:, None] * reg)[:, :, None] * torch.eye(hdim + 1, dtype=torch.float64)
        sol = torch.linalg.solve(gram, f1.transpose(1, 2) @ target)  # [n, H+1, K]
        sol = torch.nan_to_num(sol, nan=0.0, posinf=0.0, neginf=0.0)
        if classification:  # the generated head's scale (module docstring)
            given = w[:, ew.offset:ew.offset + ew.numel].to(torch.float64).norm(dim=1)
            sol = sol * (given / sol[:, :hdim].flatten(1).norm(dim=1).clamp_min(1e-12))[:, None, None]
        rows = slice(i, i + len(w))
        out[rows, ew.offset:ew.offset + ew.numel] = sol[:, :hdim].transpose(1, 2).reshape(len(w), -1).to(out.dtype)
        out[rows, eb.offset:eb.offset + eb.numel] = sol[:, hdim].to(out.dtype)
    return out
