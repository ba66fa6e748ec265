"""VQ-VAE tokens + autoregressive transformer prior over weights (IGPG's recipe), one generator for several layouts.

    gen = VQAutoregressive(chunk_size=16, codebook_size=256).fit_tensors(weights, layout, conditions)
    gen = VQAutoregressive.fit(store, "zoo = 'digits-pairs-widths'")           # MLPs of widths 16/32/64 at once
    w, layout = gen.sample(256, "digits-pair:3-5", seed=0, layout="<layout_id>")

Fitting, per layout of the family (layouts.py), top to bottom:

1. Per-tensor standardization (wsl.normalize.Normalizer, as diffusion).
2. Conditional mean (components/mean_model.py): a ridge regression from the dataset's
   statistics to the standardized weights; what is left is the residual, standardized
   per tensor again. The tokens code these deviations, not the part a linear map of
   the task already predicts.
3. Tokens: `wsl.tokenize.ChunkTokenizer` cuts each tensor of the residual into chunks of
   `chunk_size` values (the last chunk of a tensor padded and masked).
4. VQ-VAE over the chunks of every layout together (quantizer.py: vector-quantize-pytorch's
   EMA codebook with k-means init and dead-code replacement), trained on the in-sample residuals
   and (token_residuals="fit+loo") every model's leave-one-dataset-out residual, each standardized
   on its own (loo.py: what a held-out task's residual looks like); its health (usage, perplexity,
   dead codes, reconstruction error per tensor, decoded-zoo accuracy) goes into fit_info.
5. Prior (prior.py): a causal transformer over each model's code indices in layout order,
   conditioned on the Conditioner's vector (set-encoder embedding of the dataset's train
   samples, a fresh random context per step, + init group + optional target metric) and the
   layout descriptor; cross-entropy, teacher forcing.

Sampling: embed the dataset -> pick an init group (seeded) -> prior tokens (temperature,
top-k, seeded) -> VQ decoder -> chunks -> residual -> + conditional mean -> inverse
standardization (-> the head fit, applied by sample()). A layout of the family the generator
never saw (another width) is sampled at a fit width and resized (layouts.resize); what that
gives is measured, not promised (docs/generators.md "vqar").
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from generators.components.conditioner import Conditioner
from generators.components.mean_model import GroupedRidge, dataset_statistics, sets_per_group, statistics_dim
from generators.components.normalizer_state import NormalizerState
from generators.components.set_encoder import embed_dataset
from generators.conditions import Condition, common_task
from generators.interface import WeightGenerator, _distinct_datasets
from generators.vqar import layouts as fam
from generators.vqar.health import record_health
from generators.vqar.loo import loo_means
from generators.vqar.prior import TokenPrior
from generators.vqar.quantizer import ChunkVQVAE, train_vqvae
from store.errors import UserError
from store.layout import ParamLayout
from wsl.normalize import Normalizer


class VQAutoregressive(WeightGenerator):
    """Per-tensor standardization -> ridge mean -> chunk VQ-VAE tokens -> conditional causal-transformer prior."""

    method = "vqar"
    multi_layout = True
    # generators saved before head_fit sampled without it; before token_residuals their VQ-VAE saw in-sample residuals
    # only; before unseen_layout an unseen width got the nearest statistics; before mean_kernel the ridge was linear
    legacy_config = {"head_fit": "none", "token_residuals": "fit", "unseen_layout": "statistics", "mean_kernel": "linear"}

    @dataclasses.dataclass
    class Config:
        mean_model: str = "group-ridge"  # "group-ridge" (one ridge per init group), "ridge" (one over all groups) or "none"
        mean_kernel: str = "auto"  # the ridge's kernel: "linear", "rbf" or "auto" (by leave-one-dataset-out error)
        residual_scale: float = 1.0  # sampling: mean + scale * decoded residual
        # what the VQ-VAE learns its codebook on: "fit" (the in-sample residuals the prior is trained on) or "fit+loo"
        # (also every model's leave-one-dataset-out residual, standardized on its own: what a held-out task's residual
        # looks like; loo.py)
        token_residuals: str = "fit+loo"
        # a layout of the family the generator was not fit on (another width): "resize" (sample a fit layout, then
        # layouts.resize: Net2Net-style, exact when widening) or "statistics" (tokens decoded with the nearest fit
        # layout's residual statistics and no mean model)
        unseen_layout: str = "resize"
        # sampling: the last Linear layer solved in closed form on the condition's train split over the generated
        # body's features (components/head_fit.py): "auto" (when the layout ends in one), "lsq" (required) or "none"
        head_fit: str = "auto"
        # tokens + VQ-VAE
        chunk_size: int = 16  # 8-bit tokens of 16 values: 0.5 bit per weight (4: 2 bits, decoded zoo >= 0.99 on both
        # protocols at ~4x the prior's sequence, fit and sampling time; BENCHMARKS.md "## vqar")
        codebook_size: int = 256
        vq_levels: int = 1  # residual-VQ levels: indices per chunk (the prior emits levels x chunks tokens)
        code_dim: int = 16
        vq_hidden: int = 128  # 0: identity encoder/decoder (the codebook holds chunks)
        ae_steps: int = 800
        ae_lr: float = 1e-3
        vq_batch: int = 2048
        vq_decay: float = 0.9
        commitment: float = 0.25
        dead_threshold: float = 1.0  # EMA usage under which an entry is re-seeded from the batch
        # prior
        d_model: int = 96
        depth: int = 2
        heads: int = 4
        dropout: float = 0.1
        steps: int = 600
        lr: float = 1e-3
        weight_decay: float = 0.01
        batch_size: int = 32
        set_hidden: int = 64
        cond_dim: int = 64
        max_per_class: int = 64  # context samples per class per training step
        context_per_class: int = 512  # samples per class embedded at sampling time
        metric_drop: float = 0.3  # P(target-metric condition dropped) while training
        temperature: float = 1.0
        top_k: int = 0  # 0: sample from the whole codebook
        decoded_eval_datasets: int = 64  # datasets the decoded-zoo check evaluates (health.py)
        seed: int = 0

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.mean_model not in ("ridge", "group-ridge", "none"):
            raise UserError(f"vqar option mean_model={c.mean_model!r}", "use 'ridge', 'group-ridge' or 'none'")
        if c.mean_kernel not in ("linear", "rbf", "auto"):
            raise UserError(f"vqar option mean_kernel={c.mean_kernel!r}", "use 'linear', 'rbf' or 'auto'")
        if c.unseen_layout not in ("resize", "statistics"):
            raise UserError(f"vqar option unseen_layout={c.unseen_layout!r}", "use 'resize' or 'statistics'")
        if c.token_residuals not in ("fit", "fit+loo"):
            raise UserError(f"vqar option token_residuals={c.token_residuals!r}", "use 'fit' or 'fit+loo'")
        if isinstance(c.chunk_size, bool) or not isinstance(c.chunk_size, int) or c.chunk_size < 1:
            raise UserError(f"vqar option chunk_size={c.chunk_size!r}", "give a chunk size >= 1 (e.g. 16), at most the "
                            "largest tensor of the layout")
        if isinstance(c.codebook_size, bool) or not isinstance(c.codebook_size, int) or c.codebook_size < 2:
            raise UserError(f"vqar option codebook_size={c.codebook_size!r}", "give a codebook of at least 2 entries "
                            "(e.g. 256)")
        for k in ("code_dim", "d_model", "depth", "heads", "batch_size", "vq_batch", "set_hidden", "cond_dim",
                  "max_per_class", "context_per_class", "decoded_eval_datasets", "vq_levels"):
            if int(getattr(c, k)) < 1:
                raise UserError(f"vqar option {k}={getattr(c, k)!r}", f"{k} must be >= 1")
        for k in ("steps", "ae_steps", "vq_hidden", "top_k"):
            if int(getattr(c, k)) < 0:
                raise UserError(f"vqar option {k}={getattr(c, k)!r}", f"{k} must be >= 0")
        if c.d_model % c.heads:
            raise UserError(f"vqar options d_model={c.d_model} and heads={c.heads}", "d_model must be a multiple of heads")
        if c.temperature < 0:
            raise UserError(f"vqar option temperature={c.temperature!r}", "give a temperature >= 0 (0 = greedy)")
        self.modules: dict[str, nn.Module] = {}
        self._tokens: dict[str, fam.LayoutTokens] = {}

    # ----- layouts --------------------------------------------------------------------
    @property
    def layouts(self) -> list[ParamLayout]:
        """Every layout the generator was fit on (fit_info order)."""
        return [ParamLayout.from_dict(d) for d in self.fit_info.get("layouts", [])]

    def resolve_layout(self, layout: ParamLayout | str | None) -> ParamLayout:
        """A fit layout by id, or a ParamLayout of the family (another width); UserError outside it."""
        fit = self.layouts
        if layout is None:
            return self._require_fit()
        if isinstance(layout, str):
            for lay in fit:
                if lay.layout_id == layout:
                    return lay
            raise UserError(f"layout {layout!r} is not one this vqar generator was fit on",
                            f"use one of {[lay.layout_id for lay in fit]}, or pass the ParamLayout of another width "
                            "of the family (the CLI looks --layout up in the store's layouts table)")
        if not isinstance(layout, ParamLayout):
            raise UserError(f"layout is a {type(layout).__name__}", "pass a layout id or a ParamLayout")
        fam.check_member(layout, fit)
        return layout

    def _layout_tokens(self, layout: ParamLayout) -> fam.LayoutTokens:
        if layout.layout_id not in self._tokens:
            self._tokens[layout.layout_id] = fam.LayoutTokens(layout, self.config.chunk_size, self.fit_info["names"],
                                                              self.config.vq_levels)
        return self._tokens[layout.layout_id]

    # ----- modules -------------------------------------------------------------------
    def _build(self) -> None:
        c, info = self.config, self.fit_info
        in_features = int(math.prod(info["input_shape"]))
        k = int(info["num_classes"]) if info.get("task", "classification") == "classification" else 0
        target_dim = int(info.get("target_dim", 1))
        n_groups = max(1, sum(max(1, len(g)) for g in info["layout_groups"]))
        names = info["names"]
        self.modules = {
            "conditioner": Conditioner(in_features, k, target_dim, len(info.get("metrics", [])), c.set_hidden,
                                       c.cond_dim, 1, n_groups),
            "vq": ChunkVQVAE(c.chunk_size, c.codebook_size, c.code_dim, c.vq_hidden, c.vq_decay, c.commitment,
                             c.dead_threshold, levels=c.vq_levels),
            "prior": TokenPrior(c.codebook_size, len(names), int(info["max_position"]), fam.descriptor_dim(names),
                                c.cond_dim, c.d_model, c.depth, c.heads, c.dropout),
        }
        for i, d in enumerate(info["layouts"]):
            n_tensors = len(d["entries"]) if "entries" in d else len(ParamLayout.from_dict(d))
            self.modules[f"l{i}_norm"] = NormalizerState(n_tensors)
            self.modules[f"l{i}_rnorm"] = NormalizerState(n_tensors)
            if self._uses_loo:
                self.modules[f"l{i}_lnorm"] = NormalizerState(n_tensors)  # leave-one-out residuals' statistics
            if c.mean_model != "none":
                self.modules[f"l{i}_mean"] = GroupedRidge(info["mean_sets"][i],
                                                          statistics_dim(in_features, k, target_dim),
                                                          int(ParamLayout.from_dict(d).num_params))

    @property
    def _uses_loo(self) -> bool:
        return self.config.token_residuals == "fit+loo" and self.config.mean_model != "none"

    def _modules(self) -> dict[str, nn.Module]:
        return self.modules

    # ----- fitting: several layouts ------------------------------------------------------------
    def fit_training_set(self, ts, metric=None, align_by=None, progress=None) -> "VQAutoregressive":
        """Fit on every layout of the selection (one architecture family); one layout goes the base-class way."""
        if len(ts.layouts) == 1:
            return super().fit_training_set(ts, metric=metric, align_by=align_by, progress=progress)
        from generators.components.symmetry import align_groups

        layouts = [ts.layouts[lid] for lid in sorted(ts.layouts)]
        fam.check_family(layouts)
        meta = ts.meta
        conds = [Condition(d, split_seed=s) for d, s in zip(meta["dataset"], meta["split_seed"])]
        datasets, index = _distinct_datasets(conds)
        index = torch.tensor(index)
        parts = []
        for layout in layouts:
            rows = np.flatnonzero((meta["layout_id"] == layout.layout_id).to_numpy())
            w = ts.weights[layout.layout_id].to(torch.float32)
            layout.check_flat(w)
            if len(w) != len(rows) or len(w) < 2:
                raise UserError(f"layout {layout.layout_id} has {len(w)} selected checkpoints",
                                "select at least 2 models of every layout")
            labels: list[str] = []
            gi = torch.zeros(len(rows), dtype=torch.long)
            if align_by:
                groups = [str(g) for g in meta[align_by].to_numpy()[rows]]
                w = align_groups(w, layout, groups)
                labels = sorted(set(groups))
                gi = torch.tensor([labels.index(g) for g in groups])
            mv = {metric: torch.tensor(meta[metric].to_numpy()[rows], dtype=torch.float32)} if metric else {}
            parts.append({"layout": layout, "x": w, "index": index[rows], "groups": gi,
                          "labels": labels if len(labels) > 1 else [], "metrics": mv})
        self.layout = max(layouts, key=lambda lay: (len(ts.weights[lay.layout_id]), lay.layout_id))
        self.fit_info = {}
        self._fit_parts(parts, datasets, sorted(parts[0]["metrics"]), progress)
        per: dict[str, int] = {}
        for i, ds in enumerate(datasets):
            per[ds.name] = per.get(ds.name, 0) + int((index == i).sum())
        self.fit_info.update({"num_train": len(meta), "conditions": per,
                              "aligned_groups": sum(len(p["labels"]) for p in parts),
                              "groups": [g for p in parts for g in p["labels"]]})
        self.training = {"num_train": len(meta), "layout_ids": [lay.layout_id for lay in layouts]}
        self.generator_id = self._compute_id()
        return self

    def _fit(self, weights, datasets, index, metrics, groups, progress) -> None:
        labels = list(self.fit_info.get("groups") or [])
        part = {"layout": self.layout, "x": weights, "index": index, "groups": groups, "labels": labels,
                "metrics": metrics}
        self._fit_parts([part], datasets, sorted(metrics), progress)

    def _fit_parts(self, parts: list[dict], datasets, metric_names: list[str], progress) -> None:
        c = self.config
        task, k = common_task(datasets)
        layouts = [p["layout"] for p in parts]
        names = fam.name_table(layouts)
        toks = [fam.LayoutTokens(lay, c.chunk_size, names, c.vq_levels) for lay in layouts]  # chunk_size > largest tensor: UserError
        kk = k if task == "classification" else 0
        info = self.fit_info
        info.update({"input_shape": list(datasets[0].input_shape), "num_classes": k, "task": task,
                     "metrics": metric_names, "layouts": [lay.to_dict() for lay in layouts], "names": names,
                     "max_position": int(max(int(t.position.max()) for t in toks) + 1),
                     "layout_groups": [list(p["labels"]) for p in parts]})
        if task == "regression":
            info["target_dim"] = int(datasets[0].output_dim)
        offsets = np.cumsum([0] + [max(1, len(p["labels"])) for p in parts])[:-1].tolist()
        info["group_offsets"] = [int(o) for o in offsets]
        ridge = [p["groups"] if c.mean_model == "group-ridge" else torch.zeros_like(p["groups"]) for p in parts]
        info["mean_sets"] = [sets_per_group(p["index"], r, max(1, len(p["labels"])) if c.mean_model == "group-ridge" else 1)
                             for p, r in zip(parts, ridge)]
        g = torch.Generator().manual_seed(c.seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)  # module init, k-means init, dropout
        try:
            self._build()
            if progress:
                progress(0, total=c.ae_steps + c.steps, info="vq-vae")
            stats = torch.stack([dataset_statistics(d.x_train, d.y_train, kk) for d in datasets]) \
                if c.mean_model != "none" else None
            resid, means, loo_resid = [], [], []
            for i, (p, r) in enumerate(zip(parts, ridge)):
                x = self.modules[f"l{i}_norm"].set(Normalizer.fit(p["x"], p["layout"])).transform(p["x"], torch.float32)
                if stats is not None:
                    ridge_info = self.modules[f"l{i}_mean"].fit(stats, x, p["index"], r, c.mean_kernel)
                    info.setdefault("ridge", []).append(ridge_info)
                    mu = self.modules[f"l{i}_mean"](stats)[r, p["index"]]
                else:
                    mu = torch.zeros_like(x)
                rn = self.modules[f"l{i}_rnorm"].set(Normalizer.fit(x - mu, p["layout"]))
                resid.append(rn.transform(x - mu, torch.float32))
                means.append(mu)
                if self._uses_loo:
                    d = x - loo_means(self.modules[f"l{i}_mean"], mu, p["index"], r)
                    loo_resid.append(self.modules[f"l{i}_lnorm"].set(Normalizer.fit(d, p["layout"])).transform(d, torch.float32))
            chunks = [t.encode(r) for t, r in zip(toks, resid)]  # ([N, T, D], [T, D])
            loo_chunks = [t.encode(r) for t, r in zip(toks, loo_resid)]
            D = c.chunk_size
            pool = torch.cat([ch.reshape(-1, D) for ch, _ in chunks + loo_chunks])
            pool_mask = torch.cat([m.expand(len(ch), -1, -1).reshape(-1, D) for ch, m in chunks + loo_chunks])
            vq = self.modules["vq"]
            vq_mse = train_vqvae(vq, pool, pool_mask, c.ae_steps, c.vq_batch, c.ae_lr, g, progress)

            def encode(parts_chunks):  # [N, T, D] chunks (+ [T, D] mask) of each layout -> [N, T * levels] codes
                return [vq.encode(ch.reshape(-1, D), m.expand(len(ch), -1, -1).reshape(-1, D)).reshape(len(ch), -1)
                        for ch, m in parts_chunks]

            codes = encode(chunks)
            loo_codes = encode(loo_chunks)
            record_health(self, parts, toks, resid, means, codes, datasets, vq_mse, g, loo_resid, loo_codes)
            if progress:
                progress(0, info="prior")
            info["prior_final_loss"] = self._train_prior(parts, toks, codes, datasets, kk, g, progress)
        finally:
            torch.random.set_rng_state(torch_state)
        for m in self.modules.values():
            m.eval()

    def _train_prior(self, parts, toks, codes, datasets, k, g, progress) -> float:
        from generators.vqar.prior import train_prior

        return train_prior(self, parts, toks, codes, datasets, k, g, progress)

    # ----- sampling --------------------------------------------------------------------------
    def _to_weights(self, li: int, layout: ParamLayout, r_hat: torch.Tensor, mean: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
        """Decoded standardized residuals [n, P] (+ standardized mean [n, P]) -> weights, with fit layout li's statistics."""
        rn, norm = self.modules[f"l{li}_rnorm"], self.modules[f"l{li}_norm"]
        rn_n = Normalizer(layout, rn.mean, rn.std)
        scale = self.config.residual_scale if scale is None else scale
        x = mean + scale * rn_n.inverse(r_hat, torch.float32)
        return Normalizer(layout, norm.mean, norm.std).inverse(x)

    def reconstruct(self, weights: torch.Tensor, dataset, layout: ParamLayout | str | None = None,
                    seen_as: str = "heldout"):
        """Checkpoints [m, P] for `dataset` through the VQ-VAE alone -> (aligned, decoded, mean_only) (reconstruct.py)."""
        from generators.vqar.reconstruct import reconstruct

        return reconstruct(self, weights, dataset, layout, seen_as)

    @torch.no_grad()
    def embed(self, dataset) -> torch.Tensor:
        return embed_dataset(self.modules["conditioner"].set_encoder, dataset, self.config.context_per_class)

    @torch.no_grad()
    def _sample(self, n, dataset, target, seed, layout=None) -> torch.Tensor:
        c, info = self.config, self.fit_info
        layout = self.resolve_layout(layout)
        fit_ids = [lay.layout_id for lay in self.layouts]
        seen = layout.layout_id in fit_ids
        if not seen and c.unseen_layout == "resize":
            src = self.layouts[fam.source_for(layout, self.layouts)]
            return fam.resize(self._sample(n, dataset, target, seed, src), src, layout).contiguous()
        li = fit_ids.index(layout.layout_id) if seen else fam.nearest(layout, self.layouts)
        t = self._layout_tokens(layout)
        cond, prior, vq = self.modules["conditioner"], self.modules["prior"], self.modules["vq"]
        mv = None
        if target:
            names = info.get("metrics", [])
            missing = [m for m in names if m not in target]
            if missing:
                raise UserError(f"target gives {sorted(target)} but the generator conditions on {names} together",
                                f"give all of {names}")
            mv = torch.tensor([[float(target[m]) for m in names]]).expand(n, -1)
        n_groups = max(1, len(info["layout_groups"][li]))
        group = (torch.randint(n_groups, (n,), generator=torch.Generator().manual_seed(int(seed) + 7919))
                 if n_groups > 1 else torch.zeros(n, dtype=torch.long))
        emb = self.embed(dataset).expand(n, -1)
        keep = torch.zeros(n, dtype=torch.bool)
        cvec = cond.combine(emb, keep, mv, keep if mv is not None else None, group + info["group_offsets"][li])
        g = torch.Generator().manual_seed(int(seed))
        codes = torch.cat([prior.generate(cvec[i:i + 512], t.descriptor, t.tensor_id, t.position, c.temperature,
                                          c.top_k, g) for i in range(0, n, 512)])
        r_hat = t.decode(vq.decode(codes))
        if seen and c.mean_model != "none":
            kk = int(info["num_classes"]) if info["task"] == "classification" else 0
            means = self.modules[f"l{li}_mean"](dataset_statistics(dataset.x_train, dataset.y_train, kk)[None])
            mean = means[group, 0] if len(means) > 1 else means[0, 0].expand(n, -1)
        else:  # an unseen size of the family: no mean model for it (the residual statistics are the nearest layout's)
            mean = torch.zeros(n, layout.num_params)
        return self._to_weights(li, layout, r_hat, mean).contiguous()

    # ----- the harness's method-specific figures ------------------------------------------------
    def benchmark_figures(self, context=None) -> dict:
        """Codebook health (fit time) and the decoded zoo (health.decoded_heldout) for benchmarks/generate.py.

        context: the harness's BenchmarkContext (or a mapping) with `store` and `resolution` (or `split`):
        anything with `.held_out`; with both, the held-out tasks' zoo checkpoints are decoded through the VQ-VAE (the strict check: the
        codebook never saw them); otherwise the decoded-zoo figure is the training checkpoints' (fit_info).
        """
        from generators.vqar.health import benchmark_figures

        return benchmark_figures(self, context)
