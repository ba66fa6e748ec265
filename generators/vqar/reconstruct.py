"""A checkpoint through the VQ-VAE alone (no prior): what the tokens keep of a model the codebook may never have seen.

    aligned, decoded, mean_only = reconstruct(gen, weights, dataset, layout)   # each [m, P]

Used by the decoded-zoo checks (health.py). A checkpoint from the store is in its own
hidden-unit order, so it is first permuted into the generator's coordinates: weight
matching (wsl.align) against each init group's ridge mean for the dataset, keeping the
closest group. Its residual from that mean is then standardized, cut into chunks, quantized
and decoded exactly as a fit does; `mean_only` is the group's mean with a zero residual,
so decoded vs mean_only says how much the tokens add to the mean model.
"""
from __future__ import annotations

import torch

from generators.components.mean_model import dataset_statistics
from store.errors import UserError
from store.layout import ParamLayout


@torch.no_grad()
def reconstruct(gen, weights: torch.Tensor, dataset, layout: ParamLayout | str | None = None, seen_as: str = "heldout"):
    """Checkpoints [m, P] of a fit layout, trained on `dataset` -> (aligned, decoded, mean_only), each [m, P].

    Through the VQ-VAE alone (no prior): each checkpoint is permuted into the generator's
    coordinates (weight matching against each init group's ridge mean for the dataset; the
    closest group is kept), its residual from that mean tokenized, quantized and decoded.
    `aligned` computes what the checkpoint computes; `mean_only` is the group's mean alone.
    seen_as "heldout" (a task the mean model did not see: the leave-one-out residual statistics,
    when the fit kept them) or "fit" (the in-sample ones).
    """
    from generators.components.symmetry import alignable
    from wsl.align import apply_permutation, weight_matching

    layout = gen.resolve_layout(layout)
    fit_ids = [lay.layout_id for lay in gen.layouts]
    if layout.layout_id not in fit_ids:
        raise UserError(f"layout {layout.layout_id} is not one this generator was fit on", f"use one of {fit_ids}")
    li = fit_ids.index(layout.layout_id)
    info = gen.fit_info
    w = layout.check_flat(weights).reshape(-1, layout.num_params).to(torch.float32)
    norm = gen.modules[f"l{li}_norm"].normalizer(layout)
    if gen.config.mean_model != "none":
        kk = int(info["num_classes"]) if info["task"] == "classification" else 0
        means = gen.modules[f"l{li}_mean"](dataset_statistics(dataset.x_train, dataset.y_train, kk)[None])[:, 0]
    else:
        means = torch.zeros(1, layout.num_params)
    refs = norm.inverse(means, torch.float32)
    aligned, group = [], []
    for wi in w:
        best = None
        for gi, ref in enumerate(refs):
            cand = apply_permutation(wi, layout, weight_matching(ref, wi, layout)) if alignable(layout) else wi
            d = float((norm.transform(cand, torch.float32) - means[gi]).pow(2).sum())
            if best is None or d < best[0]:
                best = (d, gi, cand)
        aligned.append(best[2])
        group.append(best[1])
    aligned = torch.stack(aligned)
    mu = means[torch.tensor(group)]
    # residual statistics: the leave-one-out residuals' when the codebook learned them (a checkpoint of a task the
    # mean may not have seen), else the in-sample ones
    key = f"l{li}_lnorm" if seen_as == "heldout" and f"l{li}_lnorm" in gen.modules else f"l{li}_rnorm"
    rn = gen.modules[key].normalizer(layout)
    r = rn.transform(norm.transform(aligned, torch.float32) - mu, torch.float32)
    t, vq = gen._layout_tokens(layout), gen.modules["vq"]
    chunks, mask = t.encode(r)
    codes = vq.encode(chunks.reshape(-1, chunks.shape[-1]), mask.expand(len(r), -1, -1).reshape(-1, mask.shape[-1]))
    r_hat = t.decode(vq.decode(codes).reshape(chunks.shape))
    decoded = norm.inverse(mu + rn.inverse(r_hat, torch.float32))
    return aligned, decoded, norm.inverse(mu)
