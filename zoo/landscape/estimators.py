"""Randomized Hessian estimators for a whole population at once: each step is one batched H v.

`hess` is any object with `hvp([N, P]) -> [N, P]` (row i = H_i v_i), `n_models`,
`n_params`, `dtype`, `device` and `layout` (zoo.landscape.hessian.PopulationHessian).
Model i draws its random vectors from its own torch.Generator seeded with seeds[i], so
its values do not depend on which other models share the call; and every stopping rule
is decided per model (a model that has converged gets zero vectors from then on), for
the same reason.

The defaults of `wsl zoo landscape` (docs/landscape.md, "Estimators and their errors"):

- `lanczos`: the top eigenvalue by Lanczos with full reorthogonalisation, stopped per
  model when the residual bound |beta_k s_k| of its largest-magnitude Ritz pair is at
  most `tol` times that Ritz value, or at `max_iter`. The bound is rigorous: some
  eigenvalue of H lies within it of the estimate (and, with a gap g to the next
  eigenvalue, within its square / g). Power iteration converges like (lambda_2 /
  lambda_1)^k; Lanczos like a Chebyshev polynomial in the gap, so the same products go
  much further when the top eigenvalues are close (measured in BENCHMARKS.md, landscape).
- `deflated_trace`: tr(H) = tr(V^T H V) + tr((I - V V^T) H (I - V V^T)) for the
  orthonormal Lanczos basis V: the first term is exact and free (the sum of Lanczos'
  alphas), the second is estimated by Hutchinson with Rademacher probes projected off V.
  The Krylov basis holds the outlying eigendirections that dominate a Hutchinson
  estimate's variance (2 ||H||_F^2 - 2 sum H_ii^2), so the residual estimate has a far
  smaller one: the idea of Hutch++ (Meyer, Musco, Musco & Woodruff 2021), with the
  low-rank part taken from the eigenvalue's Krylov space (as in Chen & Hallman 2023,
  Krylov-aware trace estimation) instead of a separate sketch, so it costs no extra
  products. The standard error is the probes' sample standard deviation / sqrt(probes),
  exact given V (the probes are drawn independently of it).

`power_iteration` and `hutchinson_trace` are the fixed-count estimators PyHessian runs;
they stay for cross-checks (same random streams as PyHessian, agreement to rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# the eigenvalue's start vector uses a stream separate from the probes'
EIG_SEED_OFFSET = 1_000_003
# Lanczos breakdown: beta below this fraction of the largest |alpha| means an invariant subspace
BREAKDOWN = 1e-6


def generators(seeds: Sequence[int] | None, n: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per model: seeds[i] + offset (seeds default to 0..n-1)."""
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} models")
    return [torch.Generator().manual_seed(s + offset) for s in seeds]


