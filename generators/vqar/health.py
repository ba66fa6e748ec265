"""What a vqar fit records about its tokens: reconstruction error per tensor and the decoded zoo's accuracy.

    per_tensor_error(r, r_hat, layout)                 # {tensor: relative MSE of the residual reconstruction}
    decoded_zoo(decoded, mean_only, original, layouts, datasets, index, limit, generator)

The decoded-zoo check answers "do the tokens keep what the checkpoints do?": every
training checkpoint is tokenized, quantized and decoded by the VQ-VAE alone (no prior),
put back together with its conditional mean, and evaluated on its own task's test
split next to the original checkpoint. The same is done with the residual set to zero
(the conditional mean alone), so the report shows how much of the accuracy the tokens
carry rather than the mean model: decoded ~ original while mean-only < original means
the residual tokens matter. Only the test split is read, and only to report; nothing
is fit on it. `limit` caps the number of datasets evaluated (a seeded random subset) so
the check stays a few seconds on zoos of a thousand tasks.
"""
from __future__ import annotations

from typing import Sequence

import torch

from generators.vqar.quantizer import codebook_health
from store.layout import ParamLayout


def record_health(gen, parts, toks, resid, means, codes, datasets, vq_mse, g, loo_resid=(), loo_codes=()) -> None:
    """Codebook usage, reconstruction error per tensor, decoded-zoo accuracy -> fit_info (health.py).

    Usage counts every token the codebook was learned on (in-sample and, with token_residuals
    "fit+loo", leave-one-out residuals); `prior_tokens_usage_fraction` the prior's (in-sample) tokens alone.
    """
    vq = gen.modules["vq"]
    k, lv = gen.config.codebook_size, gen.config.vq_levels
    health = codebook_health(torch.cat([cd.reshape(-1) for cd in list(codes) + list(loo_codes)]), k, lv)
    health["prior_tokens_usage_fraction"] = codebook_health(torch.cat([cd.reshape(-1) for cd in codes]), k,
                                                            lv)["usage_fraction"]
    health["vq_final_mse"] = vq_mse
    recon, zoo_parts = {}, []
    for i, (p, t, r, mu, cd) in enumerate(zip(parts, toks, resid, means, codes)):
        r_hat = t.decode(vq.decode(cd))
        recon[p["layout"].layout_id] = per_tensor_error(r, r_hat, p["layout"])
        zoo_parts.append({"layout": p["layout"], "index": p["index"], "original": p["x"],
                          "decoded": gen._to_weights(i, p["layout"], r_hat, mu),
                          "mean_only": gen._to_weights(i, p["layout"], torch.zeros_like(r_hat), mu)})
    all_r = torch.cat([r.reshape(-1) for r in resid])
    all_err = torch.cat([(t.decode(vq.decode(cd)) - r).reshape(-1) for t, r, cd in zip(toks, resid, codes)])
    health["residual_relative_mse"] = float(all_err.double().pow(2).sum() / all_r.double().pow(2).sum().clamp_min(1e-12))
    if loo_codes:
        err = sum(float((t.decode(vq.decode(cd)) - r).double().pow(2).sum()) for t, r, cd in zip(toks, loo_resid, loo_codes))
        health["loo_residual_relative_mse"] = err / max(sum(float(r.double().pow(2).sum()) for r in loo_resid), 1e-12)
    health.update(decoded_zoo(zoo_parts, datasets, gen.config.decoded_eval_datasets, g))
    gen.fit_info["codebook"] = health
    gen.fit_info["recon_error_per_tensor"] = recon


def per_tensor_error(r: torch.Tensor, r_hat: torch.Tensor, layout: ParamLayout) -> dict[str, float]:
    """Relative MSE sum((r_hat - r)^2) / sum(r^2) per named tensor (r: standardized residuals [N, P])."""
    out = {}
    for e in layout.entries:
        a = r[:, e.offset:e.offset + e.numel].double()
        b = r_hat[:, e.offset:e.offset + e.numel].double()
        out[e.name] = float((b - a).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12))
    return out


