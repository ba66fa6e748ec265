"""Is a generated model new, or a copy of a training checkpoint? (Zeng et al. 2025)

Two views, reported next to accuracy for generated models and for every baseline:

- Behaviour: the set of test samples a model gets wrong. The IoU of two
  models' wrong sets is 1 for models that fail on exactly the same samples
  (a replica behaves like this) and falls as their mistakes differ.
  We report the mean IoU over pairs within the generated set (gen-gen), within
  the reference checkpoints (orig-orig), across (orig-gen), and, per generated
  model, its IoU with the most similar reference checkpoint, averaged
  (max orig-gen: the memorization indicator).
  Convention: a pair where neither model makes any mistake has no defined IoU
  (0/0) and is left out; `iou_pairs_defined` says which fraction of pairs
  counted. On near-perfect tasks most pairs are such pairs, which is why the
  weight-space distance below is the sharper test there. When the reference
  checkpoints make no mistake at all, orig-gen and max orig-gen are undefined
  too: there is no mistake to copy, and a candidate's mistakes there are lost
  accuracy (the accuracy column shows them), not novelty. Without this rule a
  noisy baseline would score IoU 0 on every task the zoo solves perfectly while
  a perfect model scores nothing, and averages over tasks would compare
  different task sets.
- Weights: the L2 distance from each model to its nearest training checkpoint, as stored
  (`nearest_l2`) and in the aligned coordinate system (`aligned_nearest_l2`).
"""
from __future__ import annotations

import math

import torch


def wrong_sets(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Bool [N, n]: which of n samples each of N models gets wrong."""
    return predictions != targets.reshape(1, -1)


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Na, Nb] IoU of wrong sets (NaN where both sets are empty)."""
    af, bf = a.to(torch.float32), b.to(torch.float32)
    inter = af @ bf.T
    union = af.sum(1, keepdim=True) + bf.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def _nanmean(t: torch.Tensor) -> float:
    ok = ~torch.isnan(t)
    return float(t[ok].mean()) if bool(ok.any()) else math.nan


def _offdiag(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m[~torch.eye(n, dtype=torch.bool)] if n > 1 else m.new_empty(0)


def iou_stats(candidate_wrong: torch.Tensor, reference_wrong: torch.Tensor) -> dict[str, float]:
    """gen-gen / orig-orig / orig-gen / max orig-gen mean IoUs (see module docstring)."""
    cc = _offdiag(iou_matrix(candidate_wrong, candidate_wrong))
    rr = _offdiag(iou_matrix(reference_wrong, reference_wrong))
    rc = iou_matrix(candidate_wrong, reference_wrong)
    if not bool(reference_wrong.any()):  # nothing to copy: orig-gen undefined (module docstring)
        rc = torch.full_like(rc, math.nan)
    # max over references, ignoring undefined pairs; a model whose every pair is undefined gives NaN
    filled = torch.where(torch.isnan(rc), torch.full_like(rc, -1.0), rc)
    best = filled.max(1).values if rc.shape[1] else rc.new_full((rc.shape[0],), math.nan)
    best = torch.where(best < 0, torch.full_like(best, math.nan), best)
    return {
        "iou_gen_gen": _nanmean(cc),
        "iou_orig_orig": _nanmean(rr),
        "iou_orig_gen": _nanmean(rc.flatten()),
        "iou_max_orig_gen": _nanmean(best),
        "iou_pairs_defined": float((~torch.isnan(rc)).float().mean()) if rc.numel() else math.nan,
    }


def nearest_l2(candidates: torch.Tensor, references: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[N] distance from each candidate [N, P] to its nearest reference [M, P] (float64 accumulation)."""
    refs = references.to(torch.float64)
    out = []
    for i in range(0, len(candidates), chunk):
        out.append(torch.cdist(candidates[i:i + chunk].to(torch.float64), refs).min(1).values)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def l2_stats(distances: torch.Tensor) -> dict[str, float]:
    return {"nn_l2_mean": float(distances.mean()), "nn_l2_median": float(distances.median()),
            "nn_l2_min": float(distances.min())}


def aligned_nearest_l2(candidates: torch.Tensor, stored: torch.Tensor, aligned: torch.Tensor, layout,
                       reference: torch.Tensor) -> torch.Tensor:
    """[N] NN-L2 up to the hidden-unit permutations we know: the smallest of three distances per candidate.

    The training set exists as stored and as aligned per init group (components/symmetry.py)
    into one coordinate system centred on `reference` (the aligned mean). A generator's
    samples live in the aligned system; a noisy copy of a checkpoint lives in the stored
    one; an independently trained model (the `fresh` reference) lives in neither, its hidden
    units in an arbitrary order, so its distance as stored says little. Per candidate: the
    distance as it is to both sets, and its distance to the aligned set after weight matching
    it onto the reference (`wsl.align`, function-preserving). Taking the smallest makes the
    figures of generated, copied and fresh models comparable. Without a known permutation
    symmetry only the first is computed.
    """
    from generators.components.symmetry import alignable

    c = candidates.to(torch.float32)
    best = nearest_l2(c, torch.cat([stored, aligned]))
    if alignable(layout) and len(c):
        from wsl.align import align

        best = torch.minimum(best, nearest_l2(align(reference.to(torch.float32), c, layout), aligned))
    return best
