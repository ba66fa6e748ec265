"""Hessian top eigenvalue and trace for a whole population, from batched Hessian-vector products.

Models in a population share no parameters, so the Hessian of the population
loss sum_i L_i(w_i) is block diagonal: one Hessian-vector product of the sum
with a stacked vector [v_1; ...; v_N] returns [H_1 v_1; ...; H_N v_N]. One
double backward through `wsl.functional.population_forward` (a few batched
GEMMs) therefore does the work of N per-model products, which is where the
speed over PyHessian's one-model-at-a-time loop comes from.

    hess = PopulationHessian(layout, weights, batches)    # weights [N, P]
    hess.loss, hess.accuracy                               # [N] on the same data
    hm = hessian_metrics(layout, weights, batches, seeds=seeds)   # what `wsl zoo landscape` stores
    hm["hessian_top_eig"], hm["hessian_top_eig_tol"]       # Lanczos to a relative tolerance
    hm["hessian_trace"], hm["hessian_trace_se"]            # deflated Hutchinson and its standard error

The estimators (Lanczos, deflated Hutchinson, and PyHessian's power iteration
and plain Hutchinson for cross-checks) live in zoo/landscape/estimators.py;
`dense_hessians` is the exact reference they are tested against.

Two ways to get H v, both exact:
- "autograd" (default): the gradient graph of each batch is built once with
  create_graph=True and kept; every product is one backward through it
  (what PyHessian does for one model, here for all models at once).
- "func": torch.func forward-over-reverse, jvp(grad(loss)), recomputed per
  product; keeps no graph between products (less memory, more compute).
Both go through `wsl.functional.population_forward`, so any architecture it
runs gets its Hessian here.

Seeds: model i's Rademacher probes are drawn from
torch.Generator().manual_seed(seeds[i]), P values per probe in parameter
order, which is exactly the sequence PyHessian draws after
torch.manual_seed(seeds[i]) (one randint_like per parameter tensor); its
start vector likewise matches PyHessian's after
torch.manual_seed(seeds[i] + EIG_SEED_OFFSET). So PyHessian's estimators on
these products agree with PyHessian up to float rounding, and a model's
values do not depend on which other models share its cohort.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from store.layout import ParamLayout
from wsl.functional import population_forward
from zoo.landscape.estimators import (EIG_SEED_OFFSET, deflated_trace, hutchinson_trace, lanczos, power_iteration,
                                      rademacher)
from zoo.landscape.recipe import param_views, per_model_accuracy, per_model_loss

# PyHessian's name for the fixed-count power iteration (kept for cross-checks and old callers)
top_eigenvalue = power_iteration
__all__ = ["PopulationHessian", "hessian_metrics", "dense_hessians", "plan_tiles", "plan_cohort", "regroup", "lanczos",
           "deflated_trace", "power_iteration", "top_eigenvalue", "hutchinson_trace", "rademacher", "EIG_SEED_OFFSET"]

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# Largest activation of one (models x samples) tile of the retained graph: about an L2 cache.
# The products are dominated by elementwise passes over the graph's tensors, so a tile that
# stays in cache is what makes them fast (measured: 64 width-16 MLPs x 1024 samples, 16 models
# per tile beat 64 by ~1.4x; width 64: 4 per tile beat 32 by ~1.3x).
TILE_BYTES = 1 << 20
MAX_GRAPH_SAMPLES = 1024
# The Lanczos basis of a cohort ([models, iterations, P]) is kept for the deflated trace: cap its size.
BASIS_BYTES = 256 << 20


def plan_tiles(layout: ParamLayout, n_models: int, n_samples: int) -> tuple[int, int]:
    """(models per cohort, samples per retained graph) for the Hessian of n_models on n_samples."""
    from wsl.evaluate import activation_floats

    b = max(1, min(n_samples, MAX_GRAPH_SAMPLES))
    per_model = activation_floats(layout) * 4 * b
    return max(1, min(n_models, TILE_BYTES // max(1, per_model))), b


def plan_cohort(layout: ParamLayout, n_models: int, n_samples: int, iterations: int,
                element_size: int = 4) -> tuple[int, int]:
    """`plan_tiles`, with the cohort also capped so its Lanczos bases ([models, iterations, P]) fit BASIS_BYTES."""
    models, per_graph = plan_tiles(layout, n_models, n_samples)
    basis = max(1, int(iterations) * layout.num_params * int(element_size))
    return max(1, min(models, BASIS_BYTES // basis)), per_graph


def regroup(batches: Batches, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same samples in batches of `size` (the mean loss over all samples does not change)."""
    x = torch.cat([bx for bx, _ in batches])
    y = torch.cat([by for _, by in batches])
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


