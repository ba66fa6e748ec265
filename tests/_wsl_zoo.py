"""A small digits zoo trained in seconds with wsl.functional (test helper, not a test module).

48 tiny MLPs with log-spaced learning rates and different epoch budgets give
accuracies from chance to ~95%: enough spread for property prediction,
averaging and pruning tests, and a store to run the CLI against.
"""
from __future__ import annotations

import functools
import json

import torch
import torch.nn.functional as F

from wsl import ParamLayout
from wsl.functional import population_forward


@functools.lru_cache(maxsize=None)
def digits():
    from zoo import load_dataset

    return load_dataset("digits", seed=0)


@functools.lru_cache(maxsize=None)
def mlp_zoo(n: int = 48, width: int = 16, depth: int = 1, epochs: int = 6, seed: int = 0, batch: int = 128,
            log10_lr: tuple[float, float] = (-2.5, -0.5), momentum: float = 0.9):
    """Returns dict(layout, weights [epochs+1, n, P], lr [n], stop [n], seeds [n], arch).

    Model i trains `stop[i]` epochs (1..epochs) with SGD (momentum 0.9) at lr[i] (log-uniform), then stays put;
    weights[e] is every model after epoch e (weights[0] = init).
    """
    ds = digits()
    arch = {"name": "mlp", "in_features": 64, "out_features": 10, "width": width, "depth": depth}
    layout = ParamLayout.from_config(arch)
    mods = []
    for i in range(n):
        torch.manual_seed(seed * 1000 + i)
        mods.append(layout.build_module())
    flat = layout.flatten(mods)
    g = torch.Generator().manual_seed(seed)
    lo, hi = log10_lr
    lr = 10 ** (lo + torch.rand(n, generator=g) * (hi - lo))  # log-uniform, 0.003 .. 0.3 by default
    stop = torch.randint(1, epochs + 1, (n,), generator=g)
    params = {k: v.clone().requires_grad_(True) for k, v in layout.unflatten(flat).items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    history = [flat.clone()]
    x, y = ds.x_train, ds.y_train
    for epoch in range(epochs):
        active = (stop > epoch).float()
        for idx in torch.randperm(len(x), generator=g).split(batch):
            out = population_forward(layout, params, x[idx])  # [n, b, 10]
            loss = F.cross_entropy(out.reshape(-1, 10), y[idx].repeat(n), reduction="none").view(n, -1).mean(1).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for (k, p), gr in zip(params.items(), grads):
                    step = (lr * active).view(-1, *[1] * (p.dim() - 1))
                    v = velocity[k].mul_(momentum).add_(gr.clamp(-10, 10))
                    p.sub_(step * v)
        history.append(torch.cat([params[e.name].detach().reshape(n, -1) for e in layout.entries], 1))
    return {"layout": layout, "weights": torch.stack(history), "lr": lr, "stop": stop, "arch": arch,
            "seeds": torch.tensor([seed * 1000 + i for i in range(n)])}


def fill_store(store, zoo: dict, zoo_name: str = "digits-mlp", epochs: list[int] | None = None) -> list[str]:
    """Write models + checkpoints rows (every epoch, test metrics from the fused evaluator); returns ids."""
    from wsl.evaluate import evaluate

    ds = digits()
    layout, W = zoo["layout"], zoo["weights"]
    n = W.shape[1]
    models = []
    for i in range(n):
        hp = {"lr": float(zoo["lr"][i]), "epochs": int(zoo["stop"][i])}
        models.append(dict(model_id=f"{zoo_name}-m{i:03d}", zoo=zoo_name, architecture="mlp",
                           arch_config=json.dumps(zoo["arch"]), layout_id=layout.layout_id, dataset="digits",
                           dataset_id=ds.dataset_id, task="classification", width=zoo["arch"]["width"],
                           depth=zoo["arch"]["depth"], optimizer="sgd", lr=hp["lr"], momentum=0.0,
                           weight_decay=0.0, batch_size=64, epochs=hp["epochs"], schedule="constant",
                           seed=int(zoo["seeds"][i]), status="done", hparams=json.dumps(hp)))
    store.append("models", models)
    ids = []
    for e in (epochs if epochs is not None else range(W.shape[0])):
        te = evaluate(W[e], layout, ds)
        tr = evaluate(W[e], layout, ds, split="train")
        rows = [dict(checkpoint_id=f"{zoo_name}-m{i:03d}-e{e:04d}", model_id=f"{zoo_name}-m{i:03d}", epoch=e,
                     step=e * 23, train_loss=float(tr.loss[i]), train_acc=float(tr.accuracy[i]),
                     test_loss=float(te.loss[i]), test_acc=float(te.accuracy[i])) for i in range(n)]
        store.append_weights("checkpoints", W[e], rows, layout)
        ids += [r["checkpoint_id"] for r in rows]
    return ids
