"""The interface every weight generator shares (diffusion now; VQ-VAE + autoregressive and hypernetworks later).

    gen = LatentDiffusion.fit(store, where="zoo = 'digits-pairs' AND epoch = 20")   # from a store + SQL filter
    gen = LatentDiffusion(latent_dim=32).fit_tensors(weights, layout, conditions)     # or from memory
    w, layout = gen.sample(256, "digits-pair:3-5", seed=0)                            # [256, P] weights
    w, layout = gen.sample(256, "digits-pair:3-5", target={"test_acc": 1.0})          # G.pt-style target
    w, layout = gen.sample(256, "digits-pair:3-5", select=4)       # best 256 of 1024 by training-split loss
    gen.save_pretrained("gen/");  gen = load_generator("gen/")                         # safetensors + JSON

A condition is a dataset (a registry name, resolved with `zoo.load_dataset`,
or a `wsl.Dataset`): the generator embeds it from the samples of its train
split only, so the same call works for a dataset it never saw. Optionally a
target metric (`target={"test_acc": 0.99}`), when the generator was fit with
that metric (`metric="test_acc"`).

`select=k` draws k x n candidates and keeps the n with the lowest loss on the
condition's train split (one fused evaluation; the test split is never looked
at), the generate-then-filter step a user with the dataset in hand can take.

What a subclass provides: a `Config` dataclass of its knobs, `_fit(x, ...)`,
`_sample(n, context, target, seed)`, and `_modules()` (named nn.Modules and
buffers saved to safetensors). The base class does everything shared:
checking weights and layouts, resolving conditions, selecting from a store,
saving and loading, and ids.

On disk (diffusers style, never pickle):

    DIR/config.json          {"method", "format", "generator_id", "config", "layout", "fit"}
    DIR/model.safetensors    every module's state dict, prefixed by module name
    DIR/<extra>/...          method-specific configs (diffusion: scheduler/scheduler_config.json)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from store.errors import UserError
from store.layout import ParamLayout
from wsl.data import Dataset

FORMAT = "wsl-generator/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# method name -> generator class; subclasses register themselves
METHODS: dict[str, type["WeightGenerator"]] = {}

# the pool a store-backed fit selects from: checkpoints with their model's columns (never the weights column);
# the same join as `wsl eval --where`, so a filter may name columns bare or as checkpoints.x / models.x
POOL_FROM = "checkpoints JOIN (SELECT * EXCLUDE (layout_id) FROM models) AS models USING (model_id)"
POOL_COLUMNS = "checkpoints.* EXCLUDE (weights), models.* EXCLUDE (model_id)"
# default filter: the last checkpoint of every model that finished
DEFAULT_WHERE = ("status = 'done' AND (model_id, epoch) IN "
                 "(SELECT model_id, max(epoch) FROM checkpoints GROUP BY model_id)")


@dataclasses.dataclass
class Condition:
    """What to generate for: a dataset (name or object) and optionally target metric values."""

    dataset: str | Dataset
    target: dict[str, float] | None = None
    split_seed: int = 0  # split seed when `dataset` is a registry name

    @property
    def name(self) -> str:
        return self.dataset if isinstance(self.dataset, str) else self.dataset.name

    def label(self) -> str:
        """One string for the `samples.condition` column."""
        if not self.target:
            return self.name
        return self.name + "|" + ",".join(f"{k}={v:g}" for k, v in sorted(self.target.items()))


def resolve_dataset(ds: str | Dataset, split_seed: int = 0) -> Dataset:
    """A dataset object for a condition: registry names go through `zoo.load_dataset`."""
    if isinstance(ds, Dataset):
        return ds
    if not isinstance(ds, str) or not ds:
        raise UserError(f"condition {ds!r} is not a dataset name or a wsl.Dataset", "pass e.g. 'digits-pair:3-5'")
    from zoo.datasets import load_dataset

    return load_dataset(ds, seed=split_seed)


def as_condition(condition: str | Dataset | Condition, target: Mapping[str, float] | None = None) -> Condition:
    if isinstance(condition, Condition):
        if target:
            return dataclasses.replace(condition, target={**(condition.target or {}), **dict(target)})
        return condition
    return Condition(condition, dict(target) if target else None)


def best_by_train_loss(weights: torch.Tensor, layout: ParamLayout, ds: Dataset, n: int) -> torch.Tensor:
    """The n rows of `weights` with the lowest loss on ds's train split, best first (ties: lower row first)."""
    from wsl.evaluate import evaluate

    loss = evaluate(weights, layout, ds, split="train").loss.to(torch.float64)
    loss = torch.nan_to_num(loss, nan=math.inf)
    order = torch.sort(loss, stable=True).indices[:n]
    return weights[order].contiguous()