def rademacher(gens: Sequence[torch.Generator], n_params: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """One probe per model: [N, P] of +-1, model i's from gens[i] (PyHessian's draw order)."""
    z = torch.stack([torch.randint(0, 2, (n_params,), generator=g) for g in gens]).to(device=device, dtype=dtype)
    return z.mul_(2).sub_(1)


def start_vectors(hess, seeds: Sequence[int] | None) -> torch.Tensor:
    """Unit [N, P] start vectors: one randn per parameter tensor in layout order (PyHessian's after manual_seed)."""
    gens = generators(seeds, hess.n_models, EIG_SEED_OFFSET)
    v = torch.stack([torch.cat([torch.randn(e.shape, generator=g).reshape(-1) for e in hess.layout.entries])
                     for g in gens]).to(device=hess.device, dtype=hess.dtype)
    return v / (v.norm(dim=1, keepdim=True) + 1e-6)


def power_iteration(hess, iterations: int = 20, seeds: Sequence[int] | None = None,
                    return_vectors: bool = False):
    """Largest-magnitude eigenvalue by a fixed number of power iterations ([N]), as PyHessian computes it.

    The estimate after each product is the Rayleigh quotient v^T H v of the
    current unit vector. No error estimate: use `lanczos` for a value with one.
    """
    v = start_vectors(hess, seeds)
    eig = torch.zeros(hess.n_models, dtype=torch.float64)
    for _ in range(int(iterations)):
        hv = hess.hvp(v)
        eig = (hv * v).sum(1).double().cpu()
        v = hv / (hv.norm(dim=1, keepdim=True) + 1e-6)
    return (eig, v) if return_vectors else eig


def hutchinson_trace(hess, probes: int = 32, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Plain Hutchinson trace ([N]): mean of z^T H z over `probes` Rademacher z (PyHessian's estimator)."""
    gens = generators(seeds, hess.n_models)
    total = torch.zeros(hess.n_models, dtype=torch.float64)
    for _ in range(int(probes)):
        z = rademacher(gens, hess.n_params, hess.dtype, hess.device)
        total += (hess.hvp(z) * z).sum(1).double().cpu()
    return total / int(probes)


@dataclass
class LanczosResult:
    """Per model ([N] each): the eigenvalue, its relative residual bound, products used, and the Krylov basis."""

    eig: torch.Tensor  # largest-magnitude Ritz value (float64)
    rel_residual: torch.Tensor  # |beta_k s_k| / |eig|, at least sqrt(P) * eps of the dtype (what its products resolve)
    iterations: torch.Tensor  # Lanczos steps (= Hessian-vector products) this model used (int64)
    converged: torch.Tensor  # rel_residual <= tol (bool)
    basis: torch.Tensor  # [N, max(iterations), P], orthonormal rows; rows past iterations[i] are zero
    basis_trace: torch.Tensor  # tr(V_i^T H_i V_i) = sum of the alphas (float64)


def _ritz(alphas: torch.Tensor, betas: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest-magnitude eigenvalue of each k x k tridiagonal T and the last entry of its unit eigenvector."""
    T = torch.diag_embed(alphas[:, :k])
    if k > 1:
        off = torch.diag_embed(betas[:, :k - 1], offset=1)
        T = T + off + off.transpose(1, 2)
    vals, vecs = torch.linalg.eigh(T)
    pick = torch.where(vals[:, -1].abs() >= vals[:, 0].abs(), k - 1, 0)
    rows = torch.arange(len(vals))
    return vals[rows, pick], vecs[rows, k - 1, pick]


def lanczos(hess, max_iter: int = 64, tol: float = 1e-3, seeds: Sequence[int] | None = None,
            min_iter: int = 1) -> LanczosResult:
    """Top (largest-magnitude) eigenvalue of every model by Lanczos, to a relative tolerance (module docstring).

    Model i stops at the first step k >= min_iter where |beta_k s_k| <= tol
    |theta| (its residual bound), at an invariant subspace (beta_k ~ 0, any
    step), or at max_iter;
    `rel_residual` says what it reached (never below sqrt(P) times the
    dtype's machine epsilon: the products' own rounding bounds what any
    residual can certify). Full reorthogonalisation (classical
    Gram-Schmidt, twice) keeps the basis orthonormal in float32, which the
    deflated trace relies on.
    """
    N, P, k_max = hess.n_models, hess.n_params, int(max_iter)
    if k_max < 1:
        raise ValueError("max_iter must be >= 1")
    dev, dt = hess.device, hess.dtype
    rounding = torch.finfo(dt).eps * P ** 0.5
    V = torch.zeros(N, k_max, P, device=dev, dtype=dt)
    alphas = torch.zeros(N, k_max, dtype=torch.float64)
    betas = torch.zeros(N, k_max, dtype=torch.float64)
    eig = torch.zeros(N, dtype=torch.float64)
    rel = torch.full((N,), float("inf"), dtype=torch.float64)
    iters = torch.zeros(N, dtype=torch.int64)
    active = torch.ones(N, dtype=torch.bool)
    v = start_vectors(hess, seeds)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    v_prev = torch.zeros_like(v)
    beta_prev = torch.zeros(N, device=dev, dtype=dt)
    for k in range(k_max):
        V[:, k] = v
        w = hess.hvp(v)
        alpha = (w * v).sum(1)
        w = w - alpha[:, None] * v - beta_prev[:, None] * v_prev
        for _ in range(2):  # full reorthogonalisation against every basis vector so far
            w = w - torch.bmm(torch.bmm(V[:, :k + 1], w[:, :, None]).transpose(1, 2), V[:, :k + 1])[:, 0]
        beta = w.norm(dim=1)
        alphas[:, k] = torch.where(active, alpha.double().cpu(), alphas[:, k])
        betas[:, k] = torch.where(active, beta.double().cpu(), betas[:, k])
        scale_k = alphas[:, :k + 1].abs().amax(1)
        # beta ~ 0: the basis spans an invariant subspace, its Ritz values are exact; stop there
        broke = active & (betas[:, k] <= BREAKDOWN * scale_k)
        final = k + 1 == k_max
        if k + 1 >= min_iter or final or bool(broke.any()):  # Ritz values only when a model may stop
            theta, s_last = _ritz(alphas, betas, k + 1)
            r = betas[:, k] * s_last.abs()
            scale = theta.abs()
            ratio = torch.where(scale > 0, r / scale.clamp_min(1e-300), torch.where(r > 0, float("inf"), 0.0))
            # the recurrence's bound can fall far below what products in this dtype can resolve: floor it there
            ratio = ratio.clamp_min(rounding)
            now = active & (((ratio <= tol) & (k + 1 >= min_iter)) | broke | final)
            eig = torch.where(now, theta, eig)
            rel = torch.where(now, ratio, rel)
            iters = torch.where(now, torch.full_like(iters, k + 1), iters)
            active = active & ~now
        if not bool(active.any()):
            break
        act = active.to(dev)
        # a converged (or broken-down) model gets zero vectors from now on: its state stays as it was
        v_prev = torch.where(act[:, None], v, torch.zeros_like(v))
        v = torch.where(act[:, None], w / beta.clamp_min(torch.finfo(dt).tiny)[:, None], torch.zeros_like(w))
        beta_prev = torch.where(act, beta, torch.zeros_like(beta))
    used = int(iters.max())
    mask = torch.arange(used)[None, :] < iters[:, None]
    V = V[:, :used] * mask.to(device=dev, dtype=dt)[:, :, None]
    alphas = alphas[:, :used]
    return LanczosResult(eig=eig, rel_residual=rel, iterations=iters, converged=rel <= tol, basis=V,
                         basis_trace=(alphas * mask).sum(1))


def deflated_trace(hess, basis: torch.Tensor, basis_trace: torch.Tensor, probes: int = 32,
                   seeds: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(trace, standard error) of every model ([N] each): tr(V^T H V) + Hutchinson on the rest (module docstring).

    basis: [N, K, P] orthonormal rows (zero rows allowed); basis_trace: tr(V^T H V).
    Probes are model i's Rademacher vectors from seeds[i], projected off its basis.
    With fewer than 2 probes the standard error is NaN.
    """
    m = int(probes)
    if m < 1:
        raise ValueError("probes must be >= 1")
    gens = generators(seeds, hess.n_models)
    samples = torch.zeros(hess.n_models, m, dtype=torch.float64)
    for j in range(m):
        z = rademacher(gens, hess.n_params, hess.dtype, hess.device)
        z = z - torch.bmm(torch.bmm(basis, z[:, :, None]).transpose(1, 2), basis)[:, 0]
        samples[:, j] = (hess.hvp(z) * z).sum(1).double().cpu()
    trace = basis_trace.double() + samples.mean(1)
    se = samples.std(1, correction=1) / m ** 0.5 if m > 1 else torch.full_like(trace, float("nan"))
    return trace, se
