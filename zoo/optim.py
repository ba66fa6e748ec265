"""Functional optimizers for a population: every model its own hyperparameters.

A cohort's parameters live in one flat [M, P] tensor (M models, P parameters
each). The optimizers here update it in place with [M]-shaped learning rates,
momenta, betas and weight decays, so one cohort can hold models whose
hyperparameters differ. The arithmetic follows `torch.optim.SGD`, `Adam` and
`AdamW` step for step (tests compare against them), which is what lets a model
trained inside a cohort match the same model trained alone.

    opt = PopulationOptimizer("adam", lr=torch.tensor([1e-3, 3e-3]), weight_decay=torch.zeros(2))
    opt.step(params, grads, lr_factor=cosine(step, total))   # params, grads: [M, P]

The buffers (`state_vector()`) and the step counter are what resuming needs;
`lr_factor` gives the schedules (constant, cosine, one-cycle) as the factor
applied to each model's base learning rate at update `step` (0-based).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from store.errors import UserError
from store.layout import ParamLayout

BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}
DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"momentum": 0.0, "weight_decay": 0.0},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


def _col(v: Any, m: int, name: str, device, dtype) -> torch.Tensor:
    """A scalar or [M] sequence -> an [M, 1] tensor (broadcasts over parameters)."""
    t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(m)
    if t.numel() != m:
        raise UserError(f"optimizer hyperparameter {name} has {t.numel()} values for {m} models", "give one per model")
    return t.to(device=device, dtype=dtype).reshape(m, 1).clone()


class PopulationOptimizer:
    """SGD (with momentum) / Adam / AdamW over a flat [M, P] parameter tensor.

    Hyperparameters are scalars or [M] tensors; `lr` is the base learning rate,
    multiplied at each step by `lr_factor` (the schedule). `step_count` counts
    updates taken (the same for every model of a cohort).
    """

    def __init__(self, kind: str, lr, num_params: int, *, momentum=None, weight_decay=None, beta1=None, beta2=None,
                 eps=None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if kind not in BUFFERS:
            raise UserError(f"unknown optimizer {kind!r}", f"use one of: {', '.join(BUFFERS)}")
        lr_t = torch.as_tensor(lr, dtype=torch.float64).reshape(-1)
        if not bool((lr_t > 0).all()):
            raise UserError(f"learning rates {lr_t.tolist()[:8]} include a value <= 0", "give lr > 0")
        self.kind = kind
        self.m = lr_t.numel()
        self.num_params = int(num_params)
        self.device, self.dtype = torch.device(device), dtype
        d = DEFAULTS[kind]
        given = {"momentum": momentum, "weight_decay": weight_decay, "beta1": beta1, "beta2": beta2, "eps": eps}
        self.hp: dict[str, torch.Tensor] = {"lr": _col(lr_t, self.m, "lr", device, torch.float64)}
        for k, default in d.items():
            v = given[k]
            self.hp[k] = _col(default if v is None else v, self.m, k, device, torch.float64)
        self.step_count = 0
        self.state: dict[str, torch.Tensor] = {
            b: torch.zeros(self.m, self.num_params, device=device, dtype=dtype) for b in BUFFERS[kind]}
        self._cast()

    def _cast(self) -> None:
        """Working copies of the hyperparameters in the parameter dtype (computed once, not per step)."""
        self._wd = self.hp["weight_decay"].to(self.dtype)
        self._any_wd = bool((self.hp["weight_decay"] != 0).any())
        if self.kind == "sgd":
            self._mom = self.hp["momentum"].to(self.dtype)
        else:
            self._one_minus_b1 = (1 - self.hp["beta1"]).to(self.dtype)
            self._one_minus_b2 = (1 - self.hp["beta2"]).to(self.dtype)
            self._b2 = self.hp["beta2"].to(self.dtype)
            self._eps = self.hp["eps"].to(self.dtype)

    # ----- the update -------------------------------------------------------
    @torch.no_grad()
    def step(self, params: torch.Tensor, grads: torch.Tensor | Sequence[torch.Tensor], lr_factor: float = 1.0) -> None:
        """One update of every model, in place on `params` ([M, P]).

        grads: [M, P], or the per-tensor gradients [M, *shape] in layout order
        (what autograd returns for the views of `params`): then each slice of
        `params` is updated from its own gradient, without concatenating them.
        """
        self.step_count += 1
        lr = self.hp["lr"] * lr_factor  # [M, 1] float64
        if isinstance(grads, torch.Tensor):
            pieces = [(params, grads, {b: v for b, v in self.state.items()})]
        else:
            pieces, off = [], 0
            for g in grads:
                g = g.reshape(self.m, -1)
                n = g.shape[1]
                pieces.append((params[:, off:off + n], g, {b: v[:, off:off + n] for b, v in self.state.items()}))
                off += n
            if off != self.num_params:
                raise UserError(f"gradients cover {off} parameters, the optimizer holds {self.num_params}",
                                "pass one gradient per tensor of the layout, in layout order")
        if self.kind == "sgd":
            neg_lr = (-lr).to(self.dtype)
            for p, g, st in pieces:
                if self._any_wd:
                    g = g.addcmul(p, self._wd)
                buf = st["momentum_buffer"]
                buf.mul_(self._mom).add_(g)
                p.addcmul_(buf, neg_lr)
            return
        t = self.step_count
        bc1 = 1 - self.hp["beta1"] ** t
        bc2_sqrt = (1 - self.hp["beta2"] ** t).sqrt().to(self.dtype)
        neg_step_size = (-lr / bc1).to(self.dtype)
        decay = (1 - lr * self.hp["weight_decay"]).to(self.dtype) if self.kind == "adamw" and self._any_wd else None
        for p, g, st in pieces:
            if decay is not None:
                p.mul_(decay)
            elif self.kind == "adam" and self._any_wd:
                g = g.addcmul(p, self._wd)
            exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
            exp_avg.lerp_(g, self._one_minus_b1)
            exp_avg_sq.mul_(self._b2).addcmul_(g * self._one_minus_b2, g)
            denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(self._eps)
            p.addcdiv_(exp_avg * neg_step_size, denom)

    # ----- state for checkpoints and resume --------------------------------
    def state_vector(self) -> torch.Tensor:
        """[M, K * P]: the buffers side by side (BUFFERS[kind] order)."""
        return torch.cat([self.state[b] for b in BUFFERS[self.kind]], dim=1)

    def load_state_vector(self, vec: torch.Tensor, step_count: int) -> None:
        k = len(BUFFERS[self.kind])
        if tuple(vec.shape) != (self.m, k * self.num_params):
            raise UserError(f"optimizer state has shape {tuple(vec.shape)}, expected {(self.m, k * self.num_params)}",
                            "resume with the optimizer and architecture the state was written for")
        for i, b in enumerate(BUFFERS[self.kind]):
            self.state[b].copy_(vec[:, i * self.num_params:(i + 1) * self.num_params])
        self.step_count = int(step_count)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at indices `keep` (a cohort dropping diverged models)."""
        keep = keep.to(self.device)
        self.hp = {k: v.index_select(0, keep) for k, v in self.hp.items()}
        self.state = {k: v.index_select(0, keep) for k, v in self.state.items()}
        self.m = int(keep.numel())
        self._cast()