def check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UserError(f"number of models to generate is {n!r}", "ask for n >= 1")
    return n


class WeightGenerator:
    """Base class: fit on [N, P] weights with per-row dataset conditions, sample [n, P] weights for a condition."""

    method: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        seed: int = 0

    def __init__(self, config: "WeightGenerator.Config | Mapping[str, Any] | None" = None, **overrides: Any):
        self.config = self._make_config(config, overrides)
        self.layout: ParamLayout | None = None
        self.fit_info: dict[str, Any] = {}
        self.generator_id: str | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.method:
            METHODS[cls.method] = cls

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
    def fit(cls, store, where: str | None = None, *, metric: str | None = None, align_by: str | None = "seed",
            progress=None, skip_damaged: bool = False, **config: Any) -> "WeightGenerator":
        """A generator fit on the checkpoints a SQL filter selects from a store.

        `where` filters `checkpoints JOIN models` like `wsl eval --where` (every
        column of both, e.g. "zoo = 'digits-pairs' AND epoch = 20 AND dataset <> 'digits-pair:3-5'");
        default: the last checkpoint of every finished model. Each row's condition
        is its model's `dataset`; `metric` (e.g. "test_acc") adds a target-metric
        condition from that column. `align_by` (default: the models' `seed`, i.e.
        their shared initialisation) groups the models for hidden-unit alignment
        (symmetry.align_groups); None turns it off. skip_damaged: checkpoints
        whose stored weights fail their integrity check are left out (listed in
        store.skipped_rows) instead of stopping the fit.
        """
        gen = cls(**config)
        weights, layout, meta = select_training_set(store, where, metric, skip_damaged=skip_damaged)
        conditions = [Condition(d, split_seed=s) for d, s in zip(meta["dataset"], meta["split_seed"])]
        metrics = {metric: torch.tensor(meta[metric].to_numpy(), dtype=torch.float32)} if metric else None
        if align_by is not None and align_by not in meta.columns:
            raise UserError(f"align_by column {align_by!r} is not a column of checkpoints/models",
                            "use e.g. 'seed', or None to skip alignment")
        groups = list(meta[align_by]) if align_by else None
        gen.fit_tensors(weights, layout, conditions, metrics=metrics, groups=groups, progress=progress)
        gen.fit_info["align_by"] = align_by
        gen.fit_info["where"] = clean_where(where) or DEFAULT_WHERE
        gen.fit_info["store"] = str(getattr(store, "path", store))
        gen.generator_id = gen._compute_id()
        return gen

    def fit_tensors(self, weights: torch.Tensor, layout: ParamLayout,
                    conditions: Sequence[str | Dataset | Condition],
                    metrics: Mapping[str, torch.Tensor] | None = None, groups: Sequence[Any] | None = None,
                    progress=None) -> "WeightGenerator":
        """Fit on an in-memory [N, P] tensor; `conditions[i]` is row i's dataset; `metrics` {name: [N]}.

        `groups[i]` labels row i's initialisation (e.g. its seed): each group is
        permuted as a whole into one shared coordinate system before fitting
        (symmetry.align_groups; a function-preserving change).
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
        # one Dataset per distinct condition; row -> index into that list
        names: dict[tuple, int] = {}
        datasets: list[Dataset] = []
        index = []
        for c in conds:
            key = (c.name, c.split_seed) if isinstance(c.dataset, str) else (c.name, id(c.dataset))
            if key not in names:
                names[key] = len(datasets)
                datasets.append(resolve_dataset(c.dataset, c.split_seed))
            index.append(names[key])
        weights = weights.to(torch.float32)
        labels: list[str] = []
        group_index = torch.zeros(n, dtype=torch.long)
        if groups is not None:
            groups = [str(g) for g in groups]
            if len(groups) != n:
                raise UserError(f"{n} weight rows but {len(groups)} group labels", "give one group label per row or none")
            from generators.symmetry import align_groups

            weights = align_groups(weights, layout, groups)
            labels = sorted(set(groups))
            group_index = torch.tensor([labels.index(g) for g in groups])
        self.layout = layout
        self.fit_info = {"groups": labels if len(labels) > 1 else []}
        self._fit(weights, datasets, torch.tensor(index), metrics, group_index, progress)
        per = {}
        for i, ds in enumerate(datasets):
            per.setdefault(ds.name, 0)
            per[ds.name] += index.count(i)
        self.fit_info = {"num_train": n, "conditions": per, "aligned_groups": len(labels), "metrics": sorted(metrics),
                         "input_shape": list(datasets[0].input_shape), "num_classes": int(datasets[0].num_classes),
                         "task": datasets[0].task, **self.fit_info}
        self.generator_id = self._compute_id()
        return self

    # ----- sampling ---------------------------------------------------------------
    def sample(self, n: int, condition: str | Dataset | Condition, seed: int = 0,
               target: Mapping[str, float] | None = None, select: int = 1) -> tuple[torch.Tensor, ParamLayout]:
        """n weight vectors [n, P] for a condition (dataset, optional target metrics), and their layout.

        select=k > 1: draw k*n candidates, keep the n with the lowest training-split loss (in that order).
        Deterministic: the same (n, condition, seed, select) gives the same weights.
        """
        layout = self._require_fit()
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
        w = self._sample(n * select, ds, dict(cond.target or {}), int(seed))
        layout.check_flat(w, what="generated weights")
        if select > 1:
            w = best_by_train_loss(w, layout, ds, n)
        return w, layout

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

    # ----- subclass hooks ---------------------------------------------------------------
    def _fit(self, weights: torch.Tensor, datasets: list[Dataset], index: torch.Tensor,
             metrics: dict[str, torch.Tensor], groups: torch.Tensor, progress) -> None:
        """groups: [N] init-group index of each row (all 0 without groups); fit_info["groups"] has the labels."""
        raise NotImplementedError

    def _sample(self, n: int, dataset: Dataset, target: dict[str, float], seed: int) -> torch.Tensor:
        raise NotImplementedError

    def _modules(self) -> dict[str, nn.Module]:
        """Named modules whose state dicts (parameters and buffers) are the saved tensors."""
        raise NotImplementedError

    def _build(self) -> None:
        """Create the (untrained) modules from config + layout + fit_info, before loading tensors."""
        raise NotImplementedError

    def _save_extra(self, directory: Path) -> None:
        """Write method-specific side files (scheduler configs)."""

    # ----- save / load -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in self._modules().items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
        return out

    def _compute_id(self) -> str:
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
        """Write config.json + model.safetensors (+ method side files) atomically into `directory`."""
        from safetensors.torch import save_file

        layout = self._require_fit()
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory} exists and is not a directory", "give a new or existing directory")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-gen-", dir=directory.parent))
        try:
            save_file(self.state_tensors(), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "method": self.method})
            cfg = {"format": FORMAT, "method": self.method, "generator_id": self.generator_id,
                   "config": self.config_dict(), "layout": layout.to_dict(), "layout_id": layout.layout_id,
                   "fit": self.fit_info}
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
            self._save_extra(tmp)
            if directory.exists():
                for name in [CONFIG_FILE, WEIGHTS_FILE]:
                    (directory / name).unlink(missing_ok=True)
                for p in tmp.iterdir():
                    dest = directory / p.name
                    if dest.is_dir():
                        shutil.rmtree(dest)
                    os.replace(p, dest)
                tmp.rmdir()
            else:
                os.replace(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "WeightGenerator":
        """Load a generator saved by save_pretrained; on the base class any method, on a subclass only its own."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cfg = read_config(directory)
        method = cfg["method"]
        klass = METHODS.get(method)
        if klass is None:
            _import_methods()
            klass = METHODS.get(method)
        if klass is None:
            raise UserError(f"generator directory {directory} uses method {method!r}, which is not available",
                            f"use one of: {', '.join(sorted(METHODS))}")
        if cls is not WeightGenerator and not issubclass(klass, cls):
            raise UserError(f"{directory} holds a {method!r} generator, not a {cls.method!r} one",
                            "load it with generators.load_generator")
        gen = klass(cfg.get("config") or {})
        gen.layout = ParamLayout.from_dict(cfg["layout"])
        if cfg.get("layout_id") and gen.layout.layout_id != cfg["layout_id"]:
            raise UserError(f"{directory}/config.json: its layout hashes to {gen.layout.layout_id}, not the recorded "
                            f"{cfg['layout_id']}", "the file was edited or written by another version; refit the generator")
        gen.fit_info = dict(cfg.get("fit") or {})
        gen.generator_id = cfg.get("generator_id")
        gen._build()
        try:
            tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{directory}/{WEIGHTS_FILE} cannot be read ({e})", "refit or re-copy the generator") from None
        modules = gen._modules()
        for prefix, module in modules.items():
            sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(sub, strict=True)
            except RuntimeError as e:
                raise UserError(f"{directory}/{WEIGHTS_FILE} does not match its config ({str(e).splitlines()[0]})",
                                "refit the generator; the files were mixed up or written by another version") from None
        for m in modules.values():
            m.eval()
        return gen

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.generator_id}, layout={self.layout.layout_id if self.layout else None}, "
                f"trained on {self.fit_info.get('num_train', 0)} models / {len(self.fit_info.get('conditions', {}))} datasets)")


