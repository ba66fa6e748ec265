"""Weights for seen and held-out tasks, every generator method, one harness (last line: JSON).

    .venv/bin/python benchmarks/generate.py --method diffusion --protocol digits-subsets \\
        --store /work/stores/digits-subsets [--set steps=3000] [-n 100] [--select 4] [--seed 0]
    .venv/bin/python benchmarks/generate.py --method all --protocol digits-pairs --store S --table table.md

A thin command line over generators/evaluation/harness.py (the module docstring lists what a run
does and every key of the JSON line): fit the method on the protocol's seen tasks (never writing
into the store), report held-out and a sample of seen tasks with every baseline (majority,
retrieval-select, retrieval-nearest, shuffled-condition, fresh models of the zoo's recipe), time
256 models sampled and evaluated. `--method all` runs every registered method on the same zoo,
prints one JSON line per method and writes the side-by-side markdown table (harness_table.py),
with RPG's and p-diff's published figures as reference rows. `--train-spec SPEC` trains a spec
into --store first (skipped when complete), for a machine without the zoo.

Bad input (unknown method or protocol, held-out tasks without zoo models, a split with no seen
task, --select < 1, ...) exits 2 with the reason, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: spinning threads starve beside busy processes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_sets(items) -> dict:
    from generators.set_options import parse_set_options

    return parse_set_options(items, example="steps=3000")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, help="a registered method (wsl generate methods), or 'all'")
    ap.add_argument("--protocol", required=True, help="digits-pairs, digits-pairs-random, digits-subsets, a .toml "
                    "file or inline items (docs/generators.md, Protocols)")
    ap.add_argument("--store", required=True, help="the zoo's store (read only)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="method option KEY=VALUE (repeatable)")
    ap.add_argument("-n", type=int, default=100, help="generated models per task and per baseline")
    ap.add_argument("--select", type=int, default=4, help="the selected figure: best n of select x n by train loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seen-tasks", type=int, default=20, help="seen tasks evaluated (a seeded sample; all when fewer)")
    ap.add_argument("--novelty-tasks", type=int, default=6, help="of those, how many get fresh models + noise baselines")
    ap.add_argument("--metric", default="test_acc", help="target-metric condition of the fit ('none' to skip)")
    ap.add_argument("--out", default=None, help="generator + reports folder (default /tmp/wsl-harness/METHOD-PROTOCOL-STORE)")
    ap.add_argument("--table", default=None, help="with --method all: write the markdown table here")
    ap.add_argument("--train-spec", default=None, help="train this zoo spec into --store first (reused when complete)")
    ap.add_argument("--no-timing", action="store_true", help="skip the 256-model timing")
    args = ap.parse_args(argv)

    from store.errors import UserError

    try:
        return _run(args)
    except UserError as e:
        print(f"error: {e.message}\n  fix: {e.fix}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from generators.evaluation.harness import HarnessOptions, json_safe, run
    from generators.evaluation.harness_table import markdown_table
    from generators.registry import get_method, method_names
    from store.errors import UserError

    options = parse_sets(args.sets)
    methods = method_names() if args.method == "all" else [args.method]
    for m in methods:
        get_method(m)
    if args.table and args.method != "all":
        raise UserError("--table is for --method all", "drop --table, or run every method with --method all")
    if args.train_spec:
        import zoo
        from store.store import ZooStore

        zoo.train(args.train_spec, ZooStore(args.store, create=True))
    lines = []
    for m in methods:
        o = HarnessOptions(method=m, protocol=args.protocol, store=args.store,
                           options=options if args.method != "all" else {}, n=args.n, select=args.select,
                           seed=args.seed, seen_tasks=args.seen_tasks, novelty_tasks=args.novelty_tasks,
                           metric=None if args.metric == "none" else args.metric,
                           out=(Path(args.out) / m if args.method == "all" else args.out) if args.out else None,
                           timing=not args.no_timing)
        line = run(o, say=lambda s: print(s, flush=True))
        lines.append(line)
        print(json.dumps(json_safe(line), default=_json_default), flush=True)
    if args.method == "all":
        text = markdown_table(lines)
        print(text)
        if args.table:
            Path(args.table).write_text(text)
    return 0


def _json_default(o):
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
