"""Import / export benchmark: 2,000 checkpoint files in the Model Zoos layout into the store and out again.

What it builds (under --dir, default a fresh folder in /tmp, removed at the end unless --keep): a Ray
Tune experiment as the Model Zoos ship it, 200 trial folders x 10 epochs = 2,000 checkpoints of the
Model Zoos' small CNN (10 tensors, 2,464 parameters, in an nn.ModuleList called module_list), each
trial with params.json, result.json (one JSON line per epoch) and checkpoint_00000N/checkpoints
written with torch.save.

What it times (page cache warm; the median of --repeats runs of each):
- import: `wsl store import model-zoos` through the Python API into a fresh store (every file parsed
  with torch.load(weights_only=True), in worker processes; metrics and hyperparameters from the JSON;
  one Parquet part per layout), also with one worker (`import_1worker_ckpt_per_s`);
- export: `wsl export --format safetensors` of all 2,000 checkpoints into a fresh folder (header
  metadata, sidecar table), and the state-dict format for reference;
- the plain loop a user writes today, once per file: torch.load + load_state_dict into the module +
  torch.save (the same loop is the reference for both directions: it is how one moves a zoo today).

Wall time is what the targets are about; CPU seconds per checkpoint (this process plus the import's
worker processes) are reported next to it, since they do not depend on how busy the machine is.

Last line: JSON with import_ckpt_per_s, export_ckpt_per_s, ratio_import_vs_loop, ratio_export_vs_loop
(targets: both ratios >= 3).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import ZooStore  # noqa: E402
from store.import_modelzoos import import_model_zoos  # noqa: E402


class ModelZoosCNN(nn.Module):
    """The Model Zoos' small CNN (28x28 inputs): the tensors their checkpoints hold."""

    def __init__(self):
        super().__init__()
        self.module_list = nn.ModuleList([
            nn.Conv2d(1, 8, 5), nn.MaxPool2d(2, 2), nn.Tanh(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), nn.Tanh(),
            nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(), nn.Linear(20, 10)])

    def forward(self, x):
        for m in self.module_list:
            x = m(x)
        return x


def write_zoo(root: Path, trials: int, epochs: int) -> list[Path]:
    files = []
    exp = root / "tune_zoo_mnist_uniform"
    for t in range(trials):
        torch.manual_seed(t)
        model = ModelZoosCNN()
        config = {"model::type": "CNN", "model::channels_in": 1, "model::nlin": "tanh", "model::dropout": 0.0,
                  "model::init_type": "uniform", "optim::optimizer": "adam", "optim::lr": 3e-4, "optim::wd": 0.0,
                  "seed": t, "training::batchsize": 10, "training::epochs_train": epochs, "cuda": False}
        trial = exp / f"NN_tune_trainable_a1b2c_{t:05d}_{t}_seed={t}_2021-06-01_12-00-00"
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        with open(trial / "result.json", "w") as fh:
            for e in range(1, epochs + 1):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01 * torch.randn_like(p))
                ck = trial / f"checkpoint_{e:06d}"
                ck.mkdir()
                torch.save(model.state_dict(), ck / "checkpoints")
                files.append(ck / "checkpoints")
                line = {"train_loss": 2.0 / e, "train_acc": 0.5 + 0.04 * e, "test_loss": 2.1 / e,
                        "test_acc": 0.48 + 0.04 * e, "done": e == epochs, "training_iteration": e,
                        "trial_id": f"a1b2c_{t:05d}", "time_this_iter_s": 1.0, "config": config}
                fh.write(json.dumps(line) + "\n")
    return files


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the import's worker processes)."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn()."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def plain_loop(files: list[Path], out: Path) -> None:
    """What a user writes today, per file: torch.load + load_state_dict + torch.save."""
    out.mkdir()
    model = ModelZoosCNN()
    for i, f in enumerate(files):
        sd = torch.load(f, map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
        torch.save(model.state_dict(), out / f"{i:05d}.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="wsl-bench-import-"))
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    try:
        files = write_zoo(root / "zoo", args.trials, args.epochs)
        n = len(files)
        result.update(checkpoints=n, params_per_checkpoint=sum(p.numel() for p in ModelZoosCNN().parameters()),
                      cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        plain_loop(files[:200], root / "warmup")  # page cache and torch's lazy imports
        keys = ("loop", "import", "import_1worker", "export", "export_sd")
        times: dict[str, list[float]] = {k: [] for k in keys}
        cpu: dict[str, list[float]] = {k: [] for k in keys}

        def record(key, fn):
            wall, c = timed(fn)
            times[key].append(wall)
            cpu[key].append(c)

        for r in range(args.repeats):
            record("loop", lambda: plain_loop(files, root / f"loop-{r}"))
            shutil.rmtree(root / f"loop-{r}")
            for key, workers in (("import", None), ("import_1worker", 1)):
                reps = []
                record(key, lambda: reps.append(import_model_zoos(root / f"store-{key}-{r}", root / "zoo", workers=workers)))
                assert reps[0].new_checkpoints == n, reps[0].as_dict()
            store = ZooStore(root / f"store-import-{r}", create=False)
            for key, fmt in (("export", "safetensors"), ("export_sd", "state-dict")):
                reps = []
                record(key, lambda: reps.append(store.export(root / f"{key}-{r}", fmt=fmt)))
                assert reps[0].written == n, reps[0].as_dict()
                shutil.rmtree(root / f"{key}-{r}")
            for key in ("import", "import_1worker"):
                shutil.rmtree(root / f"store-{key}-{r}")
        med = {k: statistics.median(v) for k, v in times.items()}
        mcpu = {k: statistics.median(v) for k, v in cpu.items()}
        result.update({f"{k}_seconds": round(v, 3) for k, v in med.items()})
        result.update({f"{k}_cpu_ms_per_ckpt": round(1e3 * v / n, 3) for k, v in mcpu.items()})
        result.update(loop_ckpt_per_s=round(n / med["loop"], 1), import_ckpt_per_s=round(n / med["import"], 1),
                      import_1worker_ckpt_per_s=round(n / med["import_1worker"], 1),
                      export_ckpt_per_s=round(n / med["export"], 1),
                      export_state_dict_ckpt_per_s=round(n / med["export_sd"], 1),
                      ratio_import_vs_loop=round(med["loop"] / med["import"], 2),
                      ratio_import_1worker_vs_loop=round(med["loop"] / med["import_1worker"], 2),
                      ratio_export_vs_loop=round(med["loop"] / med["export"], 2),
                      ratio_export_state_dict_vs_loop=round(med["loop"] / med["export_sd"], 2),
                      # CPU seconds per checkpoint (what load cannot inflate): the work each way costs
                      cpu_ratio_import_vs_loop=round(mcpu["loop"] / mcpu["import"], 2),
                      cpu_ratio_export_vs_loop=round(mcpu["loop"] / mcpu["export"], 2))
        try:
            result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        except OSError:  # pragma: no cover
            pass
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for k, v in result.items():
        print(f"{k}: {v}")
    keys = ("import_ckpt_per_s", "export_ckpt_per_s", "ratio_import_vs_loop", "ratio_export_vs_loop")
    print(json.dumps({k: result[k] for k in keys} | {"details": result}))


if __name__ == "__main__":
    main()
