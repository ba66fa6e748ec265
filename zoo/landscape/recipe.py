"""The recipe a landscape value was measured with, and the data and loss it measures on.

A Hessian trace from 8 probes on 256 test samples and one from 64 probes on
the whole training set are different numbers; so every value in the
`landscape` table carries the JSON of its recipe and `recipe_id`, a hash of
that JSON. Compare values only within one `recipe_id`.

    recipe = Recipe(batches=2, batch_size=512, probes=40)
    recipe.recipe_id          # '3f0c9a...' (16 hex digits)
    batches = recipe.eval_batches(dataset)   # [(x, y), ...], the same samples for every model
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from store.errors import UserError
from wsl.data import Dataset

# Bump when the math behind a recipe changes, so old values get a different recipe_id.
RECIPE_VERSION = 2  # 2: Lanczos to a tolerance + deflated Hutchinson (was: fixed power iteration + Hutchinson)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a landscape value besides the weights.

    Data: `batches` x `batch_size` samples of `split`, chosen by a permutation
    seeded with `data_seed` (the whole split when it is smaller). Every metric
    (Hessian, train loss and accuracy, the curve's L(t), CKA) is measured on
    these samples; the curve's control point is trained on the whole `split`.
    """

    split: str = "train"
    batches: int = 2
    batch_size: int = 512
    data_seed: int = 0
    # Hessian (zoo/landscape/estimators.py; docs/landscape.md, "Estimators and their errors")
    iterations: int = 64  # Lanczos steps at most for the top eigenvalue
    eig_tol: float = 1e-3  # stop once the residual bound is <= eig_tol * |top eigenvalue| (after `deflation` steps)
    deflation: int = 40  # Lanczos steps at least: the Krylov basis the trace is deflated with
    probes: int = 40  # Rademacher probes of the deflated Hutchinson trace (fixed count; its standard error is stored)
    # Model i's probe seed is s_i = model_seed(model_id_i, hessian_seed) (zoo/landscape/run.py: the first 60
    # bits of sha256(f"{model_id}:{hessian_seed}"), stored per row as `hessian_probe_seed`); its probes come from
    # torch.Generator().manual_seed(s_i), its Lanczos start vector from manual_seed(s_i + EIG_SEED_OFFSET).
    hessian_seed: int = 0
    # Mode connectivity (quadratic Bezier curve, endpoints fixed)
    curve_points: int = 9  # evaluated at linspace(0, 1, curve_points), endpoints included
    curve_epochs: int = 20
    curve_lr: float = 0.01  # Adam; constant for half the epochs, then linear decay to 1%
    curve_batch_size: int = 128
    curve_seed: int = 0
    partners: int = 0  # pair each seed with its `partners` ring neighbours per side; 0 = every other seed
    version: int = RECIPE_VERSION

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise UserError(f"recipe split {self.split!r}", "use 'train' or 'test'")
        positive = ("batches", "batch_size", "iterations", "deflation", "curve_batch_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise UserError(f"recipe {name}={getattr(self, name)!r}", f"{name} must be a positive integer")
        if int(self.probes) < 2:
            raise UserError(f"recipe probes={self.probes!r}", "use 2 probes or more (a standard error needs two)")
        if int(self.deflation) > int(self.iterations):
            raise UserError(f"recipe deflation={self.deflation} > iterations={self.iterations}",
                            "the Lanczos step cap (iterations) must be at least the deflation steps")
        if not (isinstance(self.eig_tol, (int, float)) and 0 < self.eig_tol < 1):
            raise UserError(f"recipe eig_tol={self.eig_tol!r}", "give a relative tolerance between 0 and 1, e.g. 1e-3")
        if self.curve_points < 5:
            raise UserError(f"recipe curve_points={self.curve_points}", "evaluate the curve at 5 points or more")
        if self.curve_epochs < 0 or self.partners < 0:
            raise UserError("recipe curve_epochs and partners must be >= 0", "give 0 or a positive integer")
        if not self.curve_lr > 0:
            raise UserError(f"recipe curve_lr={self.curve_lr!r}", "give a positive learning rate")

    # ----- identity --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def recipe_id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown recipe keys {unknown}", f"allowed keys: {', '.join(sorted(known))}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "Recipe":
        return Recipe.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})

    # ----- data ------------------------------------------------------------
    def eval_batches(self, dataset: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The recipe's samples of its split as [(x, y)], the same for every model and metric."""
        x, y = dataset.split(self.split)
        g = torch.Generator().manual_seed(int(self.data_seed))
        idx = torch.randperm(len(x), generator=g)[: self.batches * self.batch_size]
        return [(x[i], y[i]) for i in idx.split(self.batch_size)]


def per_model_loss(out: torch.Tensor, y: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Mean loss of each model: out [N, B, C] and shared targets y [B] (or [N, B]) -> [N].

    Cross-entropy for classification, mean squared error for regression: the
    losses the population trainer minimises.
    """
    N, B = out.shape[0], out.shape[1]
    if task == "classification":
        yy = y.expand(N, B) if y.dim() == 1 else y
        return F.cross_entropy(out.transpose(1, 2), yy, reduction="none").mean(1)
    target = y if y.dim() == out.dim() else y.reshape(1, B, -1)
    return ((out - target) ** 2).reshape(N, -1).mean(1)


def per_model_accuracy(out: torch.Tensor, y: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Fraction of correct predictions per model ([N]); NaN for regression."""
    if task != "classification":
        return torch.full((out.shape[0],), float("nan"))
    yy = y.expand(out.shape[0], out.shape[1]) if y.dim() == 1 else y
    return (out.argmax(-1) == yy).float().mean(1)


def param_views(layout, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """name -> [N, *shape] views of a [N, P] tensor, without layout.unflatten's finiteness check.

    The check reads every value back to Python; inside a differentiated
    function that is a needless sync (and torch.func transforms refuse it).
    """
    n = w.shape[0]
    return {e.name: w[:, e.offset:e.offset + e.numel].reshape((n,) + e.shape) for e in layout.entries}
