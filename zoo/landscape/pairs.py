"""Seed pairs of a configuration, and the CKA of every pair: the pairwise half of the landscape metrics.

Models that differ only in their seed (same zoo and hyperparameters: one *configuration*,
`config_key`) are paired for mode connectivity and CKA; `seed_pairs` chooses the pairs and
`pair_cka` computes minibatch CKA of logits and last hidden layer for all of them from one
batched forward per batch.
"""
from __future__ import annotations

import itertools
import json
from typing import Sequence

import torch

from wsl.functional import population_forward
from zoo.landscape.cka import MinibatchCKA


def config_key(zoo: str, hparams: str | None, model_id: str) -> str:
    """Models with the same key are seeds of one configuration (same zoo and hyperparameters but the seed)."""
    if not hparams:
        return f"{zoo}|{model_id}"
    try:
        h = json.loads(hparams)
    except (TypeError, ValueError):
        return f"{zoo}|{model_id}"
    h.pop("seed", None)
    return f"{zoo}|" + json.dumps(h, sort_keys=True, separators=(",", ":"))


def seed_pairs(k: int, partners: int = 0, ids: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Pairs among k seeds: all of them (partners=0), or each seed with its `partners` nearest in a ring.

    The ring keeps every seed in the same number of pairs (2 * partners, at most
    k - 1), so no model is left without one when the pairs are capped.
    """
    ids = list(range(k)) if ids is None else list(ids)
    if partners <= 0 or 2 * partners >= k - 1:
        return list(itertools.combinations(ids, 2))
    out = set()
    for i in range(k):
        for d in range(1, partners + 1):
            a, b = i, (i + d) % k
            out.add((ids[min(a, b)], ids[max(a, b)]))
    return sorted(out)


def pair_cka(layout, W: torch.Tensor, pairs, members, batches, chunk: int) -> tuple[list[float], list[float]]:
    """Minibatch CKA of logits and of the last hidden layer for every pair (accumulated over the recipe's batches)."""
    if not pairs:
        return [], []
    involved = sorted({i for p in pairs for i in p})
    groups: dict[int, list[int]] = {}
    for idx in members.values():
        sub = [i for i in idx if i in set(involved)]
        for i in sub:
            groups[i] = sub
    accs: dict[tuple[int, ...], tuple[MinibatchCKA, MinibatchCKA]] = {}
    for g in {tuple(v) for v in groups.values()}:
        accs[g] = (MinibatchCKA(len(g)), MinibatchCKA(len(g)))
    order = torch.tensor(involved)
    where = {m: k for k, m in enumerate(involved)}
    with torch.no_grad():
        for x, _ in batches:
            logits, hidden = [], []
            step = max(1, chunk or 64)
            for lo in range(0, len(order), step):
                w = W[order[lo:lo + step]]
                params = layout.unflatten(w)
                hidden.append(population_forward(layout, params, x, features=True))
                logits.append(population_forward(layout, params, x))
            logits_t, hidden_t = torch.cat(logits), torch.cat(hidden)
            for g, (al, ah) in accs.items():
                rows = torch.tensor([where[m] for m in g])
                al.update(logits_t[rows])
                ah.update(hidden_t[rows])
    mats = {g: (al.matrix(), ah.matrix()) for g, (al, ah) in accs.items()}
    out_l, out_h = [], []
    for i, j in pairs:
        g = tuple(groups[i])
        ml, mh = mats[g]
        out_l.append(float(ml[g.index(i), g.index(j)]))
        out_h.append(float(mh[g.index(i), g.index(j)]))
    return out_l, out_h
