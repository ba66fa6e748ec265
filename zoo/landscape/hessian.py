"""Hessian top eigenvalue and trace for a whole population, from batched Hessian-vector products.

Models in a population share no parameters, so the Hessian of the population
loss sum_i L_i(w_i) is block diagonal: one Hessian-vector product of the sum
with a stacked vector [v_1; ...; v_N] returns [H_1 v_1; ...; H_N v_N]. One
double backward through `wsl.functional.population_forward` (a few batched
GEMMs) therefore does the work of N per-model products, which is where the
speed over PyHessian's one-model-at-a-time loop comes from.

    hess = PopulationHessian(layout, weights, batches)    # weights [N, P]
    hess.loss, hess.accuracy                               # [N] on the same data
    top = top_eigenvalue(hess, iterations=20, seeds=seeds) # power iteration, fixed count
    tr = hutchinson_trace(hess, probes=32, seeds=seeds)    # Rademacher probes, fixed count

Two ways to get H v, both exact:
- "autograd" (default): the gradient graph of each batch is built once with
  create_graph=True and kept; every product is one backward through it
  (what PyHessian does for one model, here for all models at once).
- "func": torch.func forward-over-reverse, jvp(grad(loss)), recomputed per
  product; keeps no graph between products (less memory, more compute).

Seeds: model i's Rademacher probes are drawn from
torch.Generator().manual_seed(seeds[i]), P values per probe in parameter
order, which is exactly the sequence PyHessian draws after
torch.manual_seed(seeds[i]) (one randint_like per parameter tensor); its
power-iteration start vector likewise matches PyHessian's after
torch.manual_seed(seeds[i] + EIG_SEED_OFFSET). So the two agree up to float
rounding on the same model, data and counts, and a model's values do not
depend on which other models share its cohort.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from store.layout import ParamLayout
from wsl.functional import population_forward
from zoo.landscape.recipe import param_views, per_model_accuracy, per_model_loss

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# the power-iteration start vector uses a stream separate from the probes'
EIG_SEED_OFFSET = 1_000_003


# Largest activation of one (models x samples) tile of the retained graph: about an L2 cache.
# The products are dominated by elementwise passes over the graph's tensors, so a tile that
# stays in cache is what makes them fast (measured: 64 width-16 MLPs x 1024 samples, 16 models
# per tile beat 64 by ~1.4x; width 64: 4 per tile beat 32 by ~1.3x).
TILE_BYTES = 1 << 20
MAX_GRAPH_SAMPLES = 1024


def plan_tiles(layout: ParamLayout, n_models: int, n_samples: int) -> tuple[int, int]:
    """(models per cohort, samples per retained graph) for the Hessian of n_models on n_samples."""
    from wsl.evaluate import activation_floats

    b = max(1, min(n_samples, MAX_GRAPH_SAMPLES))
    per_model = activation_floats(layout) * 4 * b
    return max(1, min(n_models, TILE_BYTES // max(1, per_model))), b


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


def _generators(seeds: Sequence[int] | None, n: int, offset: int = 0) -> list[torch.Generator]:
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} models")
    return [torch.Generator().manual_seed(s + offset) for s in seeds]


def rademacher(generators: Sequence[torch.Generator], n_params: int, dtype=torch.float32) -> torch.Tensor:
    """One probe per model: [N, P] of +-1, model i's from generators[i] (PyHessian's draw order)."""
    z = torch.stack([torch.randint(0, 2, (n_params,), generator=g) for g in generators]).to(dtype)
    return z.mul_(2).sub_(1)


def top_eigenvalue(hess: PopulationHessian, iterations: int = 20, seeds: Sequence[int] | None = None,
                   return_vectors: bool = False):
    """Largest-magnitude Hessian eigenvalue of every model by power iteration ([N]).

    A fixed number of iterations (no tolerance), so every model gets the same
    work and the recipe states it. The estimate after each product is the
    Rayleigh quotient v^T H v of the current unit vector, as in PyHessian.
    """
    gens = _generators(seeds, hess.n_models, EIG_SEED_OFFSET)
    # one randn per parameter tensor, in layout order: PyHessian's start vector after torch.manual_seed
    v = torch.stack([torch.cat([torch.randn(e.shape, generator=g).reshape(-1) for e in hess.layout.entries])
                     for g in gens]).to(hess.leaves[0].device, hess.dtype)
    v = v / (v.norm(dim=1, keepdim=True) + 1e-6)
    eig = torch.zeros(hess.n_models, dtype=torch.float64)
    for _ in range(int(iterations)):
        hv = hess.hvp(v)
        eig = (hv * v).sum(1).double().cpu()
        v = hv / (hv.norm(dim=1, keepdim=True) + 1e-6)
    return (eig, v) if return_vectors else eig


def hutchinson_trace(hess: PopulationHessian, probes: int = 32, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Hutchinson trace estimate of every model's Hessian ([N]): mean of z^T H z over Rademacher z."""
    gens = _generators(seeds, hess.n_models)
    total = torch.zeros(hess.n_models, dtype=torch.float64)
    for _ in range(int(probes)):
        z = rademacher(gens, hess.n_params, hess.dtype).to(hess.leaves[0].device)  # drawn on the CPU
        total += (hess.hvp(z) * z).sum(1).double().cpu()
    return total / int(probes)


def hessian_metrics(layout: ParamLayout, weights: torch.Tensor, batches: Batches, *, task: str = "classification",
                    iterations: int = 20, probes: int = 32, seeds: Sequence[int] | None = None,
                    chunk: int | None = None, method: str = "autograd",
                    progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Top eigenvalue, trace, loss and accuracy of every model ([N] each).

    seeds[i] seeds model i's probes and start vector (default: i). Models go
    through in cohorts of `chunk` (default: planned so a tile stays in cache,
    `plan_tiles`), the samples in retained graphs of up to 1,024; neither
    changes the values, only the speed.
    """
    N = weights.shape[0]
    seeds = list(range(N)) if seeds is None else [int(s) for s in seeds]
    n_samples = sum(len(x) for x, _ in batches)
    planned, per_graph = plan_tiles(layout, N, n_samples)
    chunk = max(1, int(chunk)) if chunk else planned
    batches = regroup(batches, per_graph)
    parts: dict[str, list[torch.Tensor]] = {"hessian_top_eig": [], "hessian_trace": [], "train_loss": [], "train_acc": []}
    for lo in range(0, N, chunk):
        hi = min(N, lo + chunk)
        hess = PopulationHessian(layout, weights[lo:hi], batches, task, method)
        parts["hessian_top_eig"].append(top_eigenvalue(hess, iterations, seeds[lo:hi]))
        parts["hessian_trace"].append(hutchinson_trace(hess, probes, seeds[lo:hi]))
        parts["train_loss"].append(hess.loss)
        parts["train_acc"].append(hess.accuracy)
        del hess
        if progress is not None:
            progress(hi - lo)
    return {k: torch.cat(v) for k, v in parts.items()}
