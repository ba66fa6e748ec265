"""One vqar generator for three widths: held-out accuracy per width vs the zoo (last line: JSON).

    .venv/bin/python benchmarks/vqar_widths.py [--store DIR] [--protocol digits-pairs] [-n 64] [--set key=value ...]
        [--unseen-width 32]

1. Train zoo/specs/digits-pairs-widths.toml (MLP widths 16/32/64 x 45 pair tasks x 3 seeds) into
   --store when it is not there yet (tens of seconds on 2 CPU cores).
2. Fit ONE vqar generator on the seen tasks of the protocol at every width (metric test_acc,
   aligned by seed), as `wsl generate fit --method vqar --protocol ...` does.
3. Per width, per held-out task: n samples (target test_acc = 1.0, --seed), mean test accuracy;
   the zoo's mean over the task's checkpoints of that width; majority-class accuracy.
   held-out ratio = mean generated / mean zoo; gap closed = (generated - majority) / (zoo - majority).
   `multi_width_min_heldout_ratio` is the smallest ratio over the widths (target >= 0.95).
4. --unseen-width W: a second generator fit WITHOUT width W's models, sampled at width W (a
   layout of the family it never saw) and compared with W's zoo: the stretch beyond IGPG.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.evaluation.references import zoo_checkpoints  # noqa: E402
from generators.protocols import parse_protocol, resolve  # noqa: E402
from generators.vqar import VQAutoregressive  # noqa: E402
from generators.vqar.health import decoded_heldout  # noqa: E402
from store.store import ZooStore  # noqa: E402
from wsl.evaluate import evaluate  # noqa: E402
from zoo import load_dataset, load_spec, train  # noqa: E402

SPEC = ROOT / "zoo" / "specs" / "digits-pairs-widths.toml"


def load1() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return float("nan")


def parse_sets(items) -> dict:
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def majority(ds) -> float:
    y = ds.y_test
    return float(torch.bincount(y).max()) / len(y)


def per_width(gen, store, tasks, layouts, n, seed, zoo_layouts=None) -> dict:
    """{width: {generated, zoo, majority, ratio, gap_closed}} over `tasks` (zoo of `zoo_layouts`, default the same)."""
    out = {}
    for lay in layouts:
        width = lay.arch.get("width")
        gen_acc, zoo_acc, maj = [], [], []
        for t in tasks:
            ds = load_dataset(t)
            w, got = gen.sample(n, t, seed=seed, target={"test_acc": 1.0}, layout=lay)
            gen_acc.append(float(evaluate(w, got, ds).accuracy.mean()))
            ref, _ = zoo_checkpoints(store, t, lay.layout_id)
            zoo_acc.append(float(evaluate(ref, lay, ds).accuracy.mean()) if len(ref) else float("nan"))
            maj.append(majority(ds))
        g, z, m = (sum(v) / len(v) for v in (gen_acc, zoo_acc, maj))
        out[str(width)] = {"layout_id": lay.layout_id, "generated": round(g, 4), "zoo": round(z, 4),
                           "majority": round(m, 4), "ratio": round(g / z, 4), "gap_closed": round((g - m) / (z - m), 4)}
        print(f"  width {width}: generated {g:.4f}  zoo {z:.4f}  ratio {g / z:.4f}  (load {load1()})", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/vqar-widths")
    ap.add_argument("--protocol", default="digits-pairs")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--unseen-width", type=int, default=None)
    a = ap.parse_args(argv)
    opts = parse_sets(a.set)
    zs = ZooStore(a.store, create=True)
    t0 = time.perf_counter()
    train(load_spec(str(SPEC)), zs)  # resumes: nothing to do when the zoo is there
    print(f"zoo ready in {time.perf_counter() - t0:.1f} s", flush=True)
    where = "zoo = 'digits-pairs-widths'"
    split = resolve(parse_protocol(a.protocol), zs, where).split()
    t0 = time.perf_counter()
    gen = VQAutoregressive.fit(zs, where, last=True, protocol=split, metric="test_acc", **opts)
    fit_s = time.perf_counter() - t0
    layouts = sorted(gen.layouts, key=lambda lay: lay.arch.get("width"))
    print(f"fit on {len(layouts)} layouts in {fit_s:.1f} s (load {load1()})", flush=True)
    held = per_width(gen, zs, split.held_out, layouts, a.n, a.seed)
    seen = per_width(gen, zs, split.seen[:5], layouts, a.n, a.seed)
    line = {"benchmark": "vqar_widths", "protocol": a.protocol, "n": a.n, "seed": a.seed, "options": opts,
            "widths": sorted(held, key=int), "heldout": held, "seen_first5": seen,
            "multi_width_min_heldout_ratio": min(v["ratio"] for v in held.values()),
            "multi_width_min_gap_closed": min(v["gap_closed"] for v in held.values()),
            "codebook": {k: gen.fit_info["codebook"].get(k) for k in ("usage_fraction", "dead_code_fraction",
                                                                      "perplexity", "residual_relative_mse",
                                                                      "loo_residual_relative_mse")},
            # held-out tasks' zoo checkpoints of every width through the VQ-VAE alone (no prior, no head fit)
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in decoded_heldout(gen, zs, split.held_out).items()},
            "fit_s": round(fit_s, 1), "load": load1()}
    if a.unseen_width is not None:
        keep = [lay for lay in layouts if lay.arch.get("width") != a.unseen_width]
        target = [lay for lay in layouts if lay.arch.get("width") == a.unseen_width]
        if not target or len(keep) < 1:
            raise SystemExit(f"--unseen-width {a.unseen_width} is not one of the zoo's widths")
        ids = ", ".join(f"'{lay.layout_id}'" for lay in keep)
        g2 = VQAutoregressive.fit(zs, f"{where} AND checkpoints.layout_id IN ({ids})", last=True, protocol=split,
                                  metric="test_acc", **opts)
        print(f"unseen width {a.unseen_width}: generator fit on widths {[lay.arch['width'] for lay in keep]}", flush=True)
        un = per_width(g2, zs, split.held_out, target, a.n, a.seed)
        line["unseen_width"] = {"width": a.unseen_width, "fit_widths": [lay.arch["width"] for lay in keep],
                                **un[str(a.unseen_width)]}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
