"""Permutation symmetry of hidden units: alignment (weight matching) and augmentation.

Reordering the hidden units of a layer (rows of its weight and bias, and the
matching input columns of the next layer) leaves the function unchanged. Two
seeds' models therefore differ by an arbitrary permutation per hidden layer;
averaging or comparing them without undoing it mixes unrelated units.

    perms = weight_matching(reference, other, layout)     # Git Re-Basin, Ainsworth et al. 2022, Alg. 1
    aligned = apply_permutation(other, layout, perms)     # same function, units reordered to match
    aug = random_permutation(weights, layout, generator)  # function-preserving augmentation, [N, P]

Supported (rules in wsl/symmetry.py): mlp and siren (each hidden Linear layer),
cnn2d / cnn1d (each conv's output channels, with their BatchNorm's parameters
and statistics), resnet / resnet1d (one permutation per residual stream, one
per block-inner conv). A permutation `perm` of a group maps position j to the
other model's unit perm[j] (new = old[perm]). Buffers (BatchNorm running
statistics) are permuted with their units, so a permuted model computes the
same function in train and in eval mode.

Weight matching maximizes sum over layers <W_ref, P_l W_other P_{l-1}^T> (plus
biases and BatchNorm affines; not the running statistics, which are not
weights) by coordinate descent: one group at a time, a linear assignment
(scipy's linear_sum_assignment) with the other groups fixed, until no group
improves.
"""
from __future__ import annotations

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.symmetry import ALIGNABLE, PermutationSpec, permutation_spec  # noqa: F401 (re-exported)

__all__ = ["PermutationSpec", "permutation_spec", "apply_permutation", "random_permutation", "weight_matching",
           "align", "ALIGNABLE"]


def _axis_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Unit permutation -> index along an axis where each unit spans `block` entries. perm [..., size]."""
    if block == 1:
        return perm
    ar = torch.arange(block, device=perm.device)
    return (perm.unsqueeze(-1) * block + ar).flatten(-2)


def _permute_tensor(t: torch.Tensor, axes, perms: dict[str, torch.Tensor], skip: str | None = None) -> torch.Tensor:
    """t [N, *shape]; perms[g] [N, size] (per model) -> t with the groups' permutations applied."""
    for axis, (g, block) in enumerate(axes):
        if g is None or g == skip:
            continue
        idx = _axis_index(perms[g], block)  # [N, L]
        view = [idx.shape[0]] + [1] * (t.dim() - 1)
        view[axis + 1] = idx.shape[1]
        t = torch.gather(t, axis + 1, idx.reshape(view).expand(*t.shape[:axis + 1], idx.shape[1], *t.shape[axis + 2:]))
    return t


def _as_batch(weights: torch.Tensor, layout: ParamLayout) -> tuple[torch.Tensor, bool]:
    w = layout.check_flat(weights)
    return (w.unsqueeze(0), True) if w.dim() == 1 else (w, False)


def apply_permutation(weights: torch.Tensor, layout: ParamLayout, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reorder hidden units: perms[g] is [size] (same for every model) or [N, size] (one per model)."""
    spec = permutation_spec(layout)
    w, single = _as_batch(weights, layout)
    N = w.shape[0]
    missing = sorted(set(spec.groups) - set(perms))
    if missing:
        raise UserError(f"no permutation for groups {missing}", f"give one for each of {sorted(spec.groups)}")
    full = {}
    for g, size in spec.groups.items():
        p = torch.as_tensor(perms[g], dtype=torch.long, device=w.device)
        p = p.expand(N, size) if p.dim() == 1 else p
        if p.shape != (N, size) or not bool((p.sort(-1).values == torch.arange(size, device=w.device)).all()):
            raise UserError(f"permutation for {g!r} is not a permutation of {size} units (shape {tuple(p.shape)})",
                            "pass torch.randperm(size)-like index tensors")
        full[g] = p
    params = layout.unflatten(w)
    out = torch.cat([_permute_tensor(params[e.name], spec.axes[e.name], full).reshape(N, -1)
                     for e in layout.entries], 1)
    return out[0] if single else out


def random_permutation(weights: torch.Tensor, layout: ParamLayout, generator: torch.Generator | None = None,
                       ) -> torch.Tensor:
    """Each model's hidden units shuffled independently: the same functions, different weight vectors."""
    spec = permutation_spec(layout)
    w, single = _as_batch(weights, layout)
    perms = {g: torch.stack([torch.randperm(size, generator=generator) for _ in range(w.shape[0])]).to(w.device)
             for g, size in spec.groups.items()}
    out = apply_permutation(w, layout, perms)
    return out[0] if single else out


def _unit_matrix(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """[*shape] -> [size, rest] with the units of `axis` as rows (blocks stay inside their unit's row)."""
    return t.movedim(axis, 0).reshape(size, -1)


def weight_matching(reference: torch.Tensor, other: torch.Tensor, layout: ParamLayout, max_iter: int = 100,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations that make `other` ([P]) closest to `reference` ([P]) in the weight-matching sense."""
    from scipy.optimize import linear_sum_assignment

    spec = permutation_spec(layout)
    a = layout.unflatten(layout.check_flat(reference).detach().double().cpu().reshape(-1))
    b = layout.unflatten(layout.check_flat(other).detach().double().cpu().reshape(-1))
    perms = {g: torch.arange(size) for g, size in spec.groups.items()}
    order = list(spec.groups)
    g_rng = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        progress = False
        for gi in torch.randperm(len(order), generator=g_rng).tolist():
            g = order[gi]
            size = spec.groups[g]
            cost = torch.zeros(size, size, dtype=torch.float64)
            batch_perms = {k: v.unsqueeze(0) for k, v in perms.items()}
            for name, axis, block in spec.occurrences[g]:
                if layout[name].buffer:
                    continue
                bp = _permute_tensor(b[name].unsqueeze(0), spec.axes[name], batch_perms, skip=g)[0]
                cost += _unit_matrix(a[name], axis, size) @ _unit_matrix(bp, axis, size).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            old_score = cost[torch.arange(size), perms[g]].sum()
            new_score = cost[torch.arange(size), new].sum()
            if new_score > old_score + 1e-12 * max(1.0, float(abs(old_score))):
                progress = True
                perms[g] = new
        if not progress:
            break
    return perms


def align(reference: torch.Tensor, others: torch.Tensor, layout: ParamLayout, max_iter: int = 100,
          seed: int = 0) -> torch.Tensor:
    """`others` ([P] or [N, P]) with hidden units permuted to match `reference` ([P])."""
    o, single = _as_batch(others, layout)
    out = torch.stack([apply_permutation(o[i], layout, weight_matching(reference, o[i], layout, max_iter, seed))
                       for i in range(o.shape[0])])
    return out[0] if single else out
