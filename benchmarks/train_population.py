"""Population trainer vs a per-model PyTorch loop: the same models, data and steps.

The per-model loop is how one-trial-per-model zoos train: each model its own
module and its own torch.optim optimizer, stepped one after another. The
population trainer (zoo.population.CohortTrainer) trains the whole cohort as
one batched computation. Both see each model's own data order; after timing,
the script checks that both produced the same weights.

Three zoos: an MLP zoo (N=256 on digits: 16 learning rates x 16 seeds, SGD with
momentum), a CNN zoo (N=64 cnn2d on digits: 8 learning rates x 8 seeds) and a
ResNet zoo with BatchNorm (N=64 resnet on digits, narrow: width 8, one
BasicBlock per stage, 3 stages; 8 learning rates x 8 seeds). For the ResNet the
weights compared after training include the BatchNorm running statistics
(each model's own, from its own batches, in both ways). `--resnet-width 64
--resnet-blocks 2,2,2,2` is ResNet-18's shape (for a GPU).
Also reported: achieved GFLOP/s of the population trainer (3x the forward
FLOPs per sample: forward + backward) as a fraction of the fp32 GEMM peak
(a 2048^3 matmul measured in the same run).

    .venv/bin/python benchmarks/train_population.py [--steps 20] [--repeats 3] [--threads N] [--device cpu|cuda]
        [--resnet-width 8] [--resnet-blocks 1,1,1] [--resnet-models 64] [--only mlp,cnn,resnet]

Last line: JSON with speedup_mlp, speedup_cnn, speedup_resnet, gflops_fraction_* (per zoo), ...
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo import build, expand, load_dataset  # noqa: E402
from zoo.population import CohortTrainer, data_order, init_params, layout_for  # noqa: E402

ZOOS = {
    "mlp": {"name": "bench-mlp", "dataset": "digits", "epochs": 1, "batch_size": 32, "seeds": 16,
            "architecture": {"name": "mlp", "width": 32, "depth": 2},
            "optimizer": {"name": "sgd", "lr": [round(0.005 * 1.25 ** i, 6) for i in range(16)], "momentum": 0.9}},
    "cnn": {"name": "bench-cnn", "dataset": "digits", "epochs": 1, "batch_size": 32, "seeds": 8,
            "architecture": {"name": "cnn2d", "width": 8},
            "optimizer": {"name": "sgd", "lr": [round(0.005 * 1.5 ** i, 6) for i in range(8)], "momentum": 0.9}},
    "resnet": {"name": "bench-resnet", "dataset": "digits", "epochs": 1, "batch_size": 32, "seeds": 8,
               "architecture": {"name": "resnet", "width": 8, "blocks": [1, 1, 1]},
               "optimizer": {"name": "sgd", "lr": [round(0.005 * 1.5 ** i, 6) for i in range(8)], "momentum": 0.9}},
}


def resnet_zoo(width: int, blocks: list[int], models: int) -> dict:
    """The ResNet zoo at another width / depth / size: lrs x seeds = models (8 seeds, or fewer models)."""
    seeds = min(8, models)
    n_lr = max(1, models // seeds)
    return {**ZOOS["resnet"], "seeds": seeds,
            "architecture": {"name": "resnet", "width": width, "blocks": list(blocks)},
            "optimizer": {"name": "sgd", "lr": [round(0.005 * 1.5 ** i, 6) for i in range(n_lr)], "momentum": 0.9}}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_gflops(device: str, repeats: int = 5) -> float:
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best / 1e9


def forward_flops_per_sample(arch: dict, x1: torch.Tensor) -> int:
    """2 x multiply-adds of one forward pass on one sample (Linear and Conv layers)."""
    module = build(arch).eval()
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Linear):
            total[0] += 2 * m.in_features * m.out_features
        elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            k = math.prod(m.kernel_size) * m.in_channels // m.groups
            total[0] += 2 * out.numel() * k

    hooks = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.no_grad():
        module(x1)
    for h in hooks:
        h.remove()
    return total[0]


def per_model_loop(rows, steps: int, device: str) -> tuple[float, torch.Tensor]:
    """One module + one torch.optim.SGD per model, trained one after another; returns (seconds, [N, P])."""
    ds = load_dataset(rows[0]["dataset"], rows[0]["data_seed"]).to(device)
    arch = json.loads(rows[0]["arch_config"])
    layout = layout_for(arch)
    init = init_params(arch, [r["seed"] for r in rows]).to(device)
    models, opts, orders = [], [], []
    for i, r in enumerate(rows):  # setup (module build, optimizer) is not timed
        m = layout.load_into(build(arch).to(device), init[i])
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"]))
        orders.append(data_order(r["seed"], 1, len(ds.x_train)).to(device))
    B = rows[0]["batch_size"]
    sync(device)
    t = time.perf_counter()
    for m, opt, order in zip(models, opts, orders):
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            loss = F.cross_entropy(m(ds.x_train[idx]), ds.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    seconds = time.perf_counter() - t
    return seconds, torch.stack([layout.flatten(m) for m in models])


def population(rows, steps: int, device: str) -> tuple[float, torch.Tensor]:
    trainer = CohortTrainer(rows, device=device)  # setup (init, data on device) is not timed
    sync(device)
    t = time.perf_counter()
    trainer.train_epoch(1, max_steps=steps)
    sync(device)
    return time.perf_counter() - t, trainer.params.detach().cpu()


def bench(kind: str, steps: int, repeats: int, device: str, peak: float, zoo: dict | None = None) -> dict:
    rows = expand(zoo or ZOOS[kind])
    arch = json.loads(rows[0]["arch_config"])
    ds = load_dataset("digits")
    flops = 3 * forward_flops_per_sample(arch, ds.x_train[:1]) * len(rows) * steps * rows[0]["batch_size"]
    population(rows, 2, device)  # warm-up
    loop_t, pop_t = math.inf, math.inf
    for _ in range(repeats):  # interleaved, best of each: machines are noisy
        lt, loop_w = per_model_loop(rows, steps, device)
        pt, pop_w = population(rows, steps, device)
        loop_t, pop_t = min(loop_t, lt), min(pop_t, pt)
    max_diff = (loop_w.cpu() - pop_w).abs().max().item()
    # after one step the two agree to float rounding; over many steps float32 rounding can grow where a
    # ReLU input or a BatchNorm batch statistic sits at a kink (high learning rates; in float64 the same
    # ResNet models agree to 1e-15 after the same steps)
    one_step = (per_model_loop(rows, 1, device)[1].cpu() - population(rows, 1, device)[1]).abs().max().item()
    gflops = flops / pop_t / 1e9
    out = {"models": len(rows), "params_per_model": layout_for(arch).num_params, "steps": steps,
           "batch_size": rows[0]["batch_size"], "loop_s": round(loop_t, 4), "population_s": round(pop_t, 4),
           "speedup": round(loop_t / pop_t, 2), "population_gflops": round(gflops, 2),
           "loop_gflops": round(flops / loop_t / 1e9, 2), "gflops_fraction": round(gflops / peak, 4),
           "max_weight_diff": max_diff, "max_weight_diff_after_1_step": one_step}
    print(f"{kind}: N={out['models']} P={out['params_per_model']} steps={steps}: per-model loop {loop_t:.3f}s, "
          f"population {pop_t:.3f}s -> {out['speedup']}x; {gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}% of GEMM peak; "
          f"max |w_loop - w_pop| = {max_diff:.2e} ({one_step:.1e} after 1 step)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resnet-width", type=int, default=8, help="ResNet zoo width (64: ResNet-18's)")
    ap.add_argument("--resnet-blocks", default="1,1,1", help="BasicBlocks per stage (2,2,2,2: ResNet-18's)")
    ap.add_argument("--resnet-models", type=int, default=64)
    ap.add_argument("--only", default="mlp,cnn,resnet", help="which zoos to run (comma-separated)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = gemm_gflops(args.device)
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"fp32 GEMM peak (2048^3): {peak:.1f} GFLOP/s", flush=True)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    load = [_load1()]
    zoos = {"resnet": resnet_zoo(args.resnet_width, [int(b) for b in args.resnet_blocks.split(",")], args.resnet_models)}
    results = {k: bench(k, args.steps, args.repeats, args.device, peak, zoos.get(k)) for k in only}
    peak_after = gemm_gflops(args.device)
    if peak_after > peak:  # a noisy machine: the higher peak is the honest reference
        print(f"GEMM peak measured again: {peak_after:.1f} GFLOP/s; fractions use it", flush=True)
        for r in results.values():
            r["gflops_fraction"] = round(r["population_gflops"] / peak_after, 4)
    out = {"benchmark": "train_population", "device": args.device, "threads": torch.get_num_threads(),
           "gemm_peak_gflops": round(max(peak, peak_after), 1), "load_1min": load + [_load1()]}
    out.update({f"speedup_{k}": r["speedup"] for k, r in results.items()})
    out.update({f"gflops_fraction_{k}": r["gflops_fraction"] for k, r in results.items()})
    if "resnet" in results:
        out["resnet_arch"] = {"width": args.resnet_width, "blocks": args.resnet_blocks}
    out.update(results)
    print(json.dumps(out))


def _load1() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    main()
