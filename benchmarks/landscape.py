"""Hessian trace + top eigenvalue of 64 models: PyHessian one model at a time vs our batched population path.

Same work on both sides:
- models: 64 digits MLPs of one layout (default width 16, depth 2), briefly trained as one
  population so their Hessians are those of real models;
- data: the landscape recipe's samples (default 2 batches of 512 training images; PyHessian gets
  them as its dataloader, so it averages H v over the batches as we do);
- counts: `--probes` Rademacher probes for the Hutchinson trace and `--iterations` power
  iterations for the top eigenvalue, fixed (PyHessian with tol=0 runs exactly maxIter);
- seeds: our model i draws its probes and start vector from per-model streams that equal what
  PyHessian draws after torch.manual_seed, so the two estimate with the same random vectors and
  their values agree up to float rounding (the disagreement printed is that rounding).

Also timed: the single-batch case (PyHessian's fastest mode: it keeps one batch's gradient graph,
as our path always does), and the achieved GFLOP/s of the batched path (FLOPs counted with
torch.utils.flop_counter) as a fraction of the fp32 GEMM peak (a 2048^3 matmul) of this run.

    .venv/bin/python benchmarks/landscape.py [--models 64] [--width 16] [--batches 2] [--batch-size 512]
        [--probes 32] [--iterations 20] [--repeats 3] [--cohort 32] [--threads N]

Wall-clock ratios are the headline; the CPU-time ratio (process_time) is printed too: on a
machine shared with other jobs it is the steadier number, and with --threads 1 it is the work ratio.

Last line: JSON with speedup (recipe data), speedup_single_batch, max_rel_disagreement (largest
relative difference of trace or top eigenvalue over the models, both settings), gflops_fraction, ...
Target on a 2-core CPU: speedup >= 5.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsl import ParamLayout  # noqa: E402
from wsl.functional import population_forward  # noqa: E402
from zoo import config_for, load_dataset  # noqa: E402
from zoo.landscape.hessian import EIG_SEED_OFFSET, PopulationHessian, hessian_metrics, plan_tiles, regroup  # noqa: E402
from zoo.landscape.recipe import Recipe, param_views, per_model_loss  # noqa: E402


def trained_population(n: int, width: int, steps: int = 150, seed: int = 0):
    ds = load_dataset("digits")
    layout = ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": width, "depth": 2}))
    torch.manual_seed(seed)
    W = layout.flatten([layout.build_module() for _ in range(n)])
    leaves = [t.clone().requires_grad_(True) for t in param_views(layout, W).values()]
    lrs = torch.logspace(-2.3, -0.7, n).reshape(n, *([1] * 1))
    opt = torch.optim.SGD(leaves, lr=1.0, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(ds.x_train), (64,), generator=g)
        loss = per_model_loss(population_forward(layout, dict(zip(layout.names, leaves)), ds.x_train[idx]),
                              ds.y_train[idx]).sum()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in leaves:  # a spread of learning rates: models from sharp to flat
                p.grad.mul_(lrs.reshape(n, *([1] * (p.dim() - 1))))
        opt.step()
    W = torch.cat([t.detach().reshape(n, -1) for t in leaves], 1)
    return ds, layout, W


def pyhessian_all(layout, W, batches, iterations, probes, seeds):
    """PyHessian, one model after the other: eigenvalue then trace, as its README shows."""
    from pyhessian import hessian

    eig, tr = [], []
    for i in range(W.shape[0]):
        model = layout.load_into(layout.build_module(), W[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(batches) == 1:
                h = hessian(model, F.cross_entropy, data=batches[0], cuda=False)
            else:
                h = hessian(model, F.cross_entropy, dataloader=batches, cuda=False)
            torch.manual_seed(seeds[i] + EIG_SEED_OFFSET)
            eig.append(h.eigenvalues(maxIter=iterations, tol=0.0)[0][0])
            torch.manual_seed(seeds[i])
            t = h.trace(maxIter=probes, tol=0.0)
            tr.append(sum(t) / len(t))
        model.zero_grad(set_to_none=True)  # PyHessian's create_graph backward leaves a graph in .grad
    return torch.tensor(eig, dtype=torch.float64), torch.tensor(tr, dtype=torch.float64)


def ours_all(layout, W, batches, iterations, probes, seeds, cohort):
    r = hessian_metrics(layout, W, batches, iterations=iterations, probes=probes, seeds=seeds, chunk=cohort)
    return r["hessian_top_eig"], r["hessian_trace"]


def gemm_peak_gflops(n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def batched_flops(layout, W, batches, iterations, probes, cohort) -> float:
    """FLOPs of the batched path (graph construction + every Hessian-vector product), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0.0
    planned, per_graph = plan_tiles(layout, W.shape[0], sum(len(x) for x, _ in batches))
    cohort = cohort or planned
    batches = regroup(batches, per_graph)
    for lo in range(0, W.shape[0], cohort):
        w = W[lo:lo + cohort]
        with FlopCounterMode(display=False) as fc:
            hess = PopulationHessian(layout, w, batches)
        build = fc.get_total_flops()
        v = torch.randn_like(w)
        with FlopCounterMode(display=False) as fc:
            hess.hvp(v)
        total += build + fc.get_total_flops() * (iterations + probes)
    return float(total)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cohort", type=int, default=None, help="models per batched Hessian (default: planned, as `wsl zoo landscape` does)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds, layout, W = trained_population(args.models, args.width)
    seeds = [1000 + i for i in range(args.models)]
    peak = gemm_peak_gflops()
    settings = {"recipe": Recipe(batches=args.batches, batch_size=args.batch_size).eval_batches(ds),
                "single_batch": Recipe(batches=1, batch_size=args.batch_size).eval_batches(ds)}
    out: dict = {"models": args.models, "width": args.width, "num_params": layout.num_params, "probes": args.probes,
                 "iterations": args.iterations,
                 "cohort": args.cohort or plan_tiles(layout, args.models, args.batches * args.batch_size)[0], "threads": torch.get_num_threads(),
                 "gemm_peak_gflops": round(peak, 1)}
    worst = 0.0
    for name, batches in settings.items():
        n_samples = sum(len(x) for x, _ in batches)
        t_py, t_us, c_py, c_us = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            t, c = time.perf_counter(), time.process_time()
            eig_py, tr_py = pyhessian_all(layout, W, batches, args.iterations, args.probes, seeds)
            t_py.append(time.perf_counter() - t)
            c_py.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            eig_us, tr_us = ours_all(layout, W, batches, args.iterations, args.probes, seeds, args.cohort)
            t_us.append(time.perf_counter() - t)
            c_us.append(time.process_time() - c)
        py, us = min(t_py), min(t_us)
        d_eig, d_tr = rel(eig_us, eig_py), rel(tr_us, tr_py)
        worst = max(worst, d_eig, d_tr)
        flops = batched_flops(layout, W, batches, args.iterations, args.probes, args.cohort)
        key = "" if name == "recipe" else "_single_batch"
        out.update({f"speedup{key}": round(py / us, 2), f"speedup_cpu_time{key}": round(min(c_py) / min(c_us), 2),
                    f"seconds_pyhessian{key}": round(py, 3),
                    f"seconds_batched{key}": round(us, 3), f"samples{key}": n_samples,
                    f"rel_diff_top_eig{key}": d_eig, f"rel_diff_trace{key}": d_tr,
                    f"gflops{key}": round(flops / us / 1e9, 2), f"gflops_fraction{key}": round(flops / us / 1e9 / peak, 3)})
        print(f"{name:>12}: {args.models} models x {n_samples} samples, {args.iterations} iterations + {args.probes} probes: "
              f"PyHessian {py:.2f}s, batched {us:.2f}s -> {py / us:.1f}x (CPU time {min(c_py) / min(c_us):.1f}x); "
              f"max rel. diff: top eig {d_eig:.1e}, trace {d_tr:.1e}; "
              f"{flops / us / 1e9:.1f} GFLOP/s = {flops / us / 1e9 / peak:.1%} of GEMM peak ({peak:.0f})", flush=True)
        print(f"{'':>12}  top eig (first 4): ours {[round(float(v), 3) for v in eig_us[:4]]} "
              f"PyHessian {[round(float(v), 3) for v in eig_py[:4]]}", flush=True)
    out["max_rel_disagreement"] = worst
    try:
        out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    main()
