"""Hypernetworks as a generator family (`--method hyper`): dataset embedding + noise -> a target network's weights.

    gen = HyperNetwork(arch="rnn", mode="task").fit_tasks(layout, ["digits-pair:0-1", "digits-pair:2-3"])
    gen = HyperNetwork.fit(store, where, mode="both")      # zoo checkpoints as extra supervision
    gen = HyperNetwork(continual=True).fit_tasks(layout, tasks)   # tasks one at a time (continual.py)
    w, layout = gen.sample(256, "digits-pair:4-7", seed=0)   # 256 noise draws -> 256 distinct models

What is generated, per row:

    u = [dataset embedding, target metric (optional), z]          z: one noise draw per model
    MIP on:  u' = mip_encode([sigmoid(embedding), metric in [0, 1], z ~ U[0, 1]])   (constant norm)
             w  = theta_0 + scales * net(u')         theta_0: Kaiming init, the zoo's mean, or a checkpoint
    MIP off: w  = net([embedding, metric in [0, 1], z ~ N(0, 1)])                  (the plain parametrization)

Classification with `imprint` (default): the last layer also gets the generated network's own
class-mean features of the condition's train samples (imprint.py), so class roles come from the
task's samples. `net` is one of nets.py's architectures (mlp, chunked, rnn); `scales` are theta_0's per-tensor
stds (encoding.tensor_scales), so the delta head works in units of each tensor's init scale.
The embedding is the shared set encoder (components/set_encoder.py) over the dataset's train
split, trained with the hypernetwork, so an unseen dataset gets weights zero-shot. Buffers
(BatchNorm statistics) are not generated: they are theta_0's.

Fit modes (training.py): `task` trains on each seen task's own loss through the fused
functional forward and needs no zoo weights (`fit_tasks(layout, dataset names)`); `zoo`
regresses onto the zoo's aligned checkpoints (nearest of k noise draws, IMLE); `both` adds
the two. `diversity` > 0 adds a repulsion between the noise draws of one task, so that z
selects distinct solutions instead of being ignored. `continual=True` learns the tasks one at
a time with Chandra et al.'s output regularizer (continual.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import torch
from torch import nn

from generators.components.set_encoder import SetEncoder, embed_dataset
from generators.hyper.imprint import Imprint
from generators.hyper.encoding import MetricRange, checkpoint_theta0, kaiming_theta0, mip_encode, tensor_scales, to_unit
from generators.hyper.nets import ARCHS, build_net, init_output, plan_chunks
from generators.interface import WeightGenerator
from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset

MODES = ("task", "zoo", "both")


def context_samples(dataset: Dataset, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` train samples of each class (what embed_dataset embeds): deterministic."""
    x, y = dataset.x_train, dataset.y_train
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(int(dataset.num_classes))])
    return x[keep], y[keep]


def theta0_seed(seed: int) -> int:
    """The torch seed of theta_0's Kaiming draw: derived from the fit seed, so it is not the init of the zoo's
    model with that seed (zoo models are built right after torch.manual_seed(their seed))."""
    return int(hashlib.sha256(f"hyper-theta0:{int(seed)}".encode()).hexdigest()[:8], 16)