def decoded_zoo(parts: Sequence[dict], datasets, limit: int, generator: torch.Generator) -> dict[str, float | int | None]:
    """Accuracy of decoded vs original training checkpoints (and of the mean alone), on their tasks' test splits.

    parts: per layout {"layout", "original" [N, P], "decoded" [N, P], "mean_only" [N, P], "index" [N]}.
    Returns means over the evaluated checkpoints and the ratios decoded/original, mean_only/original.
    """
    from wsl.evaluate import evaluate

    if not datasets or datasets[0].task != "classification":
        return {"decoded_zoo_relative_acc": None, "mean_only_relative_acc": None, "evaluated": 0}
    chosen = torch.randperm(len(datasets), generator=generator)[:max(1, int(limit))].tolist()
    acc = {"original": [], "decoded": [], "mean_only": []}
    for p in parts:
        for d in chosen:
            rows = torch.nonzero(p["index"] == d).flatten()
            if len(rows) == 0:
                continue
            for kind in acc:
                res = evaluate(p[kind][rows], p["layout"], datasets[d], split="test")
                acc[kind].append(res.accuracy.double())
    if not acc["original"]:
        return {"decoded_zoo_relative_acc": None, "mean_only_relative_acc": None, "evaluated": 0}
    m = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    return {"decoded_zoo_relative_acc": m["decoded"] / max(m["original"], 1e-12),
            "mean_only_relative_acc": m["mean_only"] / max(m["original"], 1e-12),
            "original_acc": m["original"], "decoded_acc": m["decoded"], "mean_only_acc": m["mean_only"],
            "evaluated": int(sum(len(v) for v in acc["original"]))}


def decoded_heldout(gen, store, tasks: Sequence[str], limit: int = 10) -> dict[str, float | int]:
    """The strict decoded-zoo check: held-out tasks' zoo checkpoints through the VQ-VAE alone (gen.reconstruct).

    For each of (at most `limit` of) the tasks and each layout the generator was fit on, the
    store's last checkpoints of that task and layout are aligned, tokenized, quantized and
    decoded; the mean accuracies of original, decoded and mean-only models on the task's test
    split give decoded / original, mean_only / original, and the share of the mean's shortfall
    the tokens win back: (decoded - mean_only) / (original - mean_only).
    """
    from generators.evaluation.references import zoo_checkpoints
    from wsl.evaluate import evaluate
    from zoo.datasets import load_dataset

    acc = {"original": [], "decoded": [], "mean_only": []}
    for task in sorted(tasks)[:limit]:
        ds = load_dataset(task)
        for layout in gen.layouts:
            w, _ = zoo_checkpoints(store, task, layout.layout_id)
            if len(w) == 0:
                continue
            aligned, dec, mo = gen.reconstruct(w, ds, layout)
            for kind, x in (("original", aligned), ("decoded", dec), ("mean_only", mo)):
                acc[kind].append(evaluate(x, layout, ds, split="test").accuracy.double())
    if not acc["original"]:
        return {}
    m = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    gap = m["original"] - m["mean_only"]
    return {"decoded_zoo_relative_acc": m["decoded"] / max(m["original"], 1e-12),
            "decoded_zoo_mean_only_relative_acc": m["mean_only"] / max(m["original"], 1e-12),
            "decoded_zoo_token_gap_closed": (m["decoded"] - m["mean_only"]) / gap if abs(gap) > 1e-9 else None,
            "decoded_zoo_evaluated": int(sum(len(v) for v in acc["original"]))}


def benchmark_figures(gen, context=None) -> dict:
    """Codebook health (fit time) and the decoded held-out zoo (decoded_heldout) for the harness (model.benchmark_figures).

    The decoded figures are the VQ-VAE's alone: no prior and no sampling-time head fit (reconstruct.py
    never goes through sample()), so they say what the tokens keep, not what the head solve repairs.
    """
    h = gen.fit_info.get("codebook") or {}
    out = {"codebook_usage": h.get("usage_fraction"), "dead_code_fraction": h.get("dead_code_fraction"),
           "codebook_perplexity": h.get("perplexity"), "vq_residual_relative_mse": h.get("residual_relative_mse"),
           "vq_loo_residual_relative_mse": h.get("loo_residual_relative_mse"),
           "decoded_zoo_seen_relative_acc": h.get("decoded_zoo_relative_acc"),
           "decoded_zoo_seen_mean_only_relative_acc": h.get("mean_only_relative_acc")}
    get = (lambda k: context.get(k)) if isinstance(context, dict) else (lambda k: getattr(context, k, None))
    store, split = (get("store"), get("split") or get("resolution")) if context is not None else (None, None)
    held = list(getattr(split, "held_out", None) or (split or {}).get("held_out", []) if split is not None else [])
    fig = decoded_heldout(gen, store, held) if store is not None and held else {}
    out["decoded_zoo_relative_acc"] = fig.get("decoded_zoo_relative_acc", out["decoded_zoo_seen_relative_acc"])
    out["decoded_zoo_checkpoints"] = "held-out" if fig else "seen (training)"
    out.update({k: v for k, v in fig.items() if k != "decoded_zoo_relative_acc"})
    return out
