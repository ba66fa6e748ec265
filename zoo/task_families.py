"""Task families: one base dataset's arrays -> a derived task (what `BASE-KIND:ARG` names mean).

    pair:A-B      classes A vs B only, label 1 = B
    subset:CODE   every sample; CODE in 1..1022 is a 10-bit class mask, label 1 = class in the subset
    perm:K        labels permuted by permutation number K
    noise:S       Gaussian input noise of std S (fixed per dataset)
    shift:D       inputs rolled by D (pixels right and down for images)
    rot:DEG       images rotated by DEG degrees

Each family is a function (base, arg, x, y) -> (x, y, num_classes, meta), and `ARG_CHECKS`
holds its argument check alone, so `zoo.datasets.check_name` validates a name without
building any data. zoo/datasets.py registers the families and builds the splits.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from store.errors import UserError

IMAGE_BASES = ("digits",)  # [N, 1, H, W]; mnist1d is [N, 1, 40]


def _pair_classes(base: str, arg: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)-(\d+)", arg)
    if not m:
        raise UserError(f"class pair {arg!r} is not of the form A-B", f"write e.g. {base}-pair:3-5")
    a, b = int(m.group(1)), int(m.group(2))
    if not (0 <= a <= 9 and 0 <= b <= 9) or a == b:
        raise UserError(f"class pair {a}-{b} of {base} is out of range", "use two different classes in 0..9")
    return a, b


def _pair(base: str, arg: str, x, y):
    a, b = _pair_classes(base, arg)
    keep = (y == a) | (y == b)
    return x[keep], (y[keep] == b).astype(np.int64), 2, {"classes": [a, b]}


NUM_CLASSES = 10  # of every base dataset
SUBSET_CODES = range(1, 2 ** NUM_CLASSES - 1)  # 1..1022: the empty and the full subset have one label only


def subset_code(base: str, arg: str) -> int:
    """The class-subset code of `BASE-subset:ARG`, checked: a decimal integer in 1..1022, no sign or leading 0.

    A canonical spelling only, so one task has one name (`digits-subset:007` would be a second
    name, and a second set of zoo rows, for `digits-subset:7`).
    """
    lo, hi = SUBSET_CODES[0], SUBSET_CODES[-1]
    if not re.fullmatch(r"[1-9]\d*", arg):
        raise UserError(f"{base}-subset:{arg} is not a subset code: CODE is a decimal integer in {lo}..{hi} "
                        "(a 10-bit class mask, bit c set = class c in the subset)",
                        f"write e.g. {base}-subset:5 (classes 0 and 2)")
    code = int(arg)
    if code not in SUBSET_CODES:
        raise UserError(f"{base}-subset:{arg} is out of range: CODE must be in {lo}..{hi} "
                        f"(0 and {hi + 1} would give every sample the same label)",
                        f"use a code in {lo}..{hi}")
    return code


def subset_classes(code: int) -> list[int]:
    """The classes whose bit is set in a subset code (bit c = class c), ascending."""
    return [c for c in range(NUM_CLASSES) if (code >> c) & 1]


def _subset(base: str, arg: str, x, y):
    code = subset_code(base, arg)
    labels = ((code >> y) & 1).astype(np.int64)  # bit y of the code: 1 when the sample's class is in the subset
    return x, labels, 2, {"code": code, "classes": subset_classes(code)}


def _perm(base: str, arg: str, x, y):
    k = _int_arg(base, "perm", arg)
    perm = np.random.default_rng(10_000 + k).permutation(10)
    return x, perm[y], 10, {"permutation": perm.tolist()}


def _noise_std(base: str, arg: str) -> float:
    s = _float_arg(base, "noise", arg)
    if s < 0:
        raise UserError(f"{base}-noise:{arg} has a negative std", "use a std >= 0")
    return s


def _noise(base: str, arg: str, x, y):
    s = _noise_std(base, arg)
    rng = np.random.default_rng(20_000)
    return (x + s * rng.standard_normal(x.shape).astype(np.float32)), y, 10, {"noise_std": s}


def _shift(base: str, arg: str, x, y):
    d = _int_arg(base, "shift", arg)
    axes = (-2, -1) if x.ndim == 4 else (-1,)
    return np.roll(x, (d,) * len(axes), axis=axes), y, 10, {"shift": d}


def _rot_degrees(base: str, arg: str) -> float:
    if base not in IMAGE_BASES:
        raise UserError(f"{base}-rot rotates images; {base} is not an image dataset", "use -noise or -shift")
    return _float_arg(base, "rot", arg)


def _rot(base: str, arg: str, x, y):
    deg = _rot_degrees(base, arg)
    from scipy.ndimage import rotate

    xr = rotate(x, deg, axes=(-2, -1), reshape=False, order=1, mode="constant").astype(np.float32)
    return xr, y, 10, {"rotation_deg": deg}


TRANSFORMS = {"pair": _pair, "subset": _subset, "perm": _perm, "noise": _noise, "shift": _shift, "rot": _rot}
# each transform's argument check alone (what check_name runs without building the data)
ARG_CHECKS: dict[str, Callable[[str, str], Any]] = {
    "pair": _pair_classes, "subset": subset_code, "perm": lambda b, a: _int_arg(b, "perm", a),
    "noise": _noise_std, "shift": lambda b, a: _int_arg(b, "shift", a), "rot": _rot_degrees}


def _int_arg(base: str, kind: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise UserError(f"{base}-{kind}:{arg} needs an integer argument", f"write e.g. {base}-{kind}:3") from None


def _float_arg(base: str, kind: str, arg: str) -> float:
    try:
        return float(arg)
    except ValueError:
        raise UserError(f"{base}-{kind}:{arg} needs a number", f"write e.g. {base}-{kind}:0.5") from None
