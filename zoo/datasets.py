"""Dataset registry: a name -> a deterministic train/test split for a seed.

Names (all offline; nothing is downloaded):

    digits                    scikit-learn's UCI digits, [1, 8, 8], 10 classes
    mnist1d                   MNIST-1D (Greydanus 2020) from mnist1d.make_dataset, [1, 40], 10 classes
    digits-pair:A-B           binary task: classes A vs B (45 pairs from 10 classes), labels 0/1
    digits-subset:CODE        binary task over ALL samples: CODE in 1..1022 is a 10-bit class mask
                              (bit c set = class c in the subset), label 1 = the class is in it (RPG's tasks)
    digits-perm:K             labels permuted by permutation number K
    digits-noise:S            Gaussian input noise of std S (fixed per dataset)
    digits-shift:D            images rolled by D pixels right and down
    digits-rot:DEG            images rotated by DEG degrees
    mnist1d-pair:A-B, mnist1d-subset:CODE, mnist1d-perm:K, mnist1d-noise:S, mnist1d-shift:D
                              the same for MNIST-1D
    sciml:FAMILY[:k=v,...]    function fitting (regression) from a formula, see SCIML_FAMILIES
    hf:NAME[:CONFIG]          a Hugging Face `datasets` dataset (local cache or online)
    parquet:PATH              a local Parquet file with a label column

`load_dataset(name, seed=0)` returns a `wsl.data.Dataset`; `dataset_id` is a
content hash, stable across processes. `check_name(name)` raises the error a
malformed name would raise, without building any data. `pair_tasks(base)` and
`subset_tasks(base)` list a task family; `expand_pattern("digits-subset:*")`
is what a spec's `dataset` pattern stands for. The families themselves (what
`-pair`, `-subset`, `-perm`, ... do to a base dataset) live in zoo/task_families.py.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from store.errors import UserError
from wsl.data import Dataset
from zoo.task_families import (ARG_CHECKS, NUM_CLASSES, SUBSET_CODES, TRANSFORMS,  # noqa: F401 - re-exported
                               subset_classes, subset_code)

TEST_FRACTION = 0.2


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION):
    """Deterministic shuffled split; the same seed always gives the same rows."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _classification(name: str, x: np.ndarray, y: np.ndarray, seed: int, num_classes: int, meta: dict) -> Dataset:
    xtr, ytr, xte, yte = _split(x, y, seed)
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
    return Dataset(name, t(xtr, torch.float32), t(ytr, torch.int64), t(xte, torch.float32), t(yte, torch.int64),
                   "classification", num_classes, seed, meta)


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # [1797, 1, 8, 8] in [0, 1]
    return x, d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-sample MNIST-1D set generated locally (never downloaded), [N, 1, 40]."""
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset seeds numpy's global RNG; leave the caller's untouched
    try:
        args = get_dataset_args()
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return x, y


BASES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"digits": _digits_arrays, "mnist1d": _mnist1d_arrays}


# ----- SciML: function fitting from formulas -------------------------------
# Each family: (input dim, defaults, f(x: [n, d], params) -> [n]).
SCIML_FAMILIES: dict[str, tuple[int, dict[str, float], Callable[[np.ndarray, dict], np.ndarray]]] = {
    "sine": (1, {"freq": 2.0, "phase": 0.0, "amp": 1.0},
             lambda x, p: p["amp"] * np.sin(2 * np.pi * p["freq"] * x[:, 0] + p["phase"])),
    "damped": (1, {"freq": 3.0, "decay": 2.0},
               lambda x, p: np.exp(-p["decay"] * np.abs(x[:, 0])) * np.cos(2 * np.pi * p["freq"] * x[:, 0])),
    "poly": (1, {"a0": 0.0, "a1": 1.0, "a2": 0.0, "a3": -1.0},
             lambda x, p: p["a0"] + p["a1"] * x[:, 0] + p["a2"] * x[:, 0] ** 2 + p["a3"] * x[:, 0] ** 3),
    "gauss2d": (2, {"cx": 0.0, "cy": 0.0, "sigma": 0.4},
                lambda x, p: np.exp(-((x[:, 0] - p["cx"]) ** 2 + (x[:, 1] - p["cy"]) ** 2) / (2 * p["sigma"] ** 2))),
    "wave2d": (2, {"kx": 1.0, "ky": 2.0},
               lambda x, p: np.sin(np.pi * p["kx"] * x[:, 0]) * np.sin(np.pi * p["ky"] * x[:, 1])),
}
SCIML_POINTS = 512


def _sciml_params(spec: str) -> tuple[str, dict[str, float]]:
    """(family, parameters with defaults filled in) of `sciml:FAMILY[:k=v,...]`, checked."""
    family, _, params = spec.partition(":")
    if family not in SCIML_FAMILIES:
        raise UserError(f"unknown sciml family {family!r}", f"use one of: {', '.join(SCIML_FAMILIES)}")
    _dim, defaults, _fn = SCIML_FAMILIES[family]
    p = dict(defaults)
    for item in filter(None, params.split(",")):
        k, eq, v = item.partition("=")
        if not eq or k not in defaults:
            raise UserError(f"sciml:{family} parameter {item!r} is not k=v with k in {sorted(defaults)}",
                            f"write e.g. sciml:{family}:{next(iter(defaults))}=1.5")
        try:
            p[k] = float(v)
        except ValueError:
            raise UserError(f"sciml:{family} parameter {k}={v!r} is not a number", "give a number") from None
    if family == "gauss2d" and p["sigma"] <= 0:
        raise UserError("sciml:gauss2d needs sigma > 0", "give sigma=0.3 or similar")
    return family, p


def _sciml(spec: str, seed: int, name: str) -> Dataset:
    family, p = _sciml_params(spec)
    dim, _defaults, fn = SCIML_FAMILIES[family]
    # inputs on a fixed grid in [-1, 1]^d (a function-fitting task is defined by its formula, not a sample)
    side = SCIML_POINTS if dim == 1 else int(math.sqrt(SCIML_POINTS))
    axis = np.linspace(-1, 1, side, dtype=np.float32)
    x = axis[:, None] if dim == 1 else np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    y = fn(x.astype(np.float64), p).astype(np.float32)[:, None]
    xtr, ytr, xte, yte = _split(x, y, seed)
    return Dataset(name, torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
                   "regression", 0, seed, {"family": family, "params": p})


# ----- Hugging Face datasets and local Parquet ------------------------------
LABEL_COLUMNS = ("label", "labels", "target", "y", "class")


def from_table(name: str, table, seed: int = 0, label: str | None = None) -> Dataset:
    """A classification dataset from a `datasets.Dataset` or a pandas DataFrame.

    Image columns (PIL images or nested arrays) become [C, H, W] floats in [0, 1];
    otherwise every numeric column except the label is a feature.
    """
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        try:
            table = table.to_pandas()
        except Exception as e:  # noqa: BLE001 - any adapter failure is the user's input
            raise UserError(f"dataset {name!r} cannot be converted to a table ({e})",
                            "pass an image or tabular classification dataset") from None
    cols = list(table.columns)
    label = label or next((c for c in LABEL_COLUMNS if c in cols), None)
    if label is None:
        raise UserError(f"dataset {name!r} has no label column (columns: {cols})",
                        f"name one of {list(LABEL_COLUMNS)} or pass label=")
    y_raw = table[label]
    classes = sorted(pd.unique(y_raw).tolist())
    y = np.array([classes.index(v) for v in y_raw], dtype=np.int64)
    feats = [c for c in cols if c != label]
    image_col = next((c for c in feats if c in ("image", "img", "pixels")), None)
    if image_col is not None:
        x = np.stack([_to_image_array(v) for v in table[image_col]]).astype(np.float32)
    else:
        numeric = [c for c in feats if pd.api.types.is_numeric_dtype(table[c])]
        if not numeric:
            raise UserError(f"dataset {name!r} has no image column and no numeric feature columns",
                            "give an 'image' column or numeric features")
        x = table[numeric].to_numpy(dtype=np.float32)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x = (x - mu) / sd
    return _classification(name, x, y, seed, len(classes), {"label_column": label, "classes": [str(c) for c in classes]})


def _to_image_array(v: Any) -> np.ndarray:
    if isinstance(v, dict) and "bytes" in v:  # an Image feature read without decoding
        import io

        from PIL import Image

        v = Image.open(io.BytesIO(v["bytes"]))
    if isinstance(v, np.ndarray) and v.dtype == object:  # nested lists read back through pandas
        v = np.stack([np.asarray(r, dtype=np.float32) for r in v])
    a = np.asarray(v, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)
    return a / 255.0 if a.max() > 1.0 else a


def _hf(spec: str, seed: int, name: str) -> Dataset:
    hf_name, _, config = spec.partition(":")
    try:
        import datasets as hfds

        d = hfds.load_dataset(hf_name, config or None)
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad config: all user-facing
        raise UserError(f"Hugging Face dataset {spec!r} cannot be loaded ({type(e).__name__}: {str(e)[:200]})",
                        "check the name and your network or HF cache, or export it to Parquet and use parquet:PATH") from None
    if hasattr(d, "keys"):
        import datasets as hfds

        d = hfds.concatenate_datasets([d[k] for k in d.keys()])
    return from_table(name, d, seed)


def _parquet(path: str, seed: int, name: str) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"parquet file {path!r} does not exist", "give the path of a local .parquet file")
    import pandas as pd

    try:
        df = pd.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path!r} is not a readable Parquet file ({e})", "give a valid Parquet file") from None
    return from_table(name, df, seed)


# ----- the registry ---------------------------------------------------------
def dataset_names() -> list[str]:
    """Built-in names and name patterns, for help texts."""
    return ["digits", "mnist1d", "digits-pair:A-B", "digits-subset:CODE", "digits-perm:K", "digits-noise:S",
            "digits-shift:D", "digits-rot:DEG", "mnist1d-pair:A-B", "mnist1d-subset:CODE", "mnist1d-perm:K",
            "mnist1d-noise:S", "mnist1d-shift:D",
            "sciml:" + "|".join(SCIML_FAMILIES) + "[:k=v,...]", "hf:NAME[:CONFIG]", "parquet:PATH"]


def _check_base(base: str) -> None:
    if base not in BASES:
        raise UserError(f"unknown base dataset {base!r}", f"use one of: {', '.join(BASES)}")


def pair_tasks(base: str = "digits") -> list[str]:
    """The 45 binary class-pair task names of a 10-class base dataset."""
    _check_base(base)
    return [f"{base}-pair:{a}-{b}" for a in range(NUM_CLASSES) for b in range(a + 1, NUM_CLASSES)]


def subset_tasks(base: str = "digits") -> list[str]:
    """The 1,022 class-subset task names of a 10-class base dataset, by code (1..1022)."""
    _check_base(base)
    return [f"{base}-subset:{code}" for code in SUBSET_CODES]


FAMILY_LISTS: dict[str, Callable[[str], list[str]]] = {"pair": pair_tasks, "subset": subset_tasks}


def expand_pattern(name: str) -> list[str]:
    """`BASE-pair:*` -> the 45 pair tasks, `BASE-subset:*` -> the 1,022 subset tasks; any other name -> [name]."""
    m = re.fullmatch(r"(\w+)-(\w+):\*", name)
    if m and m.group(2) in FAMILY_LISTS:
        return FAMILY_LISTS[m.group(2)](m.group(1))
    return [name]


def check_name(name: str) -> None:
    """Raise the UserError `load_dataset(name)` would raise for a malformed name, without building any data.

    Built-in families are checked completely (base, transform, argument); `hf:` names only for a
    non-empty name (whether the Hub has it is known only by loading it) and `parquet:` paths for
    an existing file.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is empty", f"use one of: {', '.join(dataset_names())}")
    kind, colon, rest = name.partition(":")
    if kind == "sciml":
        _sciml_params(rest)
        return
    if kind in ("hf", "parquet"):
        if not rest:
            raise UserError(f"dataset {name!r} names nothing after '{kind}:'", f"write e.g. {kind}:NAME")
        if kind == "parquet" and not Path(rest).is_file():
            raise UserError(f"parquet file {rest!r} does not exist", "give the path of a local .parquet file")
        return
    base, dash, transform = kind.partition("-")
    if base not in BASES or (dash and transform not in TRANSFORMS) or (not dash and colon):
        raise UserError(f"unknown dataset {name!r}", f"use one of: {', '.join(dataset_names())}")
    if dash and not rest:
        raise UserError(f"dataset {name!r} needs an argument after ':'", f"write e.g. {base}-{transform}:1")
    if dash:
        ARG_CHECKS[transform](base, rest)


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Build the named dataset with a deterministic split for `seed`."""
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is empty", f"use one of: {', '.join(dataset_names())}")
    return _load_cached(name, int(seed))


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, seed: int) -> Dataset:
    kind, colon, rest = name.partition(":")
    if kind == "sciml":
        return _sciml(rest, seed, name)
    if kind == "hf":
        return _hf(rest, seed, name)
    if kind == "parquet":
        return _parquet(rest, seed, name)
    check_name(name)
    base, dash, transform = kind.partition("-")
    x, y = BASES[base]()
    if not dash:
        return _classification(name, x, y, seed, NUM_CLASSES, {"base": base})
    x, y, k, meta = TRANSFORMS[transform](base, rest, x, y)
    return _classification(name, x, y, seed, k, {"base": base, "transform": transform, **meta})
