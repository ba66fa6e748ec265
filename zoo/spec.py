"""Zoo specs: one TOML (or YAML) file says which population of models to train.

    name = "digits-mlp"
    dataset = "digits"                  # a list sweeps; "digits-pair:*" is all 45 class pairs, "digits-subset:*" all 1,022 subsets
    epochs = 20
    batch_size = [32, 128]              # a list is a grid axis
    seeds = 4                           # 0..3, or an explicit list

    [architecture]
    name = "mlp"
    width = [16, 32, 64]

    [optimizer]
    name = "sgd"                        # sgd | adam | adamw
    lr = [0.01, 0.1]
    momentum = 0.9

    [schedule]
    name = "cosine"                     # constant | cosine | onecycle

`load_spec(path_or_name)` parses and validates (every error names the key and
the allowed values); `expand(spec)` turns it into one row per model for the
`models` table, each with a deterministic `model_id` (a hash of the zoo name,
every hyperparameter and the seed), so re-running a spec never duplicates a
model. docs/zoo.md documents every key.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from store.errors import UserError

BUILTIN_DIR = Path(__file__).parent / "specs"

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
SCHEDULE_ALIASES = {"one-cycle": "onecycle", "one_cycle": "onecycle", "cos": "cosine"}
SAMPLING_METHODS = ("grid", "random")
DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "choice")
# architecture keys whose single value is itself a list (a sweep is then a list of lists)
LIST_VALUED_ARCH_KEYS = ("channels", "blocks")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Param:
    """One spec key: its type, the rule its values obey, its default, whether it can be swept."""

    kind: str  # int | float | str
    rule: str = ""  # human text of the allowed values, for errors
    check: Callable[[Any], bool] | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    sweep: bool = True
    applies_to: tuple[str, ...] | None = None  # optimizer / schedule names that use this key

    def allowed(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        return f"{'an integer' if self.kind == 'int' else 'a number' if self.kind == 'float' else 'a string'}" + (
            f" {self.rule}" if self.rule else "")

    def coerce(self, key: str, v: Any) -> Any:
        """Check one value; returns it normalised (floats as float, aliases resolved)."""
        if self.kind == "int":
            ok = _is_int(v)
        elif self.kind == "float":
            ok = _is_num(v)
            v = float(v) if ok else v
        else:
            ok = isinstance(v, str)
            if ok and key.endswith("schedule.name"):
                v = SCHEDULE_ALIASES.get(v, v)
        if ok and self.choices is not None:
            ok = v in self.choices
        if ok and self.check is not None:
            ok = bool(self.check(v))
        if not ok:
            raise UserError(f"spec key {key} = {v!r} is not allowed", f"{key} must be {self.allowed()}")
        return v


TOP: dict[str, Param] = {
    "name": Param("str", "of letters, digits, '-', '_' or '.'", lambda v: bool(re.fullmatch(r"[A-Za-z0-9._-]+", v)),
                  sweep=False),
    "description": Param("str", sweep=False, default=""),
    "dataset": Param("str", "naming a dataset (see `zoo.datasets.dataset_names()`)", lambda v: bool(v)),
    "data_seed": Param("int", ">= 0", lambda v: v >= 0, default=0, sweep=False),
    "epochs": Param("int", ">= 1", lambda v: v >= 1),
    "batch_size": Param("int", ">= 1", lambda v: v >= 1),
    "seeds": Param("int", ">= 0", lambda v: v >= 0, sweep=False),  # handled specially: N or a list
    "cohort_size": Param("int", ">= 1", lambda v: v >= 1, default=256, sweep=False),
}
SECTIONS = ("architecture", "optimizer", "schedule", "checkpoints", "sampling")
REQUIRED_TOP = ("name", "dataset", "epochs", "batch_size", "seeds", "architecture", "optimizer")

OPTIMIZER: dict[str, Param] = {
    "name": Param("str", choices=OPTIMIZERS, default="sgd"),
    "lr": Param("float", "> 0", lambda v: v > 0 and math.isfinite(v)),
    "momentum": Param("float", "in [0, 1)", lambda v: 0 <= v < 1, default=0.0, applies_to=("sgd",)),
    "weight_decay": Param("float", ">= 0", lambda v: v >= 0 and math.isfinite(v)),  # default: 0.01 for adamw, else 0
    "beta1": Param("float", "in [0, 1)", lambda v: 0 <= v < 1, default=0.9, applies_to=("adam", "adamw")),
    "beta2": Param("float", "in [0, 1)", lambda v: 0 <= v < 1, default=0.999, applies_to=("adam", "adamw")),
    "eps": Param("float", "> 0", lambda v: v > 0, default=1e-8, applies_to=("adam", "adamw")),
}
SCHEDULE: dict[str, Param] = {
    "name": Param("str", choices=SCHEDULES, default="constant"),
    "final_lr_fraction": Param("float", "in [0, 1]", lambda v: 0 <= v <= 1, default=0.0, applies_to=("cosine",)),
    "pct_start": Param("float", "in (0, 1)", lambda v: 0 < v < 1, default=0.3, applies_to=("onecycle",)),
    "div_factor": Param("float", ">= 1", lambda v: v >= 1, default=25.0, applies_to=("onecycle",)),
    "final_div_factor": Param("float", ">= 1", lambda v: v >= 1, default=1e4, applies_to=("onecycle",)),
}
CHECKPOINTS: dict[str, Param] = {
    "every": Param("int", ">= 1", lambda v: v >= 1, default=1, sweep=False),
    "epochs": Param("int", ">= 0", lambda v: v >= 0, sweep=False),  # an explicit list
}
SAMPLING: dict[str, Param] = {
    "method": Param("str", choices=SAMPLING_METHODS, default="grid", sweep=False),
    "num_samples": Param("int", ">= 1", lambda v: v >= 1, sweep=False),
    "seed": Param("int", ">= 0", lambda v: v >= 0, default=0, sweep=False),
}
SECTION_PARAMS: dict[str, dict[str, Param]] = {
    "optimizer": OPTIMIZER, "schedule": SCHEDULE, "checkpoints": CHECKPOINTS, "sampling": SAMPLING,
}


@dataclass(frozen=True)
class Distribution:
    """A random-sampling range: `{ log_uniform = [1e-3, 1e-1] }` and friends."""

    kind: str
    args: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "log_uniform":
            lo, hi = self.args
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if self.kind == "uniform":
            return float(rng.uniform(*self.args))
        if self.kind == "int_uniform":
            return int(rng.integers(self.args[0], self.args[1] + 1))
        return self.args[int(rng.integers(len(self.args)))]  # choice


@dataclass
class ZooSpec:
    """A validated spec. Sweepable values are lists (grid axes) or Distributions (random sampling)."""

    name: str
    description: str
    datasets: list[str]
    data_seed: int
    epochs: list[Any]
    batch_size: list[Any]
    seeds: list[int]
    architecture: dict[str, Any]  # key -> list of values | Distribution; "name" is fixed
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    checkpoint_every: int = 1
    checkpoint_epochs: list[int] | None = None
    sampling: str = "grid"
    num_samples: int | None = None
    sampling_seed: int = 0
    cohort_size: int = 256
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def num_configs(self) -> int:
        """Hyperparameter configurations (before seeds); for random sampling, the number drawn."""
        if self.sampling == "random":
            return int(self.num_samples)
        axes = [self.datasets, self.epochs, self.batch_size, *self.architecture.values(),
                *self.optimizer.values(), *self.schedule.values()]
        return math.prod(len(a) for a in axes if isinstance(a, list))

    @property
    def num_models(self) -> int:
        """How many models `expand` gives (random sampling: at most this many; duplicates merge)."""
        return self.num_configs * len(self.seeds)


# ----- parsing ----------------------------------------------------------------
def builtin_specs() -> dict[str, Path]:
    """Built-in spec names -> files (zoo/specs/*.toml)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def load_spec(path_or_name: str | Path | Mapping[str, Any] | ZooSpec) -> ZooSpec:
    """Parse and validate a spec from a file path, a built-in name, or a dict."""
    if isinstance(path_or_name, ZooSpec):
        return path_or_name
    if isinstance(path_or_name, Mapping):
        return parse_spec(dict(path_or_name), source="<dict>")
    p = Path(path_or_name)
    builtins = builtin_specs()
    if not p.is_file():
        if str(path_or_name) in builtins:
            p = builtins[str(path_or_name)]
        else:
            raise UserError(f"spec {str(path_or_name)!r} is neither a file nor a built-in spec",
                            f"give a .toml/.yaml path or one of: {', '.join(builtins)}")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is usually present
            raise UserError(f"spec {p} is YAML but PyYAML is not installed", "pip install pyyaml, or write TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"spec {p} is not valid YAML ({e})", "fix the syntax") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"spec {p} is not valid TOML ({e})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"spec {p} is not a table of keys", "see docs/zoo.md for the format")
    return parse_spec(data, source=str(p))


def _unknown(where: str, keys, allowed) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        label = f"[{where}] " if where else ""
        raise UserError(f"spec has unknown key{'s' if len(unknown) > 1 else ''} {label}{', '.join(unknown)}",
                        f"allowed keys{' in [' + where + ']' if where else ''}: {', '.join(sorted(allowed))}")


def _sweep(key: str, value: Any, param: Param | None, random_ok: bool, list_valued: bool = False) -> list | Distribution:
    """A spec value -> list of candidate values (a grid axis) or a Distribution; checks each value."""
    coerce = (lambda v: param.coerce(key, v)) if param is not None else (lambda v: _check_arch_value(key, v))
    if isinstance(value, Mapping):
        if param is not None and not param.sweep:
            raise UserError(f"spec key {key} cannot be sampled", f"give one {param.allowed()}")
        _unknown(key, value, DISTRIBUTIONS)
        if len(value) != 1:
            raise UserError(f"spec key {key} = {dict(value)!r} gives {len(value)} distributions",
                            f"give exactly one of: {', '.join(DISTRIBUTIONS)}")
        (kind, args), = value.items()
        if not random_ok:
            raise UserError(f"spec key {key} uses the distribution {kind!r} but [sampling] method is 'grid'",
                            "set [sampling] method = \"random\" and num_samples, or give a list of values")
        if not isinstance(args, list) or not args:
            raise UserError(f"spec key {key}.{kind} = {args!r} is not a non-empty list", f"write e.g. {key} = {{ {kind} = [a, b] }}")
        if kind == "choice":
            return Distribution(kind, tuple(coerce(v) for v in args))
        if len(args) != 2 or not all(_is_num(a) for a in args) or not args[0] <= args[1]:
            raise UserError(f"spec key {key}.{kind} = {args!r} is not a range [low, high]",
                            f"write e.g. {key} = {{ {kind} = [0.001, 0.1] }}")
        if kind == "int_uniform" and not all(_is_int(a) for a in args):
            raise UserError(f"spec key {key}.int_uniform = {args!r} has non-integer bounds", "give integer bounds")
        if kind == "log_uniform" and args[0] <= 0:
            raise UserError(f"spec key {key}.log_uniform = {args!r} has a bound <= 0", "give positive bounds")
        for a in args:  # both ends must be allowed values
            coerce(int(a) if kind == "int_uniform" else float(a) if param is None or param.kind == "float" else a)
        return Distribution(kind, tuple(args))
    is_sweep = isinstance(value, list) and (not list_valued or (value and all(isinstance(v, list) for v in value)))
    if is_sweep:
        if param is not None and not param.sweep:
            raise UserError(f"spec key {key} cannot be swept", f"give one {param.allowed()}")
        if not value:
            raise UserError(f"spec key {key} is an empty list (an empty grid trains nothing)",
                            "give at least one value" + (f" ({param.allowed()})" if param else ""))
        out = [coerce(v) for v in value]
        dup = [v for i, v in enumerate(out) if v in out[:i]]
        if dup:
            raise UserError(f"spec key {key} lists {dup[0]!r} twice", "list each value once")
        return out
    return [coerce(value)]


ARCH_FLOAT_KEYS = ("dropout", "w0")


def _check_arch_value(key: str, v: Any) -> Any:
    """Architecture values are validated by the builder; here only their JSON-able type."""
    if key.split(".")[-1] in ARCH_FLOAT_KEYS and _is_num(v):
        v = float(v)
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UserError(f"spec key {key} = {v!r} is not finite", "give a finite number")
        return v
    if isinstance(v, list) and all(_is_int(x) for x in v):
        return list(v)
    raise UserError(f"spec key {key} = {v!r} has an unsupported type", "give a number, a string, or a list of those to sweep")


def _as_list(key: str, v: Any) -> list:
    return v if isinstance(v, list) else [v]


def parse_spec(data: dict[str, Any], source: str = "<dict>") -> ZooSpec:
    """Validate a spec dict (as parsed from TOML); see the module docstring and docs/zoo.md."""
    _unknown("", data, set(TOP) | set(SECTIONS))
    missing = [k for k in REQUIRED_TOP if k not in data]
    if missing:
        raise UserError(f"spec {source} is missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                        "see docs/zoo.md for the format (built-in examples: `wsl zoo specs`)")
    for sec in SECTIONS:
        if sec in data and not isinstance(data[sec], Mapping):
            raise UserError(f"spec key {sec} must be a table ([{sec}])", f"write [{sec}] followed by its keys")

    sampling = dict(data.get("sampling", {}))
    _unknown("sampling", sampling, SAMPLING)
    method = SAMPLING["method"].coerce("sampling.method", sampling.get("method", "grid"))
    num_samples = None
    if method == "random":
        if "num_samples" not in sampling:
            raise UserError("spec has [sampling] method = \"random\" without num_samples", "give num_samples = N (N >= 1)")
        num_samples = SAMPLING["num_samples"].coerce("sampling.num_samples", sampling["num_samples"])
    elif "num_samples" in sampling:
        raise UserError("spec key sampling.num_samples is only used with method = \"random\"",
                        "remove it, or set [sampling] method = \"random\"")
    sampling_seed = SAMPLING["seed"].coerce("sampling.seed", sampling.get("seed", 0))
    rnd = method == "random"

    name = TOP["name"].coerce("name", data["name"])
    description = TOP["description"].coerce("description", data.get("description", ""))
    datasets_raw = _sweep("dataset", data["dataset"], TOP["dataset"], rnd)
    datasets = _expand_dataset_patterns(datasets_raw)
    data_seed = TOP["data_seed"].coerce("data_seed", data.get("data_seed", 0))
    epochs = _sweep("epochs", data["epochs"], TOP["epochs"], rnd)
    batch_size = _sweep("batch_size", data["batch_size"], TOP["batch_size"], rnd)
    cohort_size = TOP["cohort_size"].coerce("cohort_size", data.get("cohort_size", 256))

    seeds_raw = data["seeds"]
    if _is_int(seeds_raw):
        if seeds_raw < 1:
            raise UserError(f"spec key seeds = {seeds_raw} trains no model", "give seeds = N (N >= 1) or a list of seeds")
        seeds = list(range(seeds_raw))
    elif isinstance(seeds_raw, list):
        if not seeds_raw:
            raise UserError("spec key seeds is an empty list (an empty grid trains nothing)", "give at least one seed")
        seeds = [TOP["seeds"].coerce("seeds", s) for s in seeds_raw]
        if len(set(seeds)) != len(seeds):
            raise UserError(f"spec key seeds = {seeds_raw} lists a seed twice", "list each seed once")
    else:
        raise UserError(f"spec key seeds = {seeds_raw!r} is not allowed",
                        "seeds must be an integer N >= 1 (seeds 0..N-1) or a list of integers >= 0")

    # [architecture]: "name" fixed; other keys go to the architecture's builder, which checks them
    arch_raw = dict(data["architecture"])
    from zoo.architectures import REGISTRY, is_builtin, known

    if "name" not in arch_raw:
        raise UserError("spec [architecture] has no name", f"architecture.name must be one of: {', '.join(REGISTRY)}")
    if not known(arch_raw["name"]):
        raise UserError(f"spec key architecture.name = {arch_raw['name']!r} is not allowed",
                        f"architecture.name must be one of: {', '.join(REGISTRY)} (or a name registered with "
                        "wsl.register_architecture)")
    if is_builtin(arch_raw["name"]):
        _unknown("architecture", arch_raw, _architecture_keys(arch_raw["name"]) | {"name"})
    if arch_raw["name"] == "module":
        _trust_module_path(arch_raw)
    architecture: dict[str, Any] = {"name": arch_raw.pop("name")}
    for k, v in arch_raw.items():
        architecture[k] = _sweep(f"architecture.{k}", v, None, rnd, list_valued=k in LIST_VALUED_ARCH_KEYS)

    optimizer = _section("optimizer", dict(data["optimizer"]), OPTIMIZER, rnd, required=("lr",))
    schedule = _section("schedule", dict(data.get("schedule", {})), SCHEDULE, rnd, required=())

    ck = dict(data.get("checkpoints", {}))
    _unknown("checkpoints", ck, CHECKPOINTS)
    every = CHECKPOINTS["every"].coerce("checkpoints.every", ck.get("every", 1))
    ck_epochs = None
    if "epochs" in ck:
        if not isinstance(ck["epochs"], list) or not ck["epochs"]:
            raise UserError(f"spec key checkpoints.epochs = {ck['epochs']!r} is not a non-empty list",
                            "give e.g. checkpoints.epochs = [0, 1, 5, 10]")
        ck_epochs = sorted({CHECKPOINTS["epochs"].coerce("checkpoints.epochs", e) for e in ck["epochs"]})
        top_epochs = epochs if isinstance(epochs, list) else [epochs.args[0]]
        over = [e for e in ck_epochs if e > min(top_epochs)]
        if over:
            raise UserError(f"spec key checkpoints.epochs lists epoch {over[0]} but training runs {min(top_epochs)} epochs",
                            f"give epochs in 0..{min(top_epochs)}")

    return ZooSpec(name=name, description=description, datasets=datasets, data_seed=data_seed, epochs=epochs,
                   batch_size=batch_size, seeds=seeds, architecture=architecture, optimizer=optimizer,
                   schedule=schedule, checkpoint_every=every, checkpoint_epochs=ck_epochs, sampling=method,
                   num_samples=num_samples, sampling_seed=sampling_seed, cohort_size=cohort_size, source=source,
                   raw=data)


def _section(sec: str, raw: dict, params: dict[str, Param], rnd: bool, required: tuple[str, ...]) -> dict:
    _unknown(sec, raw, params)
    missing = [k for k in required if k not in raw]
    if missing:
        raise UserError(f"spec [{sec}] is missing {', '.join(missing)}",
                        f"give {', '.join(f'{sec}.{k} ({params[k].allowed()})' for k in missing)}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        out[k] = _sweep(f"{sec}.{k}", v, params[k], rnd)
    names = out.get("name", [params["name"].default])
    names_set = set(names.args if isinstance(names, Distribution) else names)
    for k in out:
        p = params[k]
        if p.applies_to and not names_set & set(p.applies_to):
            raise UserError(f"spec key {sec}.{k} is not used by {sec} {', '.join(sorted(names_set))}",
                            f"{sec}.{k} applies to {', '.join(p.applies_to)}; remove it or change {sec}.name")
    return out


def _trust_module_path(arch: Mapping[str, Any]) -> None:
    """A spec naming code to import: the user passed it, so its path is code they chose to run."""
    from store.architectures import trust_code

    path = arch.get("path")
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise UserError(f"spec key architecture.path = {path!r} is not allowed",
                        "architecture.path must be one \"package.module:builder\" string (a class or a function "
                        "returning an nn.Module)")
    trust_code(path)


def _architecture_keys(name: str) -> set[str]:
    """The keys an architecture's builder accepts (read from the builder's error on an unknown key)."""
    from zoo.architectures import REGISTRY

    probe = "__probe_unknown_key__"
    try:
        REGISTRY[name]({"name": name, probe: 0})
    except UserError as e:
        if e.fix and e.fix.startswith("allowed keys:"):
            return {k.strip() for k in e.fix.split(":", 1)[1].split(",")}
    return set()  # pragma: no cover - every builder validates its keys


def _expand_dataset_patterns(values: list | Distribution) -> list | Distribution:
    """`BASE-pair:*` -> the 45 class-pair tasks of BASE, `BASE-subset:*` -> its 1,022 subset tasks."""
    if isinstance(values, Distribution):
        return values
    from zoo.datasets import expand_pattern

    out: list[str] = []
    for v in values:
        out.extend(expand_pattern(v))
    return list(dict.fromkeys(out))


# ----- expansion ----------------------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_id_for(zoo: str, hparams: Mapping[str, Any], seed: int) -> str:
    """Deterministic id: hash of the zoo name, every hyperparameter, and the seed."""
    return hashlib.sha256(_canonical({"zoo": zoo, "hparams": hparams, "seed": int(seed)}).encode()).hexdigest()[:16]


def _configs(spec: ZooSpec) -> list[dict[str, Any]]:
    """Hyperparameter configurations (dotted keys -> one value each), before seeds."""
    axes: dict[str, Any] = {"dataset": spec.datasets, "epochs": spec.epochs, "batch_size": spec.batch_size}
    axes.update({f"architecture.{k}": v for k, v in spec.architecture.items() if k != "name"})
    axes.update({f"optimizer.{k}": v for k, v in spec.optimizer.items()})
    axes.update({f"schedule.{k}": v for k, v in spec.schedule.items()})
    keys = list(axes)
    if spec.sampling == "grid":
        return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]
    out = []
    for i in range(spec.num_samples):
        rng = np.random.default_rng([spec.sampling_seed, i])
        cfg = {}
        for k in keys:  # fixed key order: each key's draw depends only on (sampling seed, sample index)
            v = axes[k]
            cfg[k] = v.sample(rng) if isinstance(v, Distribution) else v[int(rng.integers(len(v)))]
        out.append(cfg)
    return out


def _optimizer_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    name = cfg.get("optimizer.name", "sgd")
    out = {"name": name, "lr": float(cfg["optimizer.lr"]),
           "weight_decay": float(cfg.get("optimizer.weight_decay", 0.01 if name == "adamw" else 0.0))}
    for k, p in OPTIMIZER.items():
        if p.applies_to and name in p.applies_to:
            out[k] = float(cfg.get(f"optimizer.{k}", p.default))
    return out


def _schedule_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    name = cfg.get("schedule.name", "constant")
    out: dict[str, Any] = {"name": name}
    for k, p in SCHEDULE.items():
        if p.applies_to and name in p.applies_to:
            out[k] = float(cfg.get(f"schedule.{k}", p.default))
    return out


def checkpoint_epochs(spec: ZooSpec, epochs: int) -> list[int]:
    """Epochs that get a checkpoint: the explicit list, else every k epochs; epoch 0 and the last always."""
    if spec.checkpoint_epochs is not None:
        return sorted(set(spec.checkpoint_epochs) | {epochs})
    return sorted(set(range(0, epochs + 1, spec.checkpoint_every)) | {0, epochs})


MODEL_EXTRA_OPT = ("beta1", "beta2", "eps")
MODEL_EXTRA_SCHED = ("final_lr_fraction", "pct_start", "div_factor", "final_div_factor")


def expand(spec: ZooSpec | str | Path | Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model (the `models` table's columns, status None until trained).

    Loads each dataset (to fill sizes, `dataset_id` and the layout) and checks
    what needs the data: a batch size larger than a training split is an error.
    """
    from store.layout import ParamLayout
    from zoo.architectures import build, check_fits, config_for, is_builtin
    from zoo.datasets import load_dataset

    spec = load_spec(spec)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    arch_cache: dict[str, tuple[dict, ParamLayout]] = {}
    for cfg in _configs(spec):
        ds = load_dataset(cfg["dataset"], spec.data_seed)
        n_train = len(ds.x_train)
        bs = int(cfg["batch_size"])
        if bs > n_train:
            raise UserError(f"spec key batch_size = {bs} is larger than dataset {ds.name!r} ({n_train} training samples)",
                            f"use batch_size <= {n_train}")
        arch_user = {"name": spec.architecture["name"],
                     **{k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith("architecture.")}}
        key = _canonical([arch_user, list(ds.input_shape), ds.output_dim])
        if key not in arch_cache:
            try:
                module = build(config_for(ds, arch_user))  # arch_config: the full config, defaults filled in
                layout = ParamLayout.from_module(module, getattr(module, "arch_config", arch_user))
                if not is_builtin(arch_user["name"]):  # a user's module: does it take this dataset?
                    check_fits(module, ds, f"architecture {arch_user['name']!r} ({arch_user.get('path', '')})")
            except UserError as e:
                raise UserError(f"spec [architecture] {e.message}", e.fix) from None
            arch_cache[key] = (layout.arch, layout)
        arch, layout = arch_cache[key]
        if layout.num_buffers and n_train % bs == 1:
            raise UserError(f"spec key batch_size = {bs} leaves a last batch of 1 sample of dataset {ds.name!r} "
                            f"({n_train} training samples), and BatchNorm's batch statistics need 2 or more",
                            "pick a batch size that does not leave one sample over")
        opt = _optimizer_config(cfg)
        sched = _schedule_config(cfg)
        epochs = int(cfg["epochs"])
        hparams = {"dataset": ds.name, "data_seed": spec.data_seed, "architecture": arch, "optimizer": opt,
                   "schedule": sched, "batch_size": bs, "epochs": epochs}
        for seed in spec.seeds:
            mid = model_id_for(spec.name, hparams, seed)
            if mid in seen:  # random sampling can draw one configuration twice
                continue
            seen.add(mid)
            row = {
                "model_id": mid, "zoo": spec.name, "architecture": arch["name"], "arch_config": _canonical(arch),
                "layout_id": layout.layout_id, "dataset": ds.name, "dataset_id": ds.dataset_id, "task": ds.task,
                "width": arch.get("width"), "depth": arch.get("depth"), "optimizer": opt["name"], "lr": opt["lr"],
                "momentum": opt.get("momentum"), "weight_decay": opt["weight_decay"], "batch_size": bs,
                "epochs": epochs, "schedule": sched["name"], "seed": int(seed), "status": None,
                "hparams": _canonical({**hparams, "seed": int(seed)}),
            }
            for k in MODEL_EXTRA_OPT:
                row[k] = opt.get(k)
            for k in MODEL_EXTRA_SCHED:
                row[k] = sched.get(k)
            for k, v in arch.items():  # every architecture knob in its own column
                if k not in ("name", "width", "depth"):
                    row[k] = _canonical(v) if isinstance(v, (list, dict)) else v
            row.update({"data_seed": spec.data_seed, "n_train": n_train,
                        "steps_per_epoch": math.ceil(n_train / bs),
                        "checkpoint_epochs": _canonical(checkpoint_epochs(spec, epochs)),
                        "diverged_epoch": None})
            rows.append(row)
    return rows
