"""What a generator must beat without learning anything (Zeng et al. 2025).

Each baseline makes n weight vectors for a condition from the zoo's checkpoints
for that same dataset (`reference`, [m, P]):

    noise-A   a random reference checkpoint + Gaussian noise; on every tensor the
              noise std is A times that tensor's RMS in the chosen checkpoint
              ("relative amplitude", A = 0.06 and 0.12 by default)
    avg16     the average of 16 reference checkpoints drawn at random (with
              replacement when there are fewer than 16)
    gaussfit  a per-coordinate Gaussian fit to the references (mean and std
              of every parameter), sampled independently
    interp    two different reference checkpoints drawn at random, the second
              permuted onto the first (weight matching, `wsl.align`: same
              function, hidden units in the first's order), mixed at
              lambda ~ U(0.25, 0.75). Interpolating aligned models of the same
              dataset keeps their accuracy and lands far from both in weight
              space, but keeps their mistakes (digits-pairs, seen tasks: accuracy
              0.9949 against the zoo's 0.9955, 3.1 from the nearest training
              checkpoint where noise of that accuracy is at 1.6, max IoU with the
              zoo 0.86 against the noise's 0.84), so a generator whose samples are
              "far" only because they sit between its training checkpoints shows
              up here. Without a known permutation symmetry (transformer) the
              pair is mixed as stored; with one reference, it is mixed with itself.

All are seeded: the same (references, n, seed) give the same weights.
"""
from __future__ import annotations

import torch

from store.errors import UserError
from store.layout import ParamLayout

NOISE_AMPLITUDES = (0.06, 0.12)
KINDS = tuple(f"noise-{a:g}" for a in NOISE_AMPLITUDES) + ("avg16", "gaussfit", "interp")


def noise(reference: torch.Tensor, layout: ParamLayout, n: int, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    pick = torch.randint(len(reference), (n,), generator=generator)
    base = reference[pick].to(torch.float32)
    out = base.clone()
    for e in layout.entries:
        block = base[:, e.offset:e.offset + e.numel]
        rms = block.pow(2).mean(1, keepdim=True).sqrt()
        out[:, e.offset:e.offset + e.numel] += amplitude * rms * torch.randn(block.shape, generator=generator)
    return out


def average(reference: torch.Tensor, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    replace = len(reference) < k
    rows = []
    for _ in range(n):
        idx = (torch.randint(len(reference), (k,), generator=generator) if replace
               else torch.randperm(len(reference), generator=generator)[:k])
        rows.append(reference[idx].to(torch.float32).mean(0))
    return torch.stack(rows)


def gaussian_fit(reference: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    ref = reference.to(torch.float32)
    mean = ref.mean(0)
    std = ref.std(0) if len(ref) > 1 else torch.zeros_like(mean)
    return mean + std * torch.randn((n, ref.shape[1]), generator=generator)


def interpolate(reference: torch.Tensor, layout: ParamLayout, n: int, generator: torch.Generator) -> torch.Tensor:
    from generators.components.symmetry import alignable
    from wsl.align import align

    ref = reference.to(torch.float32)
    m = len(ref)
    first = torch.randint(m, (n,), generator=generator)
    second = (first + torch.randint(1, m, (n,), generator=generator)) % m if m > 1 else first
    lam = 0.25 + 0.5 * torch.rand(n, 1, generator=generator)
    matched: dict[tuple[int, int], torch.Tensor] = {}  # (i, j) -> reference j aligned onto i: each pair once
    rows = []
    for i, j in zip(first.tolist(), second.tolist()):
        if (i, j) not in matched:
            matched[i, j] = align(ref[i], ref[j], layout) if i != j and alignable(layout) else ref[j]
        rows.append(matched[i, j])
    return lam * ref[first] + (1 - lam) * torch.stack(rows)


def baselines(reference: torch.Tensor, layout: ParamLayout, n: int, seed: int = 0,
              amplitudes=NOISE_AMPLITUDES) -> dict[str, torch.Tensor]:
    """{kind: [n, P]} for noise-A (each amplitude), avg16, gaussfit and interp."""
    if len(reference) == 0:
        raise UserError("no reference checkpoints for the baselines", "select checkpoints trained on this dataset")
    layout.check_flat(reference, what="reference checkpoints")
    g = torch.Generator().manual_seed(int(seed))
    out = {f"noise-{a:g}": noise(reference, layout, n, a, g) for a in amplitudes}
    out["avg16"] = average(reference, n, 16, g)
    out["gaussfit"] = gaussian_fit(reference, n, g)
    out["interp"] = interpolate(reference, layout, n, g)
    return out
