"""Continual learning with a hypernetwork (Chandra et al. 2022; von Oswald et al. 2020) and its two baselines.

    gen = HyperNetwork(continual=True, arch="rnn").fit_tasks(layout, tasks)    # tasks in the given order
    acc = finetune_sequence(layout, tasks, steps, seed)      # one network fine-tuned task after task
    acc = per_task_models(layout, tasks, steps, seed)        # one network per task (the upper reference)

Tasks arrive one at a time. Task t gets an embedding of its own, initialised from the set
encoder's embedding of its train split (the encoder stays at its initialisation: a random
projection of the class means) and learned while task t trains (at continual_emb_lr x lr),
then frozen and stored (module `tasks`, so `sample` for a continual task uses it). After task
t the hypernetwork is snapshotted (a frozen copy H*); while later tasks train, the output
regularizer

    beta * mean over s < t and `continual_snapshots` fresh noise draws z of || (H(e_s, z) - H*(e_s, z)) / scales ||^2 / P

keeps the weights generated for every earlier task where they were, for every z (Chandra et
al. regularize one output per task; with a noise input the snapshot is the function of z).
No earlier task's data is seen again. Steps are per task.
`history["acc_after_task"][t]` is the test accuracy on tasks 0..t after task t (forgetting).
"""
from __future__ import annotations

import copy

import torch

from generators.components.schedules import warmup_cosine
from generators.components.set_encoder import embed_dataset
from generators.hyper.encoding import kaiming_theta0
from generators.hyper.losses import TaskBatches, repulsion, task_losses
from store.layout import ParamLayout
from wsl.evaluate import evaluate


def train_continual(gen, datasets, progress=None) -> dict[str, list[float]]:
    c, layout = gen.config, gen.layout
    enc, head, table = gen.modules["encoder"], gen.modules["hyper"], gen.modules["tasks"]
    for p in enc.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(c.seed)
    z_fixed = gen.draw_z(c.continual_snapshots, torch.Generator().manual_seed(c.seed + 1))
    k, j = c.z_per_task, c.continual_snapshots
    frozen = None
    hist: dict[str, list] = {"task_loss": [], "reg_loss": [], "final_task_loss": [], "acc_after_task": []}
    head.train()
    for t, ds in enumerate(datasets):
        if c.continual_embedding == "dataset":
            with torch.no_grad():
                e0 = embed_dataset(enc, ds, c.context_per_class)
        else:  # "random": a task code of its own, as von Oswald et al.'s task embeddings
            e0 = 2.0 * torch.randn(c.cond_dim, generator=g)
        e_t = torch.nn.Parameter(e0.clone())
        params = [e_t] + [p for p in head.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": params[1:]}, {"params": [e_t], "lr": c.lr * c.continual_emb_lr}],
                                lr=c.lr, weight_decay=c.weight_decay)
        sched = warmup_cosine(opt, max(1, c.steps))
        batches = TaskBatches([ds])
        zero = torch.zeros(1, dtype=torch.long)
        prev = table.emb[:t]
        for step in range(c.steps):
            w = head(gen.inputs(e_t.expand(k, -1), None, gen.draw_z(k, g)))
            x, y = batches.draw(zero, c.batch_size, g)
            tl = task_losses(layout, w, x, y, k, batches.task).mean()
            loss = tl + (c.diversity * repulsion(w, head.scales, k) if c.diversity > 0 else 0.0)
            if t > 0 and c.continual_beta > 0:
                # the earlier tasks' outputs at fresh noise draws, against the frozen copy from before this task
                u = gen.inputs(prev.repeat_interleave(j, 0), None, gen.draw_z(t * j, g))
                with torch.no_grad():
                    target = frozen(u)[:, :layout.num_trainable]
                reg = (((head(u)[:, :layout.num_trainable] - target) / head.scales) ** 2).mean()
                loss = loss + c.continual_beta * reg
                hist["reg_loss"].append(float(reg.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            hist["task_loss"].append(float(tl.detach()))
            if progress and (step + 1) % 50 == 0:
                progress(50, info=f"task {t + 1}/{len(datasets)} loss {float(tl):.4f}")
        if progress and c.steps % 50:
            progress(c.steps % 50)
        with torch.no_grad():
            table.emb[t] = e_t.detach()
            frozen = copy.deepcopy(head).eval().requires_grad_(False)
            u = gen.inputs(table.emb[:t + 1].repeat_interleave(j, 0), None, z_fixed.repeat(t + 1, 1))
            full = head(u).detach()
            # test accuracy on every task so far, at the snapshot draws (a report of forgetting; no training signal)
            hist["acc_after_task"].append([float(evaluate(sw, layout, d).accuracy.mean())
                                           for sw, d in zip(full.split(j), datasets[:t + 1])])
        hist["final_task_loss"] = [sum(hist["task_loss"][-20:]) / max(1, len(hist["task_loss"][-20:]))]
    return hist


def _direct(layout: ParamLayout, datasets, steps: int, seed: int, lr: float, batch: int, sequential: bool):
    """Train flat weights directly with Adam: one network through the tasks in turn, or one per task at once."""
    theta = kaiming_theta0(layout, seed)
    n = 1 if sequential else len(datasets)
    w = torch.nn.Parameter(theta.expand(n, -1).clone())
    mask = layout.trainable
    g = torch.Generator().manual_seed(seed)
    after: list[list[float]] = []
    rounds = [[i] for i in range(len(datasets))] if sequential else [list(range(len(datasets)))]
    for tasks in rounds:
        opt = torch.optim.Adam([w], lr=lr)
        sched = warmup_cosine(opt, max(1, steps))
        batches = TaskBatches([datasets[i] for i in tasks])
        ids = torch.arange(len(tasks))
        for _ in range(steps):
            x, y = batches.draw(ids, batch, g)
            loss = task_losses(layout, w, x, y, 1, batches.task).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            w.grad[:, ~mask] = 0
            opt.step()
            sched.step()
        if sequential:
            after.append([float(evaluate(w.detach(), layout, d).accuracy[0]) for d in datasets])
    final = w.detach()
    return final, after


def finetune_sequence(layout: ParamLayout, datasets, steps: int, seed: int = 0, lr: float = 3e-3, batch: int = 64):
    """One network fine-tuned on the tasks in order: (final weights [1, P], accuracy on every task after each task)."""
    return _direct(layout, datasets, steps, seed, lr, batch, sequential=True)


def per_task_models(layout: ParamLayout, datasets, steps: int, seed: int = 0, lr: float = 3e-3, batch: int = 64):
    """One network per task, trained together (one fused forward per step): ([T, P] weights, [T] test accuracy)."""
    w, _ = _direct(layout, datasets, steps, seed, lr, batch, sequential=False)
    return w, [float(evaluate(w[i:i + 1], layout, d).accuracy[0]) for i, d in enumerate(datasets)]


def accuracy_on_tasks(gen, datasets, n: int = 4, seed: int = 0) -> list[float]:
    """Mean test accuracy of n generated models per task."""
    return [float(evaluate(gen.sample(n, d, seed=seed)[0], gen.layout, d).accuracy.mean()) for d in datasets]