class PopulationHessian:
    """H_i v_i for every model i of a population, on fixed data (the mean loss over `batches`)."""

    def __init__(self, layout: ParamLayout, weights: torch.Tensor, batches: Batches,
                 task: str = "classification", method: str = "autograd"):
        if method not in ("autograd", "func"):
            raise ValueError(f"method {method!r}: use 'autograd' or 'func'")
        layout.check_flat(weights)
        # the Hessian is over the trainable parameters; BatchNorm statistics (buffers) are eval-mode constants
        self.full_layout, self.layout, self.task, self.method = layout, layout.trainable_layout(), task, method
        self.batches = [(x, y) for x, y in batches]
        n_total = sum(len(x) for x, _ in self.batches)
        self.weights_per_batch = [len(x) / n_total for x, _ in self.batches]
        # one leaf per parameter tensor ([N, *shape]): differentiating w.r.t. slices of one flat
        # leaf would add a zero-fill + add of the whole [N, P] per tensor to every product
        views = param_views(layout, weights)
        self.buffers = {n: views[n].detach() for n in layout.buffer_names}
        self.leaves = [views[n].detach().clone().requires_grad_(True) for n in self.layout.names]
        self.params = {**dict(zip(self.layout.names, self.leaves)), **self.buffers}
        N = weights.shape[0]
        self.loss = torch.zeros(N, dtype=torch.float64)
        self.accuracy = torch.zeros(N, dtype=torch.float64)
        self._grads: list[tuple[torch.Tensor, ...]] = []
        for (x, y), frac in zip(self.batches, self.weights_per_batch):
            with torch.set_grad_enabled(method == "autograd"):
                out = population_forward(layout, self.params, x)
                losses = per_model_loss(out, y, task)
                if method == "autograd":
                    # the gradient with its graph, kept for every later product
                    self._grads.append(torch.autograd.grad(losses.sum(), self.leaves, create_graph=True))
            self.loss += losses.detach().double().cpu() * frac  # metrics on the CPU; weights may be on CUDA
            self.accuracy += per_model_accuracy(out.detach(), y, task).double().cpu() * frac
        self._n, self._p = N, self.layout.num_params
        self.products = 0  # Hessian-vector products computed (each covers every model)

    @property
    def n_models(self) -> int:
        return self._n

    @property
    def n_params(self) -> int:
        return self._p

    @property
    def dtype(self) -> torch.dtype:
        return self.leaves[0].dtype

    @property
    def device(self) -> torch.device:
        return self.leaves[0].device

    def _loss_fn(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        layout, full, buffers, task = self.layout, self.full_layout, self.buffers, self.task
        return lambda w: per_model_loss(population_forward(full, {**param_views(layout, w), **buffers}, x), y, task).sum()

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """[N, P] -> [N, P]: row i is H_i v_i (H_i the Hessian of model i's mean loss)."""
        self.products += 1
        vs = list(param_views(self.layout, v).values())
        out = None
        for b, ((x, y), frac) in enumerate(zip(self.batches, self.weights_per_batch)):
            if self.method == "autograd":
                hs = torch.autograd.grad(self._grads[b], self.leaves, grad_outputs=vs, retain_graph=True)
                h = torch.cat([t.reshape(self._n, -1) for t in hs], 1)
            else:
                from torch.func import grad, jvp

                w = torch.cat([t.detach().reshape(self._n, -1) for t in self.leaves], 1)
                _, h = jvp(grad(self._loss_fn(x, y)), (w,), (v,))
            out = h * frac if out is None else out.add_(h, alpha=frac)
        return out.detach()


def hessian_metrics(layout: ParamLayout, weights: torch.Tensor, batches: Batches, *, task: str = "classification",
                    iterations: int = 64, tol: float = 1e-3, deflation: int = 40, probes: int = 40,
                    seeds: Sequence[int] | None = None,
                    chunk: int | None = None, method: str = "autograd",
                    progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Top eigenvalue and trace with their errors, loss and accuracy of every model ([N] each).

    Keys: hessian_top_eig (Lanczos to relative residual `tol`, at least
    `deflation` and at most `iterations` steps), hessian_top_eig_tol (the residual bound it reached,
    relative), hessian_lanczos_steps, hessian_trace (Lanczos-deflated
    Hutchinson with `probes` probes), hessian_trace_se (its standard error),
    hessian_hvps (products this model used: steps + probes), train_loss,
    train_acc. zoo/landscape/estimators.py explains the estimators.

    seeds[i] seeds model i's probes and start vector (default: i). Models go
    through in cohorts of `chunk` (default: planned so a tile stays in cache,
    `plan_tiles`, and the Lanczos bases fit `BASIS_BYTES`), the samples in
    retained graphs of up to 1,024; neither changes a model's values (each
    model stops on its own), only the speed.
    """
    N = weights.shape[0]
    seeds = list(range(N)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != N:
        raise ValueError(f"{len(seeds)} seeds for {N} models")
    planned, per_graph = plan_cohort(layout, N, sum(len(x) for x, _ in batches), iterations, weights.element_size())
    chunk = max(1, int(chunk)) if chunk else planned
    batches = regroup(batches, per_graph)
    keys = ("hessian_top_eig", "hessian_top_eig_tol", "hessian_lanczos_steps", "hessian_trace", "hessian_trace_se",
            "hessian_hvps", "train_loss", "train_acc")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for lo in range(0, N, chunk):
        hi = min(N, lo + chunk)
        hess = PopulationHessian(layout, weights[lo:hi], batches, task, method)
        lz = lanczos(hess, iterations, tol, seeds[lo:hi], min_iter=min(int(deflation), int(iterations)))
        trace, se = deflated_trace(hess, lz.basis, lz.basis_trace, probes, seeds[lo:hi])
        del lz.basis
        vals = {"hessian_top_eig": lz.eig, "hessian_top_eig_tol": lz.rel_residual, "hessian_lanczos_steps": lz.iterations,
                "hessian_trace": trace, "hessian_trace_se": se, "hessian_hvps": lz.iterations + int(probes),
                "train_loss": hess.loss, "train_acc": hess.accuracy}
        for k in keys:
            parts[k].append(vals[k])
        del hess
        if progress is not None:
            progress(hi - lo)
    return {k: torch.cat(v) for k, v in parts.items()}


def dense_hessians(hess: PopulationHessian) -> torch.Tensor:
    """Every model's exact Hessian ([N, P, P], float64, symmetrised) from P products with basis vectors.

    The reference the estimators are checked against (tests, benchmarks/landscape.py): exact up
    to the operator's float rounding (build the operator in float64 for a reference), at the cost
    of P products, so for models of a few thousand parameters. One product per basis vector:
    batching the vectors through autograd's is_grads_batched was slower on CPU.
    """
    N, P = hess.n_models, hess.n_params
    H = torch.zeros(N, P, P, dtype=torch.float64)
    e = torch.zeros(N, P, device=hess.device, dtype=hess.dtype)
    for j in range(P):
        e[:, j] = 1.0
        H[:, j, :] = hess.hvp(e).double().cpu()  # H e_j is column j; as a row (contiguous), symmetrised below
        e[:, j] = 0.0
    return (H + H.transpose(1, 2)) / 2
