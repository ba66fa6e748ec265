"""The unseen-dataset protocol on the built-in digits-pairs zoo.

45 binary tasks (class A vs class B of scikit-learn's digits, A < B, label 1 = B).
A fixed split: 35 tasks to fit the generator on, 10 held out. For a held-out
task the generator sees only that task's training samples (through the set
encoder); it never sees a model trained on it.

The 10 held-out pairs were drawn once (numpy default_rng(1), 10 of 45) under
two constraints that make "unseen" a fair test of composition rather than of
extrapolation: every digit 0-9 occurs in some held-out pair, and each held-out
pair's first digit is the first digit (label 0) of some seen pair and its
second digit the second digit (label 1) of some seen pair.
"""
from __future__ import annotations

from zoo.datasets import pair_tasks

BASE = "digits"
HELD_OUT_PAIRS = ((0, 2), (0, 6), (1, 3), (1, 7), (2, 3), (2, 4), (3, 8), (4, 9), (5, 8), (6, 8))


def held_out_tasks(base: str = BASE) -> list[str]:
    """The 10 held-out task names, e.g. digits-pair:0-2."""
    return [f"{base}-pair:{a}-{b}" for a, b in HELD_OUT_PAIRS]


def seen_tasks(base: str = BASE) -> list[str]:
    """The 35 tasks a generator is fit on."""
    held = set(held_out_tasks(base))
    return [t for t in pair_tasks(base) if t not in held]


def sql_list(names: list[str]) -> str:
    """('a', 'b', ...) for an SQL IN clause."""
    return "(" + ", ".join("'" + n.replace("'", "''") + "'" for n in names) + ")"


def seen_where(base: str = BASE, extra: str | None = None) -> str:
    """SQL filter over `checkpoints JOIN models` selecting the seen tasks' checkpoints."""
    w = f"dataset IN {sql_list(seen_tasks(base))}"
    return f"({w}) AND ({extra})" if extra else w