class HyperHead(nn.Module):
    """The hypernetwork proper: u -> flat weights [B, P] (theta_0 + scaled delta with MIP; plain output without)."""

    def __init__(self, net: nn.Module, layout: ParamLayout, mip: bool):
        super().__init__()
        self.net, self.mip = net, bool(mip)
        self.num_trainable = layout.num_trainable
        self.register_buffer("theta0", torch.zeros(layout.num_params))
        self.register_buffer("scales", torch.ones(layout.num_trainable))

    def forward(self, u: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """noise [B, P_train] (init_noise x N(0, 1)): added in units of `scales`, a per-model init perturbation."""
        out = self.net(u)
        p = self.num_trainable
        train = self.theta0[:p] + self.scales * out if self.mip else out
        if noise is not None:
            train = train + self.scales * noise
        if len(self.theta0) == p:
            return train
        return torch.cat([train, self.theta0[p:].expand(len(u), -1)], 1)


class TaskTable(nn.Module):
    """Continual mode: one embedding per learned task (rows in fit_info['continual_tasks'] order)."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.register_buffer("emb", torch.zeros(n, dim))


class HyperNetwork(WeightGenerator):
    """Hypernetwork (mlp / chunked / rnn, MIP on or off) from dataset embedding + noise to weights; task, zoo or both."""

    method = "hyper"
    needs_weights = False

    @dataclasses.dataclass
    class Config:
        arch: str = "mlp"  # mlp (one head) | chunked (chunk embeddings, shared head) | rnn (GRU over chunks)
        mip: bool = True  # magnitude-invariant parametrization (constant-norm inputs, theta_0 + delta)
        mode: str = "task"  # task (the tasks' own loss) | zoo (regress onto checkpoints) | both
        continual: bool = False  # tasks one at a time with an output regularizer (continual.py)
        theta0: str = "kaiming"  # kaiming | zoo-mean (zoo/both modes) | PATH.safetensors (a checkpoint)
        hidden: int = 128
        depth: int = 2
        chunk_size: Any = "auto"  # chunked / rnn: values per chunk ("auto": ~2 sqrt(P), a power of two)
        chunk_emb: int = 16
        z_dim: int = 8  # noise input: one draw per generated model
        cond_dim: int = 32  # dataset embedding size
        set_hidden: int = 64
        out_init: float = 0.1  # std of the initial delta, in units of each tensor's theta_0 std
        steps: int = 1500  # optimizer steps (continual: per task)
        lr: float = 1e-3
        weight_decay: float = 0.0
        tasks_per_step: int = 16  # tasks in one fused forward
        z_per_task: int = 4  # noise draws per task per step
        batch_size: int = 64  # train samples per task per step
        max_per_class: int = 32  # context samples per class for the embedding per step
        context_per_class: int = 512  # samples per class embedded at sampling time
        imprint: bool = True  # classification: the last layer + the model's own class-mean features (imprint.py)
        permute_labels: bool = True  # task / both: half the drawn tasks with their classes relabelled (training.py)
        # per-model perturbation of theta_0 (x its per-tensor std), one draw per model: distinct bodies, like fresh
        # inits; "auto": 1.0 where the imprinted head adapts the last layer to each body, else 0
        init_noise: Any = "auto"
        diversity: float = 0.0  # weight of the repulsion between a task's noise draws (losses.repulsion)
        zoo_weight: float = 1.0  # both: weight of the zoo regression next to the task loss
        zoo_batch: int = 32  # zoo/both: checkpoints per step
        continual_beta: float = 10.0  # continual: weight of the output regularizer
        continual_snapshots: int = 4  # continual: fixed noise draws whose outputs are kept per earlier task
        continual_embedding: str = "random"  # continual: a task's embedding starts as a random code, or "dataset" (set encoder)
        continual_emb_lr: float = 10.0  # continual: learning rate of a task's embedding, as a multiple of lr
        seed: int = 0

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.arch not in ARCHS:
            raise UserError(f"unknown hypernetwork arch {c.arch!r}", f"use --set arch=one of {', '.join(ARCHS)}")
        if c.mode not in MODES:
            raise UserError(f"unknown hypernetwork fit mode {c.mode!r}", f"use --set mode=one of {', '.join(MODES)}")
        for k in ("mip", "continual", "permute_labels", "imprint"):
            if not isinstance(getattr(c, k), bool):
                raise UserError(f"hyper option {k}={getattr(c, k)!r} is not true/false", f"give --set {k}=true or false")
        for k in ("hidden", "depth", "chunk_emb", "z_dim", "cond_dim", "set_hidden", "tasks_per_step", "z_per_task",
                  "batch_size", "max_per_class", "context_per_class", "zoo_batch", "continual_snapshots"):
            v = getattr(c, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"hyper option {k}={v!r}", f"{k} must be an integer >= 1")
        if isinstance(c.steps, bool) or not isinstance(c.steps, int) or c.steps < 0:
            raise UserError(f"hyper option steps={c.steps!r}", "steps must be an integer >= 0")
        for k in ("lr", "out_init", "diversity", "zoo_weight", "continual_beta", "continual_emb_lr", "weight_decay"):
            v = getattr(c, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"hyper option {k}={v!r}", f"{k} must be a number >= 0")
        if c.init_noise != "auto" and (isinstance(c.init_noise, bool) or not isinstance(c.init_noise, (int, float))
                                       or not math.isfinite(c.init_noise) or c.init_noise < 0):
            raise UserError(f"hyper option init_noise={c.init_noise!r}", "give init_noise=auto or a number >= 0")
        if c.chunk_size != "auto" and (isinstance(c.chunk_size, bool) or not isinstance(c.chunk_size, int)):
            raise UserError(f"chunk_size {c.chunk_size!r}", "give chunk_size=auto or a positive integer")
        if not isinstance(c.theta0, str) or not c.theta0:
            raise UserError(f"theta0 {c.theta0!r}", "give theta0=kaiming, zoo-mean or a .safetensors path")
        if c.theta0 == "zoo-mean" and c.mode == "task":
            raise UserError("theta0=zoo-mean needs zoo weights, but mode=task uses none",
                            "use theta0=kaiming (or a checkpoint path), or mode=zoo / both")
        if c.continual_embedding not in ("random", "dataset"):
            raise UserError(f"continual_embedding {c.continual_embedding!r}", "use random or dataset")
        if c.continual and c.mode != "task":
            raise UserError(f"continual mode learns from the tasks' loss, not mode={c.mode}", "use mode=task with continual")
        self.modules: dict[str, nn.Module] = {}
        self.history: dict[str, list[float]] = {}  # per-step curves of the last fit (not saved)

    # ----- modules -----------------------------------------------------------------
    def in_dim(self) -> int:
        c, info = self.config, self.fit_info
        d = c.cond_dim + len(info.get("metrics") or []) + c.z_dim
        return 2 * d if c.mip else d

    def _build(self) -> None:
        c, layout, info = self.config, self.layout, self.fit_info
        in_features = int(math.prod(info["input_shape"]))
        k = int(info["num_classes"]) if info.get("task", "classification") == "classification" else 0
        net = build_net(c.arch, self.in_dim(), layout, c.hidden, c.depth, c.chunk_size, c.chunk_emb)
        self.modules = {"encoder": SetEncoder(in_features, k, int(info.get("target_dim", 1)), c.set_hidden, c.cond_dim),
                        "hyper": HyperHead(net, layout, c.mip)}
        if info.get("metrics"):
            self.modules["metric"] = MetricRange(len(info["metrics"]))
        if info.get("imprint"):
            self.modules["imprint"] = Imprint.for_layout(layout, k)
        if info.get("continual_tasks"):
            self.modules["tasks"] = TaskTable(len(info["continual_tasks"]), c.cond_dim)

    def _modules(self) -> dict[str, nn.Module]:
        return self.modules

    # ----- the generated row's inputs ------------------------------------------------------
    def draw_z(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n noise inputs: U[0, 1] with MIP (its encoding's domain), N(0, 1) without."""
        z_dim = self.config.z_dim
        return torch.rand(n, z_dim, generator=generator) if self.config.mip else torch.randn(n, z_dim, generator=generator)

    def init_noise(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """[n, P_train] per-model init perturbations (None when init_noise = 0)."""
        amp = self.config.init_noise
        if amp == "auto":
            amp = 1.0 if self.fit_info.get("imprint") else 0.0
        if not amp:
            return None
        return float(amp) * torch.randn(n, self.layout.num_trainable, generator=generator)

    def inputs(self, emb: torch.Tensor, metric: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] hypernetwork input from embedding [B, cond_dim], metric [B, M] (raw values) and z [B, z_dim]."""
        parts = [to_unit(emb) if self.config.mip else emb]
        if "metric" in self.modules:
            parts.append(self.modules["metric"](metric))
        parts.append(z)
        u = torch.cat(parts, 1)
        return mip_encode(u) if self.config.mip else u

    def embedding(self, dataset: Dataset) -> torch.Tensor:
        """[cond_dim]: a continual task's learned embedding, else the set encoder's over the train split."""
        names = self.fit_info.get("continual_tasks") or []
        if dataset.name in names and "tasks" in self.modules:
            return self.modules["tasks"].emb[names.index(dataset.name)]
        return embed_dataset(self.modules["encoder"], dataset, self.config.context_per_class)

    # ----- fitting -------------------------------------------------------------------------
    def _prepare(self, layout: ParamLayout, datasets: list[Dataset], metrics: list[str]) -> None:
        """Check the tasks against the layout, record what _build needs, build, set theta_0 (before training)."""
        from wsl.evaluate import check_fit

        for d in datasets:
            try:
                check_fit(layout, d, "train")
            except UserError as e:
                raise UserError(f"task {d.name!r} does not fit the generated models' layout {layout.layout_id}: "
                                f"{e.message}", "fit on tasks with the input shape and class count of the layout "
                                f"(or give the layout of an architecture built for them)") from None
        kinds = {(d.task, int(d.num_classes), int(math.prod(d.input_shape))) for d in datasets}
        if len(kinds) != 1:
            raise UserError(f"the tasks mix task kinds / class counts / input sizes {sorted(kinds)}",
                            "fit one generator per kind of task")
        plan_chunks(layout.num_trainable, self.config.chunk_size) if self.config.arch != "mlp" else None
        d0 = datasets[0]
        self.fit_info.update({"input_shape": list(d0.input_shape), "num_classes": int(d0.num_classes), "task": d0.task,
                              "metrics": list(metrics), "mode": self.config.mode})
        if d0.task == "regression":
            self.fit_info["target_dim"] = int(d0.output_dim)
        if self.config.continual:
            self.fit_info["continual_tasks"] = [d.name for d in datasets]
        # imprinting reads the task's samples at sampling time: off in continual mode (no old task's data)
        self.fit_info["imprint"] = bool(self.config.imprint and not self.config.continual and d0.task == "classification"
                                        and Imprint.for_layout(layout, int(d0.num_classes)) is not None)
        torch.manual_seed(self.config.seed)  # here, after the checks: their first call builds (and caches) a module
        self._build()

    def _set_theta0(self, weights: torch.Tensor | None) -> None:
        c, layout, head = self.config, self.layout, self.modules["hyper"]
        if c.theta0 == "kaiming":
            t0 = kaiming_theta0(layout, theta0_seed(c.seed))
        elif c.theta0 == "zoo-mean":
            t0 = weights.mean(0)
        else:
            t0 = checkpoint_theta0(layout, c.theta0)
        head.theta0.copy_(t0)
        head.scales.copy_(tensor_scales(layout, kaiming_theta0(layout, theta0_seed(c.seed))))

    def _fit_tasks(self, layout: ParamLayout, datasets: list[Dataset], progress) -> None:
        if self.config.mode != "task":
            raise UserError(f"mode={self.config.mode} regresses onto zoo checkpoints, but fit_tasks gives none",
                            "use mode=task, or fit(store, where) / `wsl generate fit --where ...` for zoo / both")
        self._run_fit(layout, datasets, None, None, {}, progress)

    def _fit(self, weights, datasets, index, metrics, groups, progress) -> None:
        if self.config.mode == "task":  # the zoo's weights are not used; its tasks are
            self._run_fit(self.layout, datasets, None, None, {}, progress)
        else:
            self._run_fit(self.layout, datasets, weights, index, metrics, progress)

    def _run_fit(self, layout, datasets, weights, index, metrics, progress) -> None:
        from generators.hyper.continual import train_continual
        from generators.hyper.training import train_joint

        c = self.config
        self.layout = layout
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)
        try:
            self._prepare(layout, datasets, sorted(metrics))
            self._set_theta0(weights)
            init_output(self.modules["hyper"].net, c.out_init) if c.mip else None
            if c.continual:
                self.history = train_continual(self, datasets, progress)
            else:
                self.history = train_joint(self, datasets, weights, index, metrics, progress)
        finally:
            torch.random.set_rng_state(torch_state)
        for m in self.modules.values():
            m.eval()
        self.fit_info.update({k: round(v[-1], 6) for k, v in self.history.items() if v and k.startswith("final_")})

    # ----- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def _sample(self, n: int, dataset: Dataset, target: dict[str, float], seed: int) -> torch.Tensor:
        emb = self.embedding(dataset).expand(n, -1)
        metric = None
        if "metric" in self.modules:
            names = self.fit_info["metrics"]
            missing = [k for k in names if k not in target] if target else []
            if missing:
                raise UserError(f"target gives {sorted(target)} but the generator conditions on {names} together",
                                f"give all of {names}")
            # no target: the best value the training population had (the range's top)
            row = torch.tensor([float(target[k]) for k in names]) if target else self.modules["metric"].high
            metric = row.expand(n, -1)
        g = torch.Generator().manual_seed(int(seed))
        z = self.draw_z(n, g)
        w = self.modules["hyper"](self.inputs(emb, metric, z), self.init_noise(n, g))
        if "imprint" in self.modules:
            x, y = context_samples(dataset, self.config.context_per_class)
            w = self.modules["imprint"](w, self.layout, x.to(torch.float32), y, shared=True)
        return w.contiguous()

    # ----- the benchmark harness's method-specific figures (generators/evaluation/harness.py) --------------------
    def benchmark_figures(self, context) -> dict[str, Any]:
        """What the hypernetwork is, and how different its models of one task are from each other, next to the zoo's.

        Disagreement: the mean fraction of test samples on which two models of one task predict different
        classes, over pairs (generated-generated, zoo-zoo), averaged over the first 6 evaluated seen tasks;
        it is defined where IoU of mistakes is not (models that make no mistake).
        """
        c = self.config
        out: dict[str, Any] = {"hyper_arch": c.arch, "hyper_mip": c.mip, "hyper_mode": c.mode,
                               "hyper_params": sum(p.numel() for m in self.modules.values() for p in m.parameters()),
                               "hyper_final_task_loss": self.fit_info.get("final_task_loss")}
        gen_d, zoo_d = [], []
        for task in list(context.seen_sample)[:6]:
            w, _ = self.sample(min(context.n, 32), task, seed=context.seed)
            for rows, acc in ((w, gen_d), (context.zoo(task), zoo_d)):
                if len(rows) > 1:
                    p = context.evaluate(rows, task).predictions
                    diff = (p[:, None] != p[None]).to(torch.float32).mean(-1)
                    acc.append(float(diff.sum() / (len(p) * (len(p) - 1))))
        out["seen_gen_gen_disagreement"] = sum(gen_d) / len(gen_d) if gen_d else math.nan
        out["seen_zoo_zoo_disagreement"] = sum(zoo_d) / len(zoo_d) if zoo_d else math.nan
        return out
