"""Fitting a hypernetwork on all its tasks at once: task loss, zoo regression, or both, one optimizer.

Every step (training.train_joint):
1. T tasks drawn without replacement; each gets a fresh context subset for its embedding
   (max_per_class samples per class through the set encoder, trained with the hypernetwork)
   and a batch of train samples.
   With `permute_labels`, half of the drawn tasks have their classes relabelled by a random
   permutation, consistently in the context and the batch: a new task on the same inputs,
   so the embedding must say which class is which (for a pair task: A-vs-B and B-vs-A).
2. k noise draws per task -> T*k weight vectors in one hypernetwork call.
3. task / both: the T*k models' losses on their task's batch, ONE fused functional forward
   (losses.task_losses); + `diversity` x the repulsion between each task's k models.
4. zoo / both: zoo_batch checkpoints, k draws each for their dataset (and their metric), the
   nearest draw pulled onto the checkpoint (losses.imle_loss).
5. AdamW, warmup + cosine schedule, gradient norm clipped at 1.

Returns the per-step curves (`task_loss`, `zoo_loss`; `final_*` are their smoothed last values),
which benchmarks/hyper_mip.py reads to count steps to a loss.
"""
from __future__ import annotations

import torch

from generators.components.schedules import warmup_cosine
from generators.components.set_encoder import ContextTable
from generators.hyper.losses import TaskBatches, imle_loss, repulsion, task_losses


def trainable_parameters(gen) -> list[torch.nn.Parameter]:
    return [p for name in ("encoder", "hyper", "imprint") if name in gen.modules
            for p in gen.modules[name].parameters() if p.requires_grad]


def imprinted(gen, w, xs, ys, n_sets, inv, k):
    """w with its last layer imprinted from each row's context (rows: k per entry of inv); w when imprint is off."""
    imp = gen.modules.get("imprint")
    if imp is None:
        return w
    shape = gen.fit_info["input_shape"]
    x = xs.reshape(n_sets, -1, *shape)[inv].repeat_interleave(k, 0)
    y = ys.reshape(n_sets, -1)[inv].repeat_interleave(k, 0)
    return imp(w, gen.layout, x, y)


def train_joint(gen, datasets, weights=None, index=None, metrics=None, progress=None) -> dict[str, list[float]]:
    c, layout, info = gen.config, gen.layout, gen.fit_info
    metrics = metrics or {}
    names = info.get("metrics") or []
    mvals = torch.stack([metrics[m] for m in names], 1) if names else None
    if mvals is not None:
        gen.modules["metric"].set(mvals)
    use_task, use_zoo = c.mode in ("task", "both"), c.mode in ("zoo", "both")
    enc, head = gen.modules["encoder"], gen.modules["hyper"]
    k_classes = int(info["num_classes"]) if info["task"] == "classification" else 0
    contexts = ContextTable(datasets, k_classes)
    batches = TaskBatches(datasets)
    g = torch.Generator().manual_seed(c.seed)
    params = trainable_parameters(gen)
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    sched = warmup_cosine(opt, max(1, c.steps))
    enc.train()
    head.train()
    k = c.z_per_task
    n_tasks = len(datasets)
    t_per = min(c.tasks_per_step, n_tasks)
    hist: dict[str, list[float]] = {"task_loss": [], "zoo_loss": [], "final_task_loss": [], "final_zoo_loss": []}
    ema: dict[str, float] = {}
    for step in range(c.steps):
        loss = torch.zeros(())
        if use_task:
            tasks = torch.randperm(n_tasks, generator=g)[:t_per]
            xs, ys, set_index, n_sets, uniq, inv = contexts.draw(tasks, c.max_per_class, g)
            x, y = batches.draw(tasks, c.batch_size, g)
            if c.permute_labels and k_classes > 1:
                # each drawn task as itself or with its classes relabelled (a new task on the same inputs)
                perm = label_permutations(len(uniq), k_classes, g)
                ys = torch.gather(perm[set_index], 1, ys[:, None])[:, 0]
                y = torch.gather(perm[inv], 1, y)
            emb = enc(xs, ys, set_index, n_sets)[inv].repeat_interleave(k, 0)
            m = gen.modules["metric"].high.expand(len(emb), -1) if mvals is not None else None
            w = head(gen.inputs(emb, m, gen.draw_z(len(emb), g)), gen.init_noise(len(emb), g))
            w = imprinted(gen, w, xs, ys, n_sets, inv, k)
            tl = task_losses(layout, w, x, y, k, batches.task).mean()
            loss = loss + tl
            if c.diversity > 0:
                loss = loss + c.diversity * repulsion(w, head.scales, k)
            _track(hist, ema, "task_loss", float(tl.detach()))
        if use_zoo:
            ck = torch.randint(len(weights), (min(c.zoo_batch, len(weights)),), generator=g)
            xs, ys, set_index, n_sets, uniq, inv = contexts.draw(index[ck], c.max_per_class, g)
            emb = enc(xs, ys, set_index, n_sets)[inv].repeat_interleave(k, 0)
            m = mvals[ck].repeat_interleave(k, 0) if mvals is not None else None
            w = imprinted(gen, head(gen.inputs(emb, m, gen.draw_z(len(emb), g))), xs, ys, n_sets, inv, k)
            zl = imle_loss(w, weights[ck, :layout.num_trainable], head.scales, k)
            loss = loss + (c.zoo_weight if use_task else 1.0) * zl
            _track(hist, ema, "zoo_loss", float(zl.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if progress and (step + 1) % 50 == 0:
            progress(50, info=" ".join(f"{n} {v:.4f}" for n, v in ema.items()))
    if progress and c.steps % 50:
        progress(c.steps % 50)
    return hist


def label_permutations(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """[n, k] class relabellings: identity for half the rows, a random permutation for the other half."""
    perm = torch.argsort(torch.rand(n, k, generator=g), 1)
    keep = torch.rand(n, generator=g) < 0.5
    return torch.where(keep[:, None], torch.arange(k).expand(n, k), perm)


def _track(hist, ema, name, value):
    hist[name].append(value)
    ema[name] = value if name not in ema else 0.95 * ema[name] + 0.05 * value
    hist["final_" + name] = [ema[name]]
