"""Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021) between the models of a population.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = X X^T,
L = Y Y^T over the same inputs. With more samples than fit in one batch, the
unbiased HSIC estimator (Song et al. 2012) is *accumulated* over minibatches
and CKA is formed once at the end:

    CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))

which converges to the full-data CKA as batches grow; averaging per-batch CKA
values does not (each is a ratio of noisy estimates, biased at small batches).

All pairs at once: with K~ the Gram matrix with its diagonal zeroed,
HSIC_1(K, L) = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
For models a, b: tr(K~_a K~_b) = <vec K~_a, vec K~_b>, 1'K~_a K~_b 1 = <K~_a 1, K~_b 1>,
so every pair's HSIC is a few GEMMs over the stacked Grams [N, n*n].

    acc = MinibatchCKA(n_models)
    for x, _ in batches:
        acc.update(population_forward(layout, params, x, features=True))  # [N, B, D]
    acc.matrix()        # [N, N] CKA between every two models
"""
from __future__ import annotations

import torch

# below this fraction of the Gram entries' size, a self-HSIC is rounding noise (a constant representation)
RELATIVE_EPS = 1e-10


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """[..., n, d] -> [..., n, n] linear kernel (features flattened after the sample axis)."""
    x = x.reshape(*x.shape[:-1], -1) if x.dim() >= 2 else x
    return x @ x.transpose(-1, -2)


def _hsic_parts(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram [N, n, n] -> (vec K~ [N, n*n], row sums K~ 1 [N, n], total 1'K~1 [N]) in float64."""
    k = k.double().clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    rows = k.sum(-1)
    return k.reshape(k.shape[0], -1), rows, rows.sum(-1)


def hsic1_matrix(k: torch.Tensor, l: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased HSIC between every Gram of `k` [N, n, n] and every Gram of `l` [M, n, n] -> [N, M]."""
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples per batch, got {n}")
    kv, kr, ks = _hsic_parts(k)
    lv, lr, ls = (kv, kr, ks) if l is None else _hsic_parts(l)
    trace_term = kv @ lv.T
    ones_term = torch.outer(ks, ls) / ((n - 1) * (n - 2))
    cross_term = (kr @ lr.T) * (2.0 / (n - 2))
    return (trace_term + ones_term - cross_term) / (n * (n - 3))


def hsic1(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of two Gram matrices [n, n] (a 0-dim float64 tensor)."""
    return hsic1_matrix(k.unsqueeze(0), l.unsqueeze(0))[0, 0]


class MinibatchCKA:
    """Accumulates unbiased HSIC between all models over minibatches; `matrix()` is the [N, N] CKA."""

    def __init__(self, n_models: int):
        self.n = int(n_models)
        self.hsic = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.scale = torch.zeros(self.n, dtype=torch.float64)  # sum_b ||K~_b||_F^2 / (n(n-3)): rounding scale
        self.batches = 0
        self.samples = 0

    def update(self, feats: torch.Tensor) -> None:
        """feats [N, B, ...]: every model's representation of the same B inputs."""
        f = feats.detach().reshape(feats.shape[0], feats.shape[1], -1)
        self.update_grams(gram_linear(f.double()))

    def update_grams(self, grams: torch.Tensor) -> None:
        """grams [N, B, B]: every model's Gram matrix on the same B inputs."""
        if grams.shape[0] != self.n:
            raise ValueError(f"Grams of {grams.shape[0]} models, expected {self.n}")
        self.hsic += hsic1_matrix(grams)
        n = grams.shape[-1]
        kt = grams.double().clone()
        kt.diagonal(dim1=-2, dim2=-1).zero_()
        self.scale += kt.pow(2).sum((-2, -1)) / (n * (n - 3))
        self.batches += 1
        self.samples += grams.shape[1]

    def matrix(self) -> torch.Tensor:
        """[N, N] CKA; NaN for a model whose representation does not vary over the inputs.

        A constant representation (dead ReLUs, constant logits) has HSIC(K, K) = 0
        and CKA is undefined; its estimate is then rounding noise, recognised by
        being tiny next to the size of the Gram entries.
        """
        d = self.hsic.diagonal()
        degenerate = d <= RELATIVE_EPS * self.scale
        root = d.clamp_min(0).sqrt()
        out = self.hsic / torch.outer(root, root)
        out[degenerate, :] = float("nan")
        out[:, degenerate] = float("nan")
        return out


def cka(xs, ys) -> float:
    """Minibatch CKA of two representations: tensors [n, d] or lists of them (one per batch)."""
    xs = [xs] if isinstance(xs, torch.Tensor) else list(xs)
    ys = [ys] if isinstance(ys, torch.Tensor) else list(ys)
    if len(xs) != len(ys):
        raise ValueError("give the same number of batches for both representations")
    acc = MinibatchCKA(2)
    for x, y in zip(xs, ys):
        if x.shape[0] != y.shape[0]:
            raise ValueError("both representations must be of the same inputs (same batch sizes)")
        acc.update_grams(torch.stack([gram_linear(x.reshape(x.shape[0], -1).double()),
                                      gram_linear(y.reshape(y.shape[0], -1).double())]))
    return float(acc.matrix()[0, 1])