def state_layout(layout: ParamLayout, kind: str) -> ParamLayout:
    """Layout of an optimizer-state vector: one block per buffer, each shaped like the parameters
    (the trainable ones: a model's BatchNorm statistics have no optimizer state)."""
    return ParamLayout([(f"{b}/{e.name}", e.shape) for b in BUFFERS[kind] for e in layout.param_entries], "float32",
                       {"name": f"optimizer-state:{kind}", "params_layout_id": layout.layout_id})


# ----- schedules -----------------------------------------------------------------
def lr_factor(schedule: Mapping[str, Any], step: int, total_steps: int) -> float:
    """Factor on the base lr at update `step` (0-based) of `total_steps`.

    constant: 1. cosine: final + (1 - final) * (1 + cos(pi * step / total)) / 2
    (torch's CosineAnnealingLR with eta_min = final_lr_fraction * lr).
    onecycle: torch's OneCycleLR (cosine annealing, two phases): from
    1/div_factor up to 1 over the first pct_start of the steps, then down to
    1/(div_factor * final_div_factor). Momentum is not cycled.
    """
    name = schedule.get("name", "constant")
    if name == "constant":
        return 1.0
    if name == "cosine":
        fr = float(schedule.get("final_lr_fraction", 0.0))
        return fr + (1 - fr) * (1 + math.cos(math.pi * step / max(total_steps, 1))) / 2
    if name == "onecycle":
        div = float(schedule.get("div_factor", 25.0))
        final_div = float(schedule.get("final_div_factor", 1e4))
        pct = float(schedule.get("pct_start", 0.3))
        initial, peak, final = 1.0 / div, 1.0, 1.0 / (div * final_div)
        end1 = float(pct * total_steps) - 1
        end2 = float(total_steps - 1)

        def anneal(start: float, end: float, frac: float) -> float:
            return end + (start - end) / 2.0 * (math.cos(math.pi * frac) + 1)

        if step <= end1:
            return anneal(initial, peak, step / end1 if end1 > 0 else 1.0)
        span = end2 - end1
        return anneal(peak, final, (step - end1) / span if span > 0 else 1.0)
    raise UserError(f"unknown schedule {name!r}", "use one of: constant, cosine, onecycle")
