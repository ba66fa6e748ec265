"""The side-by-side table of `benchmarks/generate.py --method all`: methods as rows, the harness's figures as columns.

    text = markdown_table(lines)        # lines: harness.run() results, one per method (same protocol)

Two reference rows carry published figures (docs/design.md, "Generators: what the field reports")
in the columns they have; the rest stay empty, because those papers do not report them
(RPG gives no majority-class baseline for its imbalanced tasks, so no gap closed). They are
other tasks and models (CIFAR), so they say what the field claims, not a comparison on our zoo.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, key, format)
    ("held-out raw", "heldout_raw_acc", "pct"),
    ("zoo", "heldout_zoo_acc", "pct"),
    ("raw / zoo", "heldout_ratio_raw", "ratio"),
    ("gap closed raw", "heldout_gap_closed_raw", "ratio"),
    ("select", "heldout_select4_acc", "pct"),
    ("retrieval-select", "heldout_retrieval_select_acc", "pct"),
    ("retrieval-nearest", "heldout_retrieval_nearest_acc", "pct"),
    ("retr.-select+head", "heldout_retrieval_select_head_acc", "pct"),  # empty for a method without a head fit
    ("retr.-nearest+head", "heldout_retrieval_nearest_head_acc", "pct"),
    ("random init+head", "heldout_random_init_head_acc", "pct"),
    ("shuffled cond.", "heldout_shuffled_condition_acc", "pct"),
    ("majority", "heldout_majority_acc", "pct"),
    ("seen raw", "seen_generated_acc", "pct"),
    ("seen zoo (std)", "seen_zoo", "zoo_std"),
    ("max IoU - fresh", "seen_iou_max_minus_fresh", "signed"),
    ("aligned NN-L2 / fresh", "seen_aligned_nn_l2_over_fresh", "ratio"),
    ("acc - fresh", "seen_acc_minus_fresh", "signed_pct"),
    ("gen-gen IoU - fresh", "seen_gen_gen_iou_minus_fresh_fresh", "signed"),
    ("256 s", "sample_eval_256_s", "sec"),
    ("fit s", "fit_s", "sec"),
)

REFERENCES: tuple[dict[str, Any], ...] = (
    {"method": "RPG (published; binary CIFAR-10 subsets, 20 held out)", "heldout_raw_acc": 0.900,
     "seen_generated_acc": 0.910, "heldout_ratio_raw": 0.989},
    {"method": "p-diff (published; CIFAR-100 ResNet-18 BN layers, seen task)", "seen_generated_acc": 0.7724,
     "seen_zoo_acc": 0.7672},
)


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if kind == "pct":
        return f"{100 * v:.1f}"
    if kind == "signed_pct":
        return f"{100 * v:+.1f}"
    if kind == "signed":
        return f"{v:+.3f}"
    if kind == "sec":
        return f"{v:.1f}"
    return f"{v:.3f}"


def _cell(line: Mapping[str, Any], key: str, kind: str) -> str:
    if kind == "zoo_std":
        z, s = line.get("seen_zoo_acc"), line.get("seen_zoo_std")
        if z is None:
            return ""
        return f"{100 * z:.1f}" + (f" ({100 * s:.1f})" if s is not None and not math.isnan(s) else "")
    return _fmt(line.get(key), kind)


def markdown_table(lines: Sequence[Mapping[str, Any]], references: bool = True) -> str:
    """A GitHub markdown table (accuracies in %); the protocol and load of each run in a note below."""
    head = ["method"] + [h for h, _, _ in COLUMNS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in list(lines) + (list(REFERENCES) if references else []):
        rows.append("| " + " | ".join([str(line.get("method", ""))] + [_cell(line, k, f) for _, k, f in COLUMNS]) + " |")
    notes = [f"- {ln['method']}: protocol {ln.get('protocol')}, n={ln.get('n')}, select={ln.get('select')}, "
             f"seed={ln.get('seed')}, {ln.get('heldout_tasks')} held-out / {ln.get('seen_tasks_evaluated')} seen tasks "
             f"evaluated, 1-min load {ln.get('load_1min')}" for ln in lines]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
