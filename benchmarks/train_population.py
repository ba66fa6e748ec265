"""Population trainer vs a per-model PyTorch loop: the same models, data and steps.

The per-model loop is how one-trial-per-model zoos train: each model its own
module and its own torch.optim optimizer, stepped one after another. The
population trainer (zoo.population.CohortTrainer) trains the whole cohort as
one batched computation. Both see each model's own data order; after timing,
the script checks that both produced the same weights.

Two zoos: an MLP zoo (N=256 on digits: 16 learning rates x 16 seeds, SGD with
momentum) and a CNN zoo (N=64 cnn2d on digits: 8 learning rates x 8 seeds).
Also reported: achieved GFLOP/s of the population trainer (3x the forward
FLOPs per sample: forward + backward) as a fraction of the fp32 GEMM peak
(a 2048^3 matmul measured in the same run).

    .venv/bin/python benchmarks/train_population.py [--steps 20] [--repeats 3] [--threads N] [--device cpu|cuda]

Last line: JSON with speedup_mlp, speedup_cnn, gflops_fraction_mlp, gflops_fraction_cnn, ...
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
}


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


def bench(kind: str, steps: int, repeats: int, device: str, peak: float) -> dict:
    rows = expand(ZOOS[kind])
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
    gflops = flops / pop_t / 1e9
    out = {"models": len(rows), "params_per_model": layout_for(arch).num_params, "steps": steps,
           "batch_size": rows[0]["batch_size"], "loop_s": round(loop_t, 4), "population_s": round(pop_t, 4),
           "speedup": round(loop_t / pop_t, 2), "population_gflops": round(gflops, 2),
           "loop_gflops": round(flops / loop_t / 1e9, 2), "gflops_fraction": round(gflops / peak, 4),
           "max_weight_diff": max_diff}
    print(f"{kind}: N={out['models']} P={out['params_per_model']} steps={steps}: per-model loop {loop_t:.3f}s, "
          f"population {pop_t:.3f}s -> {out['speedup']}x; {gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}% of GEMM peak; "
          f"max |w_loop - w_pop| = {max_diff:.2e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = gemm_gflops(args.device)
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"fp32 GEMM peak (2048^3): {peak:.1f} GFLOP/s", flush=True)
    mlp = bench("mlp", args.steps, args.repeats, args.device, peak)
    cnn = bench("cnn", args.steps, args.repeats, args.device, peak)
    peak_after = gemm_gflops(args.device)
    if peak_after > peak:  # a noisy machine: the higher peak is the honest reference
        print(f"GEMM peak measured again: {peak_after:.1f} GFLOP/s; fractions use it", flush=True)
        for r in (mlp, cnn):
            r["gflops_fraction"] = round(r["population_gflops"] / peak_after, 4)
    print(json.dumps({
        "benchmark": "train_population", "device": args.device, "threads": torch.get_num_threads(),
        "gemm_peak_gflops": round(max(peak, peak_after), 1),
        "speedup_mlp": mlp["speedup"], "speedup_cnn": cnn["speedup"],
        "gflops_fraction_mlp": mlp["gflops_fraction"], "gflops_fraction_cnn": cnn["gflops_fraction"],
        "mlp": mlp, "cnn": cnn,
    }))


if __name__ == "__main__":
    main()
