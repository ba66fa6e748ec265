"""Zoos in the layouts people ship them, written by the tests (no downloads).

`write_model_zoos(root)`: three small MLPs trained on digits for a few epochs
with the Model Zoos trainable's conventions (an `nn.ModuleList` called
`module_list`, `model::` / `optim::` / `training::` config keys, the untrained
model logged as iteration 0 with -999 train metrics), saved as Ray Tune lays
out an experiment: one trial folder per model with params.json, params.pkl,
result.json (one JSON line per iteration, Ray's own keys included),
progress.csv and checkpoint folders (`checkpoint_000001/` of Ray 1.x, and
`checkpoint_1/` of Ray 0.8 for the first trial) holding `checkpoints`
(torch.save of the state dict), `optimizer`, `.is_checkpoint` and the pickled
`.tune_metadata`. The pickles would create `pwned` files if anything unpickled them.
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Pwned:
    """Unpickling this creates a marker file: proves nobody unpickles Ray's pickles."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class ModelZoosMLP(nn.Module):
    """The Model Zoos MLP: Linear / activation / [dropout] in a ModuleList named module_list."""

    def __init__(self, i_dim: int, h_dim: list[int], o_dim: int, dropout: float = 0.0):
        super().__init__()
        self.module_list = nn.ModuleList()
        dims = [i_dim] + list(h_dim)
        for a, b in zip(dims[:-1], dims[1:]):
            self.module_list.append(nn.Linear(a, b))
            self.module_list.append(nn.Tanh())
            if dropout > 0:
                self.module_list.append(nn.Dropout(dropout))
        self.module_list.append(nn.Linear(dims[-1], o_dim))

    def forward(self, x):
        x = x.flatten(1)
        for m in self.module_list:
            x = m(x)
        return x


def _scores(model: nn.Module, x, y) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def write_model_zoos(root: Path, seeds=(1, 2, 3), epochs: int = 4, width: int = 16, dropout: float = 0.0) -> dict:
    """Write the experiment folder; returns {trial folder name: {"epochs": [...], "test_acc": [...], "state": [...]}}."""
    from zoo import load_dataset

    ds = load_dataset("digits", seed=0)
    xtr, ytr = ds.split("train")
    xte, yte = ds.split("test")
    exp = root / "tune_zoo_digits_mlp"
    exp.mkdir(parents=True)
    (exp / "config.json").write_text(json.dumps({"model::type": "MLP"}))
    (exp / "readme.md").write_text("")
    (exp / "basic-variant-state-2021-06-01_12-00-00.json").write_text("{}")
    truth = {}
    for idx, seed in enumerate(seeds):
        old_ray = idx == 0  # Ray 0.8: checkpoint_N folders, iterations from 1, no untrained line
        config = {"model::type": "MLP", "model::i_dim": 64, "model::h_dim": [width], "model::o_dim": 10,
                  "model::nlin": "tanh", "model::dropout": dropout, "model::init_type": "kaiming_uniform",
                  "model::use_bias": True, "optim::optimizer": "sgd", "optim::lr": (0.1, 0.2, 0.3, 0.4)[idx],
                  "optim::momentum": 0.9, "optim::wd": 0.0, "training::batchsize": 64,
                  "training::epochs_train": epochs, "training::start_epoch": 1, "training::output_epoch": 1,
                  "training::val_epochs": 1, "training::idx_out": 500, "training::checkpoint_dir": None,
                  "seed": seed, "cuda": False, "dataset::dump": "/data/zoos/digits/dataset.pt"}
        trial = exp / f"NN_tune_trainable_2a8e4_{idx:05d}_{idx}_seed={seed}_2021-06-01_12-0{idx}-00"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        with open(trial / "params.pkl", "wb") as fh:
            pickle.dump({"config": config, "evil": Pwned(root / f"pwned-params-{idx}")}, fh)
        torch.manual_seed(seed)
        model = ModelZoosMLP(64, [width], 10, dropout)
        opt = torch.optim.SGD(model.parameters(), lr=config["optim::lr"], momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        lines, record = [], {"epochs": [], "test_acc": [], "test_loss": [], "state": []}
        iterations = range(1, epochs + 1) if old_ray else range(0, epochs)
        for it in iterations:
            if it > 0:
                model.train()
                order = torch.randperm(len(xtr), generator=g)
                tot, correct = 0.0, 0
                for s in range(0, len(order), 64):
                    b = order[s:s + 64]
                    opt.zero_grad()
                    out = model(xtr[b])
                    loss = F.cross_entropy(out, ytr[b])
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(b)
                    correct += int((out.argmax(1) == ytr[b]).sum())
                train_loss, train_acc = tot / len(xtr), correct / len(xtr)
            else:
                train_loss, train_acc = -999, -999
            test_loss, test_acc = _scores(model, xte, yte)
            ck = trial / (f"checkpoint_{it}" if old_ray else f"checkpoint_{it:06d}")
            ck.mkdir()
            (ck / ".is_checkpoint").write_text("")
            torch.save(model.state_dict(), ck / "checkpoints")
            torch.save(opt.state_dict(), ck / "optimizer")
            with open(ck / ".tune_metadata", "wb") as fh:
                pickle.dump({"iteration": it, "evil": Pwned(root / f"pwned-meta-{idx}-{it}")}, fh)
            lines.append({"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                          "done": it == iterations[-1], "timesteps_total": None, "episodes_total": None,
                          "training_iteration": it, "trial_id": f"2a8e4_{idx:05d}", "experiment_id": f"{seed:032x}",
                          "date": f"2021-06-01_12-0{idx}-{it:02d}", "timestamp": 1622548800 + it, "time_this_iter_s": 0.5,
                          "time_total_s": 0.5 * (it + 1), "pid": 4242, "hostname": "node-1", "node_ip": "10.0.0.1",
                          "config": config, "time_since_restore": 0.5 * (it + 1), "timesteps_since_restore": 0,
                          "iterations_since_restore": it + 1, "experiment_tag": f"{idx}_seed={seed}"})
            record["epochs"].append(it)
            record["test_acc"].append(test_acc)
            record["test_loss"].append(test_loss)
            record["state"].append({k: v.clone() for k, v in model.state_dict().items()})
        with open(trial / "result.json", "w") as fh:
            for line in lines:
                json.dump(line, fh)
                fh.write("\n")
        with open(trial / "progress.csv", "w", newline="") as fh:
            flat = [{k: v for k, v in line.items() if k != "config"} for line in lines]
            w = csv.DictWriter(fh, fieldnames=list(flat[0]))
            w.writeheader()
            w.writerows(flat)
        truth[trial.name] = record
    return truth


def snapshot(path: Path) -> dict[str, str] | None:
    """Every file under `path` with the sha256 of its bytes (None when `path` does not exist)."""
    import hashlib

    if not path.exists():
        return None
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def trial_dirs(src: Path) -> list[Path]:
    return sorted(p for p in (src / "tune_zoo_digits_mlp").iterdir() if p.is_dir())
