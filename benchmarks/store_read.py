"""Store read benchmark: SQL-selected weights -> one torch tensor, vs one file per checkpoint.

What it builds (under --dir, default a fresh folder in /tmp, removed at the end unless --keep):
- a store of 20,000 checkpoints (2,000 MLPs of 6,010 parameters x 10 epochs), appended the way the
  population trainer writes (one part per cohort of 500 models per epoch), then compacted;
- for the checkpoints the query selects (lr = 0.01: a third), the same weights as one torch.save
  file per checkpoint (a state dict, how existing zoos ship) and as one safetensors file per
  checkpoint, with their metadata in a JSON-lines file;
- a second store of 1,000,000 checkpoint rows (100,000 models x 10 epochs; 64 parameters each to keep
  the disk small: metadata queries never read the weights column, so its size does not matter to them).

What it times (page cache warm for every method; each method's median over --repeats runs):
- store: `ZooStore.weights("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id)
  WHERE models.lr = 0.01")`, end to end (SQL, locating the rows, reading, the metadata DataFrame),
  two ways in alternating runs: verified (the default: every cell against its stored xxh3 checksum,
  store/verified_read.py) and unverified (`verify=False`, the figure before reads were verified);
- torch.save: filter the JSON-lines metadata with pandas, torch.load(weights_only=True) each
  selected file, flatten, stack into [N, P];
- safetensors: the same with safetensors.torch.load_file;
- a metadata query (join + filter + group by) over the 1,000,000 checkpoint rows: p50 of 20 runs.

Last line: JSON with gbps (unverified), gbps_verified, verified_fraction_of_unverified (unverified
time / verified time, same process, alternating runs), ratio_vs_torch_save and ratio_vs_safetensors (of
the verified default read), meta_query_ms_p50.
Targets on a 2-core CPU: gbps >= 1.0, gbps_verified >= 1.5 and >= 70% of unverified, ratios >= 10 and
>= 4, meta_query_ms_p50 <= 50.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import ParamLayout, ZooStore  # noqa: E402

LRS = [1e-3, 1e-2, 1e-1]
QUERY = "SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) WHERE models.lr = 0.01"
META_QUERY = ("SELECT m.lr, c.epoch, count(*) AS n, avg(c.test_acc) AS mean_acc, max(c.test_acc) AS best_acc "
              "FROM checkpoints c JOIN models m USING (model_id) WHERE c.epoch >= 5 AND m.status = 'done' "
              "GROUP BY ALL ORDER BY ALL")


def mlp_layout(width: int, inputs: int = 64, classes: int = 10) -> ParamLayout:
    return ParamLayout([("0.weight", (width, inputs)), ("0.bias", (width,)), ("2.weight", (classes, width)),
                        ("2.bias", (classes,))], arch={"name": "mlp", "in_features": inputs, "out_features": classes,
                                                       "width": width, "depth": 1})


def model_rows(n: int, layout: ParamLayout, epochs: int) -> list[dict]:
    return [dict(model_id=f"m{i:07d}", zoo="bench", architecture="mlp", arch_config=json.dumps(layout.arch),
                 layout_id=layout.layout_id, dataset="digits", dataset_id="digits-s0", task="classification",
                 width=layout.arch["width"], depth=1, optimizer="sgd", lr=LRS[i % 3], momentum=0.9, weight_decay=0.0,
                 batch_size=32, epochs=epochs, schedule="constant", seed=i, status="done",
                 hparams=json.dumps({"lr": LRS[i % 3], "seed": i})) for i in range(n)]


def ckpt_rows(models: range, epoch: int, rng: np.random.Generator) -> pd.DataFrame:
    n = len(models)
    ids = [f"m{i:07d}" for i in models]
    acc = rng.uniform(0.1, 1.0, n)
    return pd.DataFrame({"checkpoint_id": [f"{m}-e{epoch:04d}" for m in ids], "model_id": ids,
                         "epoch": epoch, "step": epoch * 100, "train_loss": rng.uniform(0, 2, n),
                         "train_acc": acc, "test_loss": rng.uniform(0, 2, n), "test_acc": acc * 0.95})


def build_store(path: Path, models: int, epochs: int, cohort: int, layout: ParamLayout, seed: int = 0) -> ZooStore:
    store = ZooStore(path, create=True)
    store.append("models", model_rows(models, layout, epochs))
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for start in range(0, models, cohort):
        cohort_models = range(start, min(models, start + cohort))
        for epoch in range(epochs):  # the trainer appends one part per cohort per epoch
            w = torch.randn(len(cohort_models), layout.num_params, generator=g) * 0.1
            store.append_weights("checkpoints", w, ckpt_rows(cohort_models, epoch, rng), layout)
    return store


def timed(fn, repeats: int, cpu: list | None = None) -> tuple[float, list[float], object]:
    """Median wall time over `repeats` calls; CPU time (user + system, all threads) of each call into `cpu`."""
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        c = time.process_time()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=80, help="MLP 64-width-10: 80 gives 6,010 parameters")
    ap.add_argument("--meta-rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = args.dir or Path(tempfile.mkdtemp(prefix="wsl-store-bench-", dir="/tmp"))
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    layout = mlp_layout(args.width)
    result: dict = {"loadavg_1m_start": round(os.getloadavg()[0], 2),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "checkpoints": args.models * args.epochs, "num_params": layout.num_params}
    try:
        # ---------------- build ----------------
        t = time.perf_counter()
        store = build_store(root / "store", args.models, args.epochs, 500, layout)
        result["build_s"] = round(time.perf_counter() - t, 2)
        result["parts_as_written"] = len(store.part_files("checkpoints"))

        # ---------------- store read, as written (one part per cohort x epoch) ----------------
        def read_store():
            return store.weights(QUERY)

        first_t = time.perf_counter()
        w, meta = read_store()
        result["store_first_call_s"] = round(time.perf_counter() - first_t, 4)
        n, p = w.shape
        nbytes = w.numel() * w.element_size()
        del w, meta
        med_written, _, _ = timed(read_store, args.repeats)
        result["store_as_written_s"] = round(med_written, 4)

        t = time.perf_counter()
        store.compact()
        result["compact_s"] = round(time.perf_counter() - t, 2)
        result["parts_compacted"] = len(store.part_files("checkpoints"))
        store = ZooStore(root / "store", create=False)

        def read_unverified():
            return store.weights(QUERY, verify=False)

        read_store()
        read_unverified()
        cpu: list[float] = []
        cpu_u: list[float] = []
        store_times, unverified_times = [], []
        for _ in range(args.repeats):  # alternate the two ways, so load hits both alike
            _, t_u, out_u = timed(read_unverified, 1, cpu_u)
            unverified_times += t_u
            del out_u
            _, t_v, (w_store, meta_store) = timed(read_store, 1, cpu)
            store_times += t_v
        med_store, med_unverified = statistics.median(store_times), statistics.median(unverified_times)
        w_u, meta_u = read_unverified()  # the same bytes either way (the query has no ORDER BY: align by key)
        pos_u = {c: i for i, c in enumerate(meta_u.checkpoint_id)}
        assert torch.equal(w_u[torch.tensor([pos_u[c] for c in meta_store.checkpoint_id])], w_store)
        del w_u, meta_u
        result["store_cpu_s_p50"] = round(statistics.median(cpu), 4)
        result["store_unverified_cpu_s_p50"] = round(statistics.median(cpu_u), 4)
        result.update(selected=n, selected_mb=round(nbytes / 2**20, 1), store_s=round(med_store, 4),
                      store_times_s=[round(x, 4) for x in store_times], store_unverified_s=round(med_unverified, 4),
                      store_unverified_times_s=[round(x, 4) for x in unverified_times])

        # ---------------- one file per checkpoint ----------------
        files = root / "files"
        files.mkdir()
        from safetensors.torch import load_file, save_file

        ids = meta_store.checkpoint_id.tolist()
        with open(files / "metadata.jsonl", "w") as fh:
            for row in store.sql("SELECT checkpoint_id, model_id, epoch, test_acc, lr FROM checkpoints "
                                 "JOIN models USING (model_id)").itertuples(index=False):
                fh.write(json.dumps(row._asdict()) + "\n")
        for i, cid in enumerate(ids):
            sd = {k: v.clone() for k, v in layout.unflatten(w_store[i]).items()}
            torch.save(sd, files / f"{cid}.pt")
            save_file(sd, str(files / f"{cid}.safetensors"))

        def select_ids():
            df = pd.read_json(files / "metadata.jsonl", lines=True)
            return df.loc[df.lr == 0.01, "checkpoint_id"].tolist()

        def read_torch():
            return torch.stack([layout.flatten(torch.load(files / f"{c}.pt", weights_only=True)) for c in select_ids()])

        def read_safetensors():
            return torch.stack([layout.flatten(load_file(str(files / f"{c}.safetensors"))) for c in select_ids()])

        read_torch()
        med_torch, _, w_torch = timed(read_torch, max(2, args.repeats // 2))
        read_safetensors()
        med_st, _, w_st = timed(read_safetensors, max(2, args.repeats // 2))
        # same weights, bit for bit (the file readers select in metadata order, the store in its order)
        pos = {c: i for i, c in enumerate(select_ids())}
        perm = torch.tensor([pos[c] for c in ids])
        assert torch.equal(w_torch[perm], w_store) and torch.equal(w_st[perm], w_store)
        del w_torch, w_st
        result.update(torch_save_s=round(med_torch, 4), safetensors_s=round(med_st, 4))

        # ---------------- metadata query over 1,000,000 checkpoint rows ----------------
        meta_models = max(1, args.meta_rows // args.epochs)
        t = time.perf_counter()
        big = ZooStore(root / "meta-store", create=True)
        small = mlp_layout(4, inputs=8, classes=4)  # 56 parameters: the weights column is there, and never read
        big.append("models", model_rows(meta_models, small, args.epochs))
        rng = np.random.default_rng(1)
        chunk = 50_000
        for start in range(0, meta_models, chunk):
            ms = range(start, min(meta_models, start + chunk))
            for epoch in range(args.epochs):
                rows = ckpt_rows(ms, epoch, rng)
                big.append_weights("checkpoints", torch.randn(len(rows), small.num_params) * 0.1, rows, small)
        big.compact()
        big = ZooStore(root / "meta-store", create=False)
        result["meta_build_s"] = round(time.perf_counter() - t, 1)
        result["meta_rows"] = big.count("checkpoints")
        result["meta_parts"] = len(big.part_files("checkpoints"))
        big.sql(META_QUERY)
        qt, qc = [], []
        for _ in range(20):
            c = time.process_time()
            t = time.perf_counter()
            df = big.sql(META_QUERY)
            qt.append(time.perf_counter() - t)
            qc.append(time.process_time() - c)
        assert int(df.n.sum()) == meta_models * (args.epochs - 5)
        result["meta_query_ms_p50"] = round(1e3 * statistics.median(qt), 2)
        result["meta_query_cpu_ms_p50"] = round(1e3 * statistics.median(qc), 2)  # both cores' CPU time
        simple = "SELECT count(*) AS n FROM checkpoints WHERE epoch = 9 AND test_acc > 0.9"
        qt = []
        for _ in range(20):
            t = time.perf_counter()
            big.sql(simple)
            qt.append(time.perf_counter() - t)
        result["meta_filter_ms_p50"] = round(1e3 * statistics.median(qt), 2)

        gbps = nbytes / med_unverified / 1e9
        result["gbps_per_cpu_second"] = round(nbytes / statistics.median(cpu) / 1e9, 3)  # what load cannot inflate
        result["gbps_unverified_per_cpu_second"] = round(nbytes / statistics.median(cpu_u) / 1e9, 3)
        result.update(gbps=round(gbps, 3), gbps_verified=round(nbytes / med_store / 1e9, 3),
                      verified_fraction_of_unverified=round(med_unverified / med_store, 3),
                      verified_fraction_cpu=round(statistics.median(cpu_u) / statistics.median(cpu), 3),
                      gbps_as_written=round(nbytes / med_written / 1e9, 3),
                      torch_save_gbps=round(nbytes / med_torch / 1e9, 3), safetensors_gbps=round(nbytes / med_st / 1e9, 3),
                      ratio_vs_torch_save=round(med_torch / med_store, 2), ratio_vs_safetensors=round(med_st / med_store, 2))
        try:
            result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        except OSError:  # pragma: no cover
            pass
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for k, v in result.items():
        print(f"{k}: {v}")
    print(json.dumps({k: result[k] for k in ("gbps", "gbps_verified", "verified_fraction_of_unverified",
                                             "ratio_vs_torch_save", "ratio_vs_safetensors", "meta_query_ms_p50")}
                     | {"details": result}))


if __name__ == "__main__":
    main()
