"""The interface every weight generator shares: fit on weights with dataset conditions, sample for a dataset.

    gen = LatentDiffusion.fit(store, where="zoo = 'digits-pairs' AND epoch = 20")   # from a store + SQL filter
    gen = LatentDiffusion(latent_dim=32).fit_tensors(weights, layout, conditions)     # or from memory
    w, layout = gen.sample(256, "digits-pair:3-5", seed=0)                            # [256, P] weights
    w, layout = gen.sample(256, "digits-pair:3-5", target={"test_acc": 1.0})          # G.pt-style target
    w, layout = gen.sample(256, "digits-pair:3-5", select=4)       # best 256 of 1024 by training-split loss
    gen.save_pretrained("gen/");  gen = load_generator("gen/")                         # safetensors + JSON

A condition is a dataset (conditions.py): the generator embeds it from the samples of
its train split only, so the same call works for a dataset it never saw. `select=k`
draws k x n candidates and keeps the n with the lowest loss on the condition's train
split (one fused evaluation; the test split is never looked at).

What a method (subclass) provides: `method` (its registry name, registry.py), a
`Config` dataclass of its knobs, `_fit(weights, datasets, index, metrics, groups,
progress)`, `_sample(n, dataset, target, seed)`, `_modules()` (named nn.Modules whose
state dicts are saved) and `_build()` (the untrained modules from config + layout +
fit_info, before loading). This class does everything shared: checking weights and
layouts, resolving conditions, selecting from a store (training_set.py), saving and
loading (saving.py), ids.

Room for the other families, through class attributes and one hook each:
- `multi_layout = True` (one generator over several layouts of one family, vqar):
  override `fit_training_set(ts, ...)`, which receives every layout's rows (the default
  refuses a selection that mixes layouts), `resolve_layout(layout)` (which layouts `sample(...,
  layout=)` accepts), and take `layout=` (the resolved ParamLayout) in `_sample`.
- `needs_weights = False` (a hypernetwork trained on the tasks' own loss, hyper):
  implement `_fit_tasks(layout, datasets, progress)`; `fit_tasks(layout, datasets)`
  then fits from dataset names alone, with no zoo weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from generators.components import head_fit
from generators.conditions import Condition, as_condition, best_by_train_loss, check_n, resolve_dataset
from generators.saving import from_pretrained as _load, save_pretrained as _save
from generators.training_set import Split, TrainingSet, select
from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset


class WeightGenerator:
    """Base class: fit on [N, P] weights with per-row dataset conditions, sample [n, P] weights for a condition."""

    method: ClassVar[str] = ""
    multi_layout: ClassVar[bool] = False  # one generator for several layouts (override fit_training_set)
    # config values a generator saved before the option existed had in effect (applied on load when missing)
    legacy_config: ClassVar[dict[str, Any]] = {}
    needs_weights: ClassVar[bool] = True  # False: can fit from tasks alone (implement _fit_tasks)

    @dataclasses.dataclass
    class Config:
        seed: int = 0

    def __init__(self, config: "WeightGenerator.Config | Mapping[str, Any] | None" = None, **overrides: Any):
        self.config = self._make_config(config, overrides)
        if hasattr(self.config, "head_fit"):
            head_fit.check_mode(self.config.head_fit)
        self.layout: ParamLayout | None = None
        self.fit_info: dict[str, Any] = {}
        self.generator_id: str | None = None
        self.training: dict[str, Any] = {}  # what it was fit on (training_set.py provenance; training_set.json)
        self.source: str | None = None  # where it was loaded from (a folder, or hf://ORG/NAME@commit)

    # ----- config ---------------------------------------------------------------
    @classmethod
    def _make_config(cls, config, overrides) -> Any:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        given = dict(dataclasses.asdict(config)) if dataclasses.is_dataclass(config) else dict(config or {})
        given.update(overrides)
        unknown = sorted(set(given) - fields)
        if unknown:
            raise UserError(f"{cls.method or cls.__name__} generator has no option(s) {unknown}",
                            f"use: {', '.join(sorted(fields))}")
        return cls.Config(**given)

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def is_fit(self) -> bool:
        return self.layout is not None

    def _require_fit(self) -> ParamLayout:
        if self.layout is None:
            raise UserError(f"this {self.method} generator is not fit yet", "call fit(store, where) or fit_tensors(...) first")
        return self.layout

    # ----- fitting ----------------------------------------------------------------
    @classmethod
    def fit(cls, store, where: str | None = None, *, params: Mapping[str, Any] | None = None, last: bool | None = None,
            protocol: Split | None = None, metric: str | None = None, align_by: str | None = "seed",
            progress=None, skip_damaged: bool = False, **config: Any) -> "WeightGenerator":
        """A generator fit on the checkpoints a SQL filter selects from a store.

        `where` filters the pool of store/filters.py (every column of models and
        checkpoints, e.g. "zoo = 'digits-pairs' AND epoch = 20 AND dataset <> 'digits-pair:3-5'"),
        with `$name` placeholders bound from `params`; `last` keeps only the last
        checkpoint of every finished model (the default without `where`);
        `protocol` (a training_set.Split) keeps its held-out tasks out. Each row's
        condition is its model's `dataset`; `metric` (e.g. "test_acc") adds a
        target-metric condition from that column. `align_by` (default: the models'
        `seed`, i.e. their shared initialisation) groups the models for hidden-unit
        alignment (components/symmetry.py); None turns it off. skip_damaged: checkpoints
        whose stored weights fail their integrity check are left out (store.skipped_rows).
        """
        gen = cls(**config)
        t0 = time.perf_counter()
        ts = select(store, where, params=params, last=last, protocol=protocol, metric=metric, skip_damaged=skip_damaged)
        if align_by is not None and align_by not in ts.meta.columns:
            raise UserError(f"align_by column {align_by!r} is not a column of checkpoints/models",
                            "use e.g. 'seed', or None to skip alignment")
        gen.fit_training_set(ts, metric=metric, align_by=align_by, progress=progress)
        gen.fit_info.update({"align_by": align_by, "where": ts.where, "params": dict(params or {}), "last": ts.last,
                             "train_digest": ts.digest, "store": str(getattr(store, "path", store))})
        if protocol is not None:  # which tasks it saw and which it held out (protocols.check_held_out_unseen)
            gen.fit_info["protocol"] = protocol.record()
        gen.training = {**ts.provenance(), "metric": metric, "align_by": align_by,
                        "fit_seconds": round(time.perf_counter() - t0, 3), "versions": library_versions()}
        gen.generator_id = gen._compute_id()
        return gen

    def fit_training_set(self, ts: TrainingSet, metric: str | None = None, align_by: str | None = None,
                         progress=None) -> "WeightGenerator":
        """Fit on a selected training set; this default takes one layout (a method with multi_layout overrides it)."""
        weights, layout, meta = ts.single()
        conditions = [Condition(d, split_seed=s) for d, s in zip(meta["dataset"], meta["split_seed"])]
        metrics = {metric: torch.tensor(meta[metric].to_numpy(), dtype=torch.float32)} if metric else None
        groups = list(meta[align_by]) if align_by else None
        return self.fit_tensors(weights, layout, conditions, metrics=metrics, groups=groups, progress=progress)

    def fit_tensors(self, weights: torch.Tensor, layout: ParamLayout,
                    conditions: Sequence[str | Dataset | Condition],
                    metrics: Mapping[str, torch.Tensor] | None = None, groups: Sequence[Any] | None = None,
                    progress=None) -> "WeightGenerator":
        """Fit on an in-memory [N, P] tensor; `conditions[i]` is row i's dataset; `metrics` {name: [N]}.

        `groups[i]` labels row i's initialisation (e.g. its seed): each group is
        permuted as a whole into one shared coordinate system before fitting
        (components/symmetry.align_groups; a function-preserving change).
        """
        if not isinstance(layout, ParamLayout):
            raise UserError(f"layout is a {type(layout).__name__}", "pass the ParamLayout of the weights")
        if not isinstance(weights, torch.Tensor) or weights.dim() != 2:
            raise UserError(f"weights must be an [N, P] tensor, got {getattr(weights, 'shape', type(weights).__name__)}",
                            "stack one flat vector per model")
        layout.check_flat(weights)
        n = len(weights)
        if n < 2:
            raise UserError(f"a generator needs at least 2 training models, got {n}", "select more checkpoints")
        conds = [as_condition(c) for c in conditions]
        if len(conds) != n:
            raise UserError(f"{n} weight rows but {len(conds)} conditions", "give one dataset condition per row")
        metrics = dict(metrics or {})
        for k, v in metrics.items():
            v = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
            if len(v) != n or not bool(torch.isfinite(v).all()):
                raise UserError(f"metric {k!r} has {len(v)} values (or NaN) for {n} models", "give one finite value per row")
            metrics[k] = v
        datasets, index = _distinct_datasets(conds)
        weights = weights.to(torch.float32)
        labels: list[str] = []
        group_index = torch.zeros(n, dtype=torch.long)
        if groups is not None:
            groups = [str(g) for g in groups]
            if len(groups) != n:
                raise UserError(f"{n} weight rows but {len(groups)} group labels", "give one group label per row or none")
            from generators.components.symmetry import align_groups

            weights = align_groups(weights, layout, groups)
            labels = sorted(set(groups))
            group_index = torch.tensor([labels.index(g) for g in groups])
        self.layout = layout
        self.fit_info = {"groups": labels if len(labels) > 1 else []}
        t0 = time.perf_counter()
        self._fit(weights, datasets, torch.tensor(index), metrics, group_index, progress)
        self.training = {"checkpoint_ids": [], "num_train": n, "digest": None, "layout_ids": [layout.layout_id],
                         "datasets": sorted({d.name for d in datasets}), "metric": ",".join(sorted(metrics)) or None,
                         "fit_seconds": round(time.perf_counter() - t0, 3), "versions": library_versions()}
        per: dict[str, int] = {}
        for i, ds in enumerate(datasets):
            per[ds.name] = per.get(ds.name, 0) + index.count(i)
        self.fit_info = {"num_train": n, "conditions": per, "aligned_groups": len(labels), "metrics": sorted(metrics),
                         "input_shape": list(datasets[0].input_shape), "num_classes": int(datasets[0].num_classes),
                         "task": datasets[0].task, **self.fit_info}
        self.generator_id = self._compute_id()
        return self

    def fit_tasks(self, layout: ParamLayout, datasets: Sequence[str | Dataset | Condition],
                  progress=None) -> "WeightGenerator":
        """Fit from tasks alone, no zoo weights (methods with needs_weights = False, e.g. hypernetworks)."""
        if self.needs_weights:
            raise UserError(f"the {self.method or type(self).__name__} method learns from a zoo's weights",
                            "fit it with fit(store, where) or fit_tensors(weights, layout, conditions)")
        if not isinstance(layout, ParamLayout):
            raise UserError(f"layout is a {type(layout).__name__}", "pass the ParamLayout of the models to generate")
        if not datasets:
            raise UserError("no tasks to fit on", "give at least one dataset name")
        ds_list, _ = _distinct_datasets([as_condition(c) for c in datasets])
        self.layout = layout
        self.fit_info = {}
        t0 = time.perf_counter()
        self._fit_tasks(layout, ds_list, progress)
        self.training = {"checkpoint_ids": [], "num_train": 0, "digest": None, "layout_ids": [layout.layout_id],
                         "datasets": sorted({d.name for d in ds_list}),
                         "fit_seconds": round(time.perf_counter() - t0, 3), "versions": library_versions()}
        self.fit_info = {"num_train": 0, "conditions": {d.name: 0 for d in ds_list}, "metrics": [],
                         "input_shape": list(ds_list[0].input_shape), "num_classes": int(ds_list[0].num_classes),
                         "task": ds_list[0].task, **self.fit_info}
        self.generator_id = self._compute_id()
        return self

    # ----- sampling ---------------------------------------------------------------
    def sample(self, n: int, condition: str | Dataset | Condition, seed: int = 0,
               target: Mapping[str, float] | None = None, select: int = 1,
               layout: ParamLayout | str | None = None) -> tuple[torch.Tensor, ParamLayout]:
        """n weight vectors [n, P] for a condition (dataset, optional target metrics), and their layout.

        select=k > 1: draw k*n candidates, keep the n with the lowest training-split loss (in that order).
        layout: which layout to generate (a layout id or a ParamLayout); only a multi_layout method
        makes another than the one it was fit on (`resolve_layout`). Default: `self.layout`.
        Deterministic: the same (n, condition, seed, select, layout) gives the same weights.
        """
        layout = self.resolve_layout(layout)
        check_n(n)
        if isinstance(select, bool) or not isinstance(select, int) or select < 1:
            raise UserError(f"select is {select!r}", "give select >= 1 (1 = keep every sample; k = best n of k*n)")
        cond = as_condition(condition, target)
        ds = resolve_dataset(cond.dataset, cond.split_seed)
        self.check_dataset(ds)
        unknown = sorted(set(cond.target or {}) - set(self.fit_info.get("metrics", [])))
        if unknown:
            have = self.fit_info.get("metrics") or []
            raise UserError(f"target metric(s) {unknown} were not a condition when this generator was fit",
                            f"use one of {have}" if have else "fit with metric='test_acc' to condition on a target")
        extra = {"layout": layout} if self.multi_layout else {}
        w = self._sample(n * select, ds, dict(cond.target or {}), int(seed), **extra)
        layout.check_flat(w, what="generated weights")
        w = self.fit_head(w, layout, ds)
        if select > 1:
            w = best_by_train_loss(w, layout, ds, n)
        return w, layout

    def fit_head(self, weights: torch.Tensor, layout: ParamLayout, dataset: Dataset) -> torch.Tensor:
        """The sampling-time head fit of the method's `head_fit` option (components/head_fit.py); identity without one.

        The report applies it to the retrieval baselines too (`retrieval-*+head`).
        """
        return head_fit.fit_head(weights, layout, dataset, getattr(self.config, "head_fit", "none"))

    def fits_head(self, layout: ParamLayout, dataset: Dataset) -> bool:
        """Whether sample() replaces the last layer for this layout and dataset (`fit_head`)."""
        return head_fit.active(getattr(self.config, "head_fit", "none"), layout, dataset)

    def resolve_layout(self, layout: ParamLayout | str | None) -> ParamLayout:
        """The layout a sample is made in: the fit layout (a multi_layout method overrides this to take others)."""
        fit = self._require_fit()
        if layout is None:
            return fit
        lid = layout.layout_id if isinstance(layout, ParamLayout) else layout
        if lid != fit.layout_id:
            raise UserError(f"this {self.method} generator makes layout {fit.layout_id}, not {lid!r}",
                            "leave the layout out, or use a method fit on several layouts (e.g. vqar)")
        return fit

    def check_dataset(self, ds: Dataset) -> None:
        """A UserError when a dataset's inputs or labels do not fit what the generator was fit on."""
        shape = self.fit_info.get("input_shape")
        if shape is not None and math.prod(ds.input_shape) != math.prod(shape):
            raise UserError(f"dataset {ds.name!r} has inputs of shape {list(ds.input_shape)}, the generator was fit on "
                            f"inputs of shape {shape}",
                            "condition on a dataset with the same input shape as the zoo the generator was fit on")
        k = self.fit_info.get("num_classes")
        if k is not None and ds.task == "classification" and int(ds.num_classes) != int(k):
            raise UserError(f"dataset {ds.name!r} has {ds.num_classes} classes, the generator makes models with {k} outputs",
                            f"condition on a dataset with {k} classes")
        task = self.fit_info.get("task")
        if task is not None and ds.task != task:
            raise UserError(f"dataset {ds.name!r} is a {ds.task} dataset, the generator was fit on {task}",
                            f"condition on a {task} dataset")

    # ----- method hooks -------------------------------------------------------------------
    def _fit(self, weights: torch.Tensor, datasets: list[Dataset], index: torch.Tensor,
             metrics: dict[str, torch.Tensor], groups: torch.Tensor, progress) -> None:
        """groups: [N] init-group index of each row (all 0 without groups); fit_info["groups"] has the labels."""
        raise NotImplementedError(f"{type(self).__name__} must define _fit")

    def _fit_tasks(self, layout: ParamLayout, datasets: list[Dataset], progress) -> None:
        raise NotImplementedError(f"{type(self).__name__} sets needs_weights = False but defines no _fit_tasks")

    def _sample(self, n: int, dataset: Dataset, target: dict[str, float], seed: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define _sample")

    def _modules(self) -> dict[str, nn.Module]:
        """Named modules whose state dicts (parameters and buffers) are the saved tensors."""
        raise NotImplementedError(f"{type(self).__name__} must define _modules")

    def _build(self) -> None:
        """Create the (untrained) modules from config + layout + fit_info, before loading tensors."""
        raise NotImplementedError(f"{type(self).__name__} must define _build")

    def _save_extra(self, directory: Path) -> None:
        """Write method-specific side files (scheduler configs)."""

    # ----- ids, save / load -----------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in self._modules().items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
        return out

    def _compute_id(self) -> str:
        """Content hash of method, options, layout, fit info (not the store's path) and every tensor."""
        h = hashlib.sha256()
        h.update(self.method.encode())
        h.update(json.dumps(self.config_dict(), sort_keys=True, default=str).encode())
        h.update((self.layout.layout_id if self.layout else "").encode())
        h.update(json.dumps({k: v for k, v in self.fit_info.items() if k != "store"}, sort_keys=True, default=str).encode())
        if self.layout is not None:
            for k, v in sorted(self.state_tensors().items()):
                h.update(k.encode())
                h.update(v.numpy().tobytes())
        return h.hexdigest()[:16]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors (+ method side files) atomically into `directory` (saving.py)."""
        return _save(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "WeightGenerator":
        """Load a generator saved by save_pretrained; on the base class any method, on a subclass only its own."""
        return _load(directory, expect=None if cls is WeightGenerator else cls)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.generator_id}, layout={self.layout.layout_id if self.layout else None}, "
                f"trained on {self.fit_info.get('num_train', 0)} models / {len(self.fit_info.get('conditions', {}))} datasets)")


def library_versions() -> dict[str, str]:
    """Versions of what a fit depends on, recorded with it (training_set.json, the generators row)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("wsl-zoo", "torch", "diffusers", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _distinct_datasets(conds: Sequence[Condition]) -> tuple[list[Dataset], list[int]]:
    """One Dataset per distinct condition, and each row's index into that list."""
    names: dict[tuple, int] = {}
    datasets: list[Dataset] = []
    index = []
    for c in conds:
        key = (c.name, c.split_seed) if isinstance(c.dataset, str) else (c.name, id(c.dataset))
        if key not in names:
            names[key] = len(datasets)
            datasets.append(resolve_dataset(c.dataset, c.split_seed))
        index.append(names[key])
    return datasets, index
