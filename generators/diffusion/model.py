"""Dataset-conditioned latent diffusion over weights (p-diff's recipe + D2NWG's dataset conditioning).

    gen = LatentDiffusion(steps=3000).fit_tensors(weights, layout, conditions)
    w, layout = gen.sample(256, "digits-pair:3-5", seed=0)

Fitting, top to bottom:

1. Per-tensor standardization: every named tensor of the layout is shifted
   and scaled to mean 0 / std 1 over the training population (exactly
   inverted after decoding). A bias and a weight matrix then count equally.
2. Weight VAE (components/autoencoder.py): [N, P] -> [N, latent_dim], trained with
   noise on its input (~0.001) and its latent (~0.1), p-diff style. Latent
   means are then standardized per dimension.
3. Latent denoiser (diffusion/denoiser.py) trained with diffusers' `DDPMScheduler`
   (epsilon prediction by default), conditioned on
   - a dataset embedding from the set encoder (components/set_encoder.py) over a fresh
     random subset of that dataset's training samples at every step,
     trained jointly with the denoiser;
   - optionally a target metric (G.pt style), e.g. the checkpoint's test accuracy.
   Each condition is dropped (replaced by a learned null vector) with some
   probability, so sampling can use classifier-free guidance.

Sampling: the dataset's training samples -> embedding -> DDIM (diffusers'
`DDIMScheduler`, eta = 0, so a seed fixes the result) -> VAE decoder ->
inverse standardization -> [n, P] weights.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from generators.conditions import common_task
from generators.components.autoencoder import WeightVAE
from generators.components.conditioner import Conditioner
from generators.components.mean_model import GroupedRidge, dataset_statistics, sets_per_group, statistics_dim
from generators.components.normalizer_state import NormalizerState
from generators.components.schedules import warmup_cosine
from generators.components.set_encoder import ContextTable, embed_dataset
from generators.diffusion.denoiser import LatentDenoiser
from generators.interface import WeightGenerator
from store.errors import UserError
from wsl.data import Dataset
from wsl.normalize import Normalizer


INTERPOLATES = 0.01  # mean_model="auto": a mean map leaving < 1% of the models' variance reproduces them


class LatentDiffusion(WeightGenerator):
    """Per-tensor standardization -> weight VAE -> dataset-conditioned latent DDPM (sampled with DDIM)."""

    method = "diffusion"
    legacy_config = {"head_fit": "none"}  # generators saved before head_fit sampled without it

    @dataclasses.dataclass
    class Config:
        # mean part (mean_model.py): standardized weights = ridge(dataset statistics) + residual
        # "ridge": one ridge over all models; "group-ridge": one per init group (more accurate on unseen
        # datasets, but with one model per group and dataset it interpolates them: samples for seen datasets
        # are copies); "auto": whichever of the two has the lower leave-one-dataset-out error per model;
        # "none": the diffusion models the standardized weights themselves
        mean_model: str = "auto"
        mean_kernel: str = "auto"  # the ridge's kernel: "linear", "rbf" or "auto" (by leave-one-dataset-out error)
        residual_scale: float = 1.0  # sampling: ridge mean + scale * generated residual (a truncation knob; <1 = closer to the mean)
        # sampling: the last Linear layer solved in closed form on the condition's train split over the generated
        # body's features (components/head_fit.py): "auto" (when the layout ends in one), "lsq" (required) or "none"
        head_fit: str = "auto"
        # autoencoder
        latent_dim: int = 16
        ae_hidden: int = 256
        ae_depth: int = 2
        ae_steps: int = 1500
        ae_lr: float = 1e-3
        kl_weight: float = 1e-4
        input_noise: float = 1e-3
        latent_noise: float = 0.1
        # conditioning
        set_hidden: int = 64
        cond_dim: int = 64
        max_per_class: int = 64  # context samples per class per training step
        context_per_class: int = 512  # samples per class embedded at sampling time
        align_weight: float = 1.0  # weight of the embedding -> mean-latent alignment loss (0 = off)
        cond_drop: float = 0.1  # classifier-free guidance: P(dataset condition dropped)
        metric_drop: float = 0.3  # P(target-metric condition dropped)
        guidance: float = 2.0  # classifier-free guidance scale; 1 = plain conditional sampling
        # denoiser + schedules
        denoiser_hidden: int = 256
        denoiser_depth: int = 3
        denoiser_dropout: float = 0.0
        steps: int = 3000
        lr: float = 1e-3
        weight_decay: float = 0.0
        batch_size: int = 128
        num_train_timesteps: int = 1000
        beta_schedule: str = "linear"
        prediction_type: str = "sample"  # x0-prediction: far better than epsilon on a few hundred latents
        sample_steps: int = 50
        ema_decay: float = 0.995  # exponential moving average of denoiser + set-encoder weights, used to sample
        seed: int = 0

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise UserError(f"prediction_type {c.prediction_type!r}", "use epsilon, sample or v_prediction")
        if c.mean_model not in ("auto", "ridge", "group-ridge", "none"):
            raise UserError(f"mean_model {c.mean_model!r}", "use 'auto', 'ridge', 'group-ridge' or 'none'")
        if c.mean_kernel not in ("auto", "linear", "rbf"):
            raise UserError(f"mean_kernel {c.mean_kernel!r}", "use 'auto', 'linear' or 'rbf'")
        if c.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise UserError(f"beta_schedule {c.beta_schedule!r}", "use linear, scaled_linear or squaredcos_cap_v2")
        for k in ("latent_dim", "ae_hidden", "set_hidden", "cond_dim", "denoiser_hidden", "batch_size", "sample_steps",
                  "num_train_timesteps", "max_per_class", "context_per_class"):
            if int(getattr(c, k)) < 1:
                raise UserError(f"diffusion option {k}={getattr(c, k)!r}", f"{k} must be >= 1")
        for k in ("steps", "ae_steps"):
            if int(getattr(c, k)) < 0:
                raise UserError(f"diffusion option {k}={getattr(c, k)!r}", f"{k} must be >= 0")
        self.modules: dict[str, nn.Module] = {}

    # ----- modules -------------------------------------------------------------------
    def _build(self) -> None:
        c, layout, info = self.config, self.layout, self.fit_info
        in_features = int(math.prod(info["input_shape"]))
        num_classes = int(info["num_classes"]) if info.get("task", "classification") == "classification" else 0
        target_dim = int(info.get("target_dim", 1))
        vae = WeightVAE(layout.num_params, c.latent_dim, c.ae_hidden, c.ae_depth, c.input_noise, c.latent_noise, c.kl_weight)
        latent_stats = nn.Module()
        latent_stats.register_buffer("mean", torch.zeros(c.latent_dim))
        latent_stats.register_buffer("std", torch.ones(c.latent_dim))
        n_groups = max(1, len(info.get("groups") or []))
        cond = Conditioner(in_features, num_classes, target_dim, len(info.get("metrics", [])), c.set_hidden, c.cond_dim,
                           c.latent_dim, n_groups)
        den = LatentDenoiser(c.latent_dim, c.cond_dim, c.denoiser_hidden, c.denoiser_depth, dropout=c.denoiser_dropout)
        self.modules = {"normalizer": NormalizerState(len(layout)), "vae": vae, "latent": latent_stats,
                        "conditioner": cond, "denoiser": den}
        if c.mean_model != "none":
            self.modules["mean"] = GroupedRidge(info["mean_sets"], statistics_dim(in_features, num_classes, target_dim),
                                                layout.num_params)
            self.modules["residual_normalizer"] = NormalizerState(len(layout))

    def _modules(self) -> dict[str, nn.Module]:
        return self.modules

    def _ddpm(self):
        from diffusers import DDPMScheduler

        c = self.config
        return DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                             prediction_type=c.prediction_type, clip_sample=False)

    def _ddim(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self._ddpm().config, clip_sample=False, set_alpha_to_one=True,
                                         timestep_spacing="trailing")

    def _save_extra(self, directory: Path) -> None:
        self._ddpm().save_config(str(directory / "scheduler"))

    # ----- fitting ------------------------------------------------------------------------
    def _fit(self, weights, datasets, index, metrics, groups, progress) -> None:
        c = self.config
        layout = self.layout
        task, k = common_task(datasets)
        g = torch.Generator().manual_seed(c.seed)
        self.fit_info.update({"input_shape": list(datasets[0].input_shape), "num_classes": k, "task": task,
                              "metrics": sorted(metrics)})
        if task == "regression":
            self.fit_info["target_dim"] = int(datasets[0].output_dim)
        n_groups = max(1, len(self.fit_info.get("groups") or []))
        ridge_groups = groups if c.mean_model == "group-ridge" else torch.zeros_like(groups)
        # the built module's shape; "auto" replaces it with the chosen one in _fit_mean
        self.fit_info["mean_sets"] = sets_per_group(index, ridge_groups, n_groups if c.mean_model == "group-ridge" else 1)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)  # module init and the noise inside training steps
        try:
            self._build()
            total = c.ae_steps + c.steps
            if progress:
                progress(0, total=total, info="autoencoder")
            vae, lat = self.modules["vae"], self.modules["latent"]
            norm = self.modules["normalizer"].set(Normalizer.fit(weights, layout))
            x = norm.transform(weights, torch.float32)
            x, ridge_groups = self._fit_mean(x, datasets, index, groups, ridge_groups)
            ae_hist = self._train_vae(vae, x, g, progress)
            vae.eval()
            with torch.no_grad():
                mu = vae.encode(x)[0]
                lat.mean.copy_(mu.mean(0))
                lat.std.copy_(mu.std(0).clamp_min(1e-4) if len(mu) > 1 else torch.ones_like(mu[0]))
                z = (mu - lat.mean) / lat.std
                mean = self._mean_for(datasets)
                recon = self._to_weights(vae.decode(mu), None if mean is None else mean[ridge_groups, index])
            rel = float((recon - weights).norm() / weights.norm().clamp_min(1e-12))
            if progress:
                progress(0, info="diffusion")
            dn_hist = self._train_denoiser(z, datasets, index, metrics, groups, g, progress)
        finally:
            torch.random.set_rng_state(torch_state)
        for m in self.modules.values():
            m.eval()
        self.fit_info.update({"ae_final_mse": ae_hist, "ae_relative_recon_error": rel, "diffusion_final_loss": dn_hist})

    def _fit_mean(self, x: torch.Tensor, datasets: list[Dataset], index: torch.Tensor, groups: torch.Tensor,
                  ridge_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit the ridge mean model(s); returns (what the autoencoder models: standardized residuals, or x;
        each row's ridge group).

        mean_model="auto" fits a shared ridge and (with several init groups) one per group and
        keeps the one whose leave-one-dataset-out error per model is lower: the choice that
        predicts a dataset the generator never saw best (fit_info["mean_choice"]). A candidate
        that reproduces its training models (in-sample residual below INTERPOLATES of their
        variance, e.g. a linear per-group ridge with more statistics than datasets) is passed
        over while another one is left: it leaves the diffusion nothing to model, so every
        sample for a seen dataset would be a copy (measured on digits-pairs: aligned NN-L2 to
        the training set 0.01, against 0.86 with the shared ridge, at lower held-out accuracy).
        """
        c = self.config
        if c.mean_model == "none":
            return x, ridge_groups
        k = int(self.fit_info["num_classes"]) if self.fit_info["task"] == "classification" else 0
        stats = torch.stack([dataset_statistics(d.x_train, d.y_train, k) for d in datasets])
        if c.mean_model == "auto":
            n_groups = max(1, len(self.fit_info.get("groups") or []))
            options = [("shared", torch.zeros_like(groups), 1)] + ([("per-group", groups, n_groups)] if n_groups > 1 else [])
            fits = []
            for name, g, ng in options:
                sets = sets_per_group(index, g, ng)
                module = GroupedRidge(sets, stats.shape[1], x.shape[1])
                diag = module.fit(stats, x, index, g, kernel=c.mean_kernel)
                self.fit_info[f"mean_loo_model_error_{name}"] = diag["mean_loo_model_error"]
                self.fit_info[f"mean_insample_residual_{name}"] = diag["mean_insample_residual"]
                fits.append((diag["mean_insample_residual"] < INTERPOLATES, diag["mean_loo_model_error"], name, g, sets,
                             module, diag))
            _, _, name, ridge_groups, sets, module, diag = min(fits, key=lambda f: (f[0], f[1]))
            self.modules["mean"] = module
            self.fit_info.update({"mean_sets": sets, "mean_choice": name, **diag})
        else:
            self.fit_info.update(self.modules["mean"].fit(stats, x, index, ridge_groups, kernel=c.mean_kernel))
            self.fit_info["mean_choice"] = "per-group" if c.mean_model == "group-ridge" else "shared"
        resid = x - self.modules["mean"](stats)[ridge_groups, index]
        rn = self.modules["residual_normalizer"].set(Normalizer.fit(resid, self.layout))
        return rn.transform(resid, torch.float32), ridge_groups

    def _mean_for(self, datasets: list[Dataset]) -> torch.Tensor | None:
        """[G, D, P]: each group's ridge prediction (standardized weights) for each dataset; None without a mean model."""
        if self.config.mean_model == "none":
            return None
        k = int(self.fit_info["num_classes"]) if self.fit_info["task"] == "classification" else 0
        return self.modules["mean"](torch.stack([dataset_statistics(d.x_train, d.y_train, k) for d in datasets]))

    def _to_weights(self, x: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        """Autoencoder outputs [n, P] (+ ridge mean [n, P]) -> weights in the layout's dtype."""
        if mean is not None:
            resid = self.modules["residual_normalizer"].normalizer(self.layout).inverse(x, torch.float32)
            x = mean + self.config.residual_scale * resid
        return self.modules["normalizer"].normalizer(self.layout).inverse(x)

    def _train_vae(self, vae: WeightVAE, x: torch.Tensor, g: torch.Generator, progress) -> float:
        c = self.config
        if c.ae_steps == 0:
            return float("nan")
        opt = torch.optim.AdamW(vae.parameters(), lr=c.ae_lr, weight_decay=0.0)
        sched = warmup_cosine(opt, c.ae_steps)
        vae.train()
        bs = min(c.batch_size, len(x))
        ema = None
        for step in range(c.ae_steps):
            idx = torch.randint(len(x), (bs,), generator=g)
            loss, parts = vae.loss(x[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema = parts["mse"] if ema is None else 0.98 * ema + 0.02 * parts["mse"]
            if progress and (step + 1) % 50 == 0:
                progress(50, info=f"autoencoder mse {ema:.4f}")
        if progress and c.ae_steps % 50:
            progress(c.ae_steps % 50)
        return float(ema)

    def _train_denoiser(self, z, datasets, index, metrics, groups, g, progress) -> float:
        c = self.config
        if c.steps == 0:
            return float("nan")
        cond, den = self.modules["conditioner"], self.modules["denoiser"]
        metric_names = sorted(metrics)
        mvals = torch.stack([metrics[m] for m in metric_names], 1) if metric_names else None
        if mvals is not None:
            cond.metric_mean.copy_(mvals.mean(0))
            cond.metric_std.copy_(mvals.std(0).clamp_min(1e-3) if len(mvals) > 1 else torch.ones(mvals.shape[1]))
        k = int(self.fit_info["num_classes"]) if self.fit_info["task"] == "classification" else 0
        contexts = ContextTable(datasets, k)
        # each dataset's mean latent: what the embedding is aligned to (D2NWG aligns its dataset encoder to the weights)
        zbar = torch.zeros(len(datasets), z.shape[1]).index_add_(0, index, z)
        zbar /= torch.bincount(index, minlength=len(datasets)).clamp_min(1)[:, None].to(z.dtype)
        scheduler = self._ddpm()
        params = list(cond.parameters()) + list(den.parameters())
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        sched = warmup_cosine(opt, c.steps)
        shadow = [p.detach().clone() for p in params]
        cond.train()
        den.train()
        bs = min(c.batch_size, len(z))
        m = c.max_per_class
        ema = None
        for step in range(c.steps):
            idx = torch.randint(len(z), (bs,), generator=g)
            # a fresh context subset per dataset (with replacement): m samples per class
            xs, ys, set_index, n_sets, uniq, inv = contexts.draw(index[idx], m, g)
            emb_u = cond.set_encoder(xs, ys, set_index, n_sets)
            emb = emb_u[inv]
            drop_ds = torch.rand(bs, generator=g) < c.cond_drop
            mv = mvals[idx] if mvals is not None else None
            drop_m = torch.rand(bs, generator=g) < c.metric_drop if mvals is not None else None
            cvec = cond.combine(emb, drop_ds, mv, drop_m, groups[idx])
            z0 = z[idx]
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, c.num_train_timesteps, (bs,), generator=g)
            zt = scheduler.add_noise(z0, noise, t)
            pred = den(zt, t, cvec)
            if c.prediction_type == "epsilon":
                target = noise
            elif c.prediction_type == "sample":
                target = z0
            else:
                target = scheduler.get_velocity(z0, noise, t)
            loss = F.mse_loss(pred, target)
            if c.align_weight > 0:
                loss = loss + c.align_weight * F.mse_loss(cond.align(emb_u), zbar[uniq])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(shadow, params, 1.0 - min(c.ema_decay, (1.0 + step) / (10.0 + step)))
            ema = float(loss.detach()) if ema is None else 0.98 * ema + 0.02 * float(loss.detach())
            if progress and (step + 1) % 50 == 0:
                progress(50, info=f"diffusion loss {ema:.4f}")
        if progress and c.steps % 50:
            progress(c.steps % 50)
        with torch.no_grad():  # sample with the exponential moving average of the weights
            for p, q in zip(params, shadow):
                p.copy_(q)
        return float(ema)

    # ----- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, dataset: Dataset) -> torch.Tensor:
        """The set-encoder embedding [cond_dim] of a dataset, from (at most context_per_class per class of) its train split."""
        return embed_dataset(self.modules["conditioner"].set_encoder, dataset, self.config.context_per_class)

    @torch.no_grad()
    def _sample(self, n: int, dataset: Dataset, target: dict[str, float], seed: int) -> torch.Tensor:
        c = self.config
        cond, den, vae = self.modules["conditioner"], self.modules["denoiser"], self.modules["vae"]
        lat = self.modules["latent"]
        emb = self.embed(dataset).expand(n, -1)
        keep = torch.zeros(n, dtype=torch.bool)
        mv = None
        if target:
            names = self.fit_info.get("metrics", [])
            missing = [k for k in names if k not in target]
            if missing:
                raise UserError(f"target gives {sorted(target)} but the generator conditions on {names} together",
                                f"give all of {names}")
            mv = torch.tensor([[float(target[k]) for k in names]]).expand(n, -1)
        n_groups = max(1, len(self.fit_info.get("groups") or []))
        # which init group each sample is generated "from": its own stream, so n_groups = 1 draws nothing
        group = (torch.randint(n_groups, (n,), generator=torch.Generator().manual_seed(int(seed) + 7919))
                 if n_groups > 1 else torch.zeros(n, dtype=torch.long))
        cvec = cond.combine(emb, keep, mv, keep if mv is not None else None, group)
        if c.guidance != 1.0:
            uvec = cond.combine(emb, ~keep, None, None, group)
        g = torch.Generator().manual_seed(int(seed))
        zt = torch.randn(n, c.latent_dim, generator=g)
        ddim = self._ddim()
        ddim.set_timesteps(c.sample_steps)
        for t in ddim.timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long)
            pred = den(zt, tt, cvec)
            if c.guidance != 1.0:
                upred = den(zt, tt, uvec)
                pred = upred + c.guidance * (pred - upred)
            zt = ddim.step(pred, int(t), zt, eta=0.0).prev_sample
        mean = self._mean_for([dataset])
        if mean is not None:
            mean = mean[group, 0] if len(mean) > 1 else mean[0, 0].expand(n, -1)
        w = self._to_weights(vae.decode(zt * lat.std + lat.mean), mean)
        return w.contiguous()
