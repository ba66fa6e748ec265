"""Every benchmark's CUDA path on one GPU, one JSON line each (`make bench-gpu`); under 8 minutes on one GPU.

Rows (each its two ways of doing the same work on the GPU, timed with torch.cuda.synchronize()
around every measurement):

- train_population: benchmarks/train_population.py --device cuda: the MLP, CNN and ResNet zoos,
  per-model loop vs one population cohort, the ResNet at ResNet-18's shape (width 64, 2-2-2-2
  blocks). Target: speedup >= 30x.
- evaluate_population: benchmarks/evaluate_population.py --device cuda: the MLP and ResNet-18-shaped
  populations, per-model loop vs fused evaluation. Target: ratio >= 20x.
- loader: wsl.WeightLoader streaming a store's weights to the GPU (its double buffer of pinned host
  memory, copies on a side stream) against the host-to-device bandwidth of pinned memory measured
  in the same run (one large pinned tensor, non_blocking copy). Target: >= 50% of it. The store
  read alone (to host memory) is reported beside it: it says which side limits.
- landscape: Hessian trace + top eigenvalue of 64 digits MLPs (zoo.landscape.hessian_metrics on
  CUDA: batched Hessian-vector products) vs one model at a time (a per-model autograd HVP loop,
  as PyHessian runs it), the same probe and iteration counts; values compared.
- generate_sample: generators/ have no device option yet (sampling runs on the CPU): the row says
  so (`cuda_path: false`) instead of timing something else under that name.

Without CUDA the script says so on stderr, prints one JSON line with the reason and exits 2.
With --smoke it runs every row it can on the CPU at toy sizes, to check the script itself; those
lines say "smoke": true and are not GPU figures. Exit status 1 when a row failed or a CUDA path is
missing.

    .venv/bin/python benchmarks/gpu.py [--budget-s 470] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_script(name: str, args: list[str], timeout: float) -> dict:
    """Run a benchmark script; its last stdout line is its JSON (its other output goes to our stderr)."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {timeout:.0f} s"}
    sys.stderr.write(p.stdout + p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"benchmark": name, "error": f"exit status {p.returncode}", "stderr_tail": p.stderr[-2000:]}
    out = json.loads(lines[-1])
    out.update({"benchmark": name, "seconds": round(time.perf_counter() - t, 1)})
    return out