def _import_methods() -> None:
    import generators.diffusion  # noqa: F401  (registers itself)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a generator directory, checked."""
    d = Path(directory)
    f = d / CONFIG_FILE
    if not d.is_dir():
        raise UserError(f"generator directory {d} does not exist", "give a directory written by `wsl generate fit`")
    if not f.is_file() or not (d / WEIGHTS_FILE).is_file():
        raise UserError(f"{d} is not a generator directory (no {CONFIG_FILE} / {WEIGHTS_FILE})",
                        "give a directory written by `wsl generate fit` or save_pretrained")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON ({e})", "refit the generator") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "method" not in cfg or "layout" not in cfg:
        raise UserError(f"{f} is not a generator config (format {cfg.get('format') if isinstance(cfg, dict) else None!r})",
                        f"give a directory written by save_pretrained (format {FORMAT})")
    return cfg


def load_generator(directory: str | os.PathLike) -> WeightGenerator:
    """Load any saved generator (dispatches on config.json's method)."""
    return WeightGenerator.from_pretrained(directory)


# ----- selecting training data from a store ------------------------------------------------
def select_training_set(store, where: str | None, metric: str | None = None, skip_damaged: bool = False):
    """(weights [N, P], layout, meta DataFrame) for the checkpoints `where` selects from the pool.

    meta has checkpoint_id, model_id, dataset, split_seed and the metric column. skip_damaged:
    damaged checkpoints are left out of both (ZooStore.weights).
    """
    where = clean_where(where) or DEFAULT_WHERE
    meta = store.sql(f"SELECT {POOL_COLUMNS} FROM {POOL_FROM} WHERE {where} ORDER BY checkpoint_id") \
        if _has_tables(store) else None
    if meta is None or len(meta) == 0:
        raise UserError(f"the selection {where!r} matches no checkpoints in store {getattr(store, 'path', store)}",
                        "check the filter with: wsl query \"SELECT count(*) FROM checkpoints JOIN models USING (model_id) WHERE ...\"")
    layouts = sorted(set(meta["layout_id"]))
    if len(layouts) != 1:
        raise UserError(f"the selection mixes {len(layouts)} layouts {layouts[:4]} (different architectures or widths)",
                        "add a filter such as \"layout_id = '...'\" so all models share one layout")
    if metric is not None:
        if metric not in meta.columns:
            raise UserError(f"metric {metric!r} is not a column of checkpoints/models",
                            "use e.g. test_acc, test_loss or train_acc")
        if meta[metric].isna().any():
            raise UserError(f"metric {metric!r} is missing for {int(meta[metric].isna().sum())} selected checkpoints",
                            "filter those rows out or pick another metric")
    meta["split_seed"] = _split_seeds(store, meta)
    weights, wmeta = store.weights(list(meta["checkpoint_id"]), skip_damaged=skip_damaged)
    if len(wmeta) < len(meta):
        meta = meta[meta["checkpoint_id"].isin(set(wmeta["checkpoint_id"]))]
        if len(meta) == 0:
            raise UserError("every selected checkpoint is damaged", "run `wsl store check --quarantine`, then re-run the training")
    order = {k: i for i, k in enumerate(wmeta["checkpoint_id"])}
    weights = weights[[order[k] for k in meta["checkpoint_id"]]].to(torch.float32)
    return weights, store.layout(layouts[0]), meta.reset_index(drop=True)


def clean_where(where: str | None) -> str:
    w = (where or "").strip().rstrip(";")
    return w[6:].strip() if w.lower().startswith("where ") else w


def _has_tables(store) -> bool:
    try:
        return store.count("checkpoints") > 0 and store.count("models") > 0
    except Exception:  # noqa: BLE001 - an unreadable / missing table reads as "no rows"
        return False


def _split_seeds(store, meta) -> list[int]:
    """The data-split seed of each row's dataset (models.data_seed, else the datasets table; 0 when unknown)."""
    if "data_seed" in meta.columns and not meta["data_seed"].isna().any():
        return [int(s) for s in meta["data_seed"]]
    if "dataset_id" not in meta.columns:
        return [0] * len(meta)
    try:
        if store.count("datasets") == 0:
            return [0] * len(meta)
        ds = store.sql("SELECT dataset_id, any_value(seed) AS seed FROM datasets GROUP BY dataset_id")
    except Exception:  # noqa: BLE001
        return [0] * len(meta)
    seeds = dict(zip(ds["dataset_id"], ds["seed"]))
    return [int(seeds.get(d, 0) or 0) for d in meta["dataset_id"]]