# ----- the streaming loader against pinned host-to-device bandwidth ---------------------------
def pinned_h2d_gbps(device: str, nbytes: int, repeats: int = 5) -> float:
    host = torch.empty(nbytes // 4, dtype=torch.float32).pin_memory()
    dev = torch.empty_like(host, device=device)
    dev.copy_(host, non_blocking=True)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def loader_row(device: str, smoke: bool) -> dict:
    from store import ParamLayout, ZooStore
    from wsl import WeightLoader

    n, p = (64, 4096) if smoke else (4096, 65536)  # 1 GiB of float32 weights (256 KiB per checkpoint)
    layout = ParamLayout([("w", (p,))], arch={"name": "bench-loader"})
    with tempfile.TemporaryDirectory(prefix="wsl-bench-gpu-") as d:
        zs = ZooStore(Path(d) / "store")
        g = torch.Generator().manual_seed(0)
        for start in range(0, n, 512):
            k = min(512, n - start)
            rows = [dict(checkpoint_id=f"c{i:06d}", model_id=f"m{i:06d}", epoch=0, step=0, train_loss=0.0,
                         train_acc=0.0, test_loss=0.0, test_acc=0.0) for i in range(start, start + k)]
            zs.append_weights("checkpoints", torch.randn(k, p, generator=g), rows, layout)
        query = "SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id"
        nbytes = n * p * 4

        def stream(dev: str) -> float:
            loader = WeightLoader(zs, query, batch_size=256, device=dev)
            sync(dev)
            t = time.perf_counter()
            total = 0
            for w, _ in loader:
                total += w.shape[0]
            sync(dev)
            assert total == n
            return time.perf_counter() - t

        stream(device)  # warm: page cache and CUDA context
        t_dev = min(stream(device) for _ in range(3))
        t_host = min(stream("cpu") for _ in range(3))
        zs.close()
    h2d = pinned_h2d_gbps(device, min(nbytes, 1 << 30)) if device.startswith("cuda") else float("nan")
    loader_gbps = nbytes / t_dev / 1e9
    return {"benchmark": "loader", "device": device, "bytes": nbytes, "loader_gbps": round(loader_gbps, 2),
            "store_read_to_host_gbps": round(nbytes / t_host / 1e9, 2),
            "pinned_h2d_gbps": round(h2d, 2) if h2d == h2d else None,
            "fraction_of_h2d": round(loader_gbps / h2d, 3) if h2d == h2d else None}


# ----- landscape: batched Hessian-vector products vs one model at a time ---------------------------
def landscape_row(device: str, smoke: bool) -> dict:
    import torch.nn.functional as F

    from wsl import ParamLayout
    from zoo import config_for, load_dataset
    from zoo.landscape.hessian import EIG_SEED_OFFSET, hessian_metrics

    n, probes, iters = (4, 2, 2) if smoke else (64, 32, 20)
    ds = load_dataset("digits")
    layout = ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": 16, "depth": 2}))
    mods = []
    for i in range(n):
        torch.manual_seed(i)
        mods.append(layout.build_module())
    w = layout.flatten(mods).to(device)
    x, y = ds.x_train[:1024].to(device), ds.y_train[:1024].to(device)

    def batched():
        return hessian_metrics(layout, w, [(x, y)], probes=probes, iterations=iters, chunk=n)

    def per_model():
        """PyHessian's way: one model's gradient graph, then one backward per product."""
        traces, eigs = [], []
        for i in range(n):
            m = layout.load_into(layout.build_module().to(device), w[i])
            ps = list(m.parameters())
            grads = torch.autograd.grad(F.cross_entropy(m(x), y), ps, create_graph=True)
            gen = torch.Generator().manual_seed(i)
            tr = 0.0
            for _ in range(probes):
                z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device, p.dtype) for p in ps]
                hz = torch.autograd.grad(grads, ps, grad_outputs=z, retain_graph=True)
                tr += sum((a * b).sum() for a, b in zip(hz, z)).item()
            gen_eig = torch.Generator().manual_seed(i + EIG_SEED_OFFSET)  # the batched path's start vector
            v = [torch.randn(p.shape, generator=gen_eig).to(device) for p in ps]
            for _ in range(iters):
                norm = torch.sqrt(sum((t * t).sum() for t in v))
                v = [t / norm for t in v]
                hv = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True)
                eig = sum((a * b).sum() for a, b in zip(hv, v)).item()
                v = [t.detach() for t in hv]
            traces.append(tr / probes)
            eigs.append(eig)
        return torch.tensor(traces), torch.tensor(eigs)

    batched()
    sync(device)
    t = time.perf_counter()
    res = batched()
    sync(device)
    t_b = time.perf_counter() - t
    t = time.perf_counter()
    tr_loop, eig_loop = per_model()
    sync(device)
    t_l = time.perf_counter() - t
    rel = lambda a, b: float(((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-8)).median())  # noqa: E731
    return {"benchmark": "landscape", "device": device, "models": n, "probes": probes, "iterations": iters,
            "batched_s": round(t_b, 3), "per_model_s": round(t_l, 3), "speedup": round(t_l / t_b, 2),
            "median_rel_diff_trace": rel(res["hessian_trace"], tr_loop),
            "median_rel_diff_top_eig": rel(res["hessian_top_eig"], eig_loop)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=470, help="stop starting rows after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="check the script on the CPU at toy sizes (not GPU figures)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        reason = f"no CUDA device: torch {torch.__version__} sees no GPU on this machine"
        print(f"bench-gpu: {reason}; nothing was measured", file=sys.stderr)
        emit({"benchmark": "bench-gpu", "error": reason})
        return 2
    device = "cpu" if args.smoke else "cuda"
    t0 = time.perf_counter()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (smoke test on the CPU)"
    emit({"benchmark": "bench-gpu", "device": gpu, "torch": torch.__version__, "load_1min": load1(),
          "smoke": args.smoke})
    dev_args = ["--device", "cpu"] if args.smoke else ["--device", "cuda"]
    train_args = (["--steps", "2", "--repeats", "1", "--resnet-models", "4", "--only", "resnet"] if args.smoke else
                  ["--steps", "20", "--repeats", "2", "--resnet-width", "64", "--resnet-blocks", "2,2,2,2",
                   "--resnet-models", "32"])
    eval_args = (["--mlps", "8", "--cnns", "4", "--resnets", "4", "--repeats", "1"] if args.smoke else
                 ["--repeats", "3", "--resnet-width", "64", "--resnet-blocks", "2,2,2,2", "--resnets", "64"])
    rows = [
        ("train_population", lambda: run_script("train_population", dev_args + train_args, 200)),
        ("evaluate_population", lambda: run_script("evaluate_population", dev_args + eval_args, 150)),
        ("loader", lambda: loader_row(device, args.smoke)),
        ("landscape", lambda: landscape_row(device, args.smoke)),
    ]
    failed = False
    for name, fn in rows:
        if time.perf_counter() - t0 > args.budget_s:
            emit({"benchmark": name, "error": f"skipped: the {args.budget_s:.0f} s budget is spent"})
            failed = True
            continue
        try:
            row = fn()
        except Exception as e:  # report and go on: one broken row must not hide the others
            row = {"benchmark": name, "error": f"{type(e).__name__}: {e}"}
        row.setdefault("benchmark", name)
        row["smoke"] = args.smoke
        failed |= "error" in row
        emit(row)
    emit({"benchmark": "generate_sample", "cuda_path": False, "smoke": args.smoke,
          "reason": "generators/ have no device option yet: sampling runs on the CPU (nothing timed)"})
    emit({"benchmark": "bench-gpu", "total_s": round(time.perf_counter() - t0, 1), "load_1min": load1(),
          "failed": failed, "missing_cuda_paths": ["generate_sample"]})
    return 1 if failed or not args.smoke else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
