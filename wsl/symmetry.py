"""Which permutations of hidden units leave a network's function unchanged: one rule per architecture.

A `PermutationSpec` names the unit groups of a layout (each group one
permutation) and, for every tensor, which group acts on which axis. The rules:

- mlp, siren: each hidden Linear layer's units (rows of its weight and bias,
  columns of the next weight).
- cnn2d, cnn1d: each conv's output channels (its kernel's rows, its bias,
  with BatchNorm the norm's weight, bias, running mean and running var; the
  next conv's input channels; for the last conv, each channel's spatial block
  of the flattened features the fc / head reads), and cnn2d's hidden fc layer.
- resnet, resnet1d (and a 'module' architecture declaring symmetry =
  "resnet": torchvision's ResNet names): every residual stream is ONE group,
  because the identity shortcut adds unit j of a block's input to unit j of
  its output: the stem conv and BN, every block's last conv and BN, and the
  downsample conv and BN that start a new stream at a stage boundary all share
  the stream's permutation (the block's inputs are read with it; fc's columns
  too). Each block's inner convs (conv1 .. conv{K-1} with their BNs) are groups
  of their own.

A permutation `perm` of a group maps position j to the other model's unit
perm[j] (new = old[perm]). `num_batches_tracked` is per layer, not per unit:
no group acts on it. For a 'module' layout the rule is checked against every
tensor name and shape; a tensor the rule does not account for is an error
(an unknown tensor could break the function if left unpermuted).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from store.errors import UserError
from store.layout import ParamLayout
from wsl.functional import full_config

__all__ = ["PermutationSpec", "permutation_spec", "ALIGNABLE"]

ALIGNABLE = ("mlp", "siren", "cnn2d", "cnn1d", "resnet", "resnet1d")
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


@dataclass
class PermutationSpec:
    """groups: name -> size. axes: param name -> per axis (group or None, block).

    `block` is how many consecutive indices one unit occupies along that axis
    (1, or H*W where a conv's channels are flattened into a Linear's inputs).
    """

    groups: dict[str, int]
    axes: dict[str, tuple[tuple[str | None, int], ...]]
    occurrences: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)

    def __post_init__(self):
        occ: dict[str, list[tuple[str, int, int]]] = {g: [] for g in self.groups}
        for name, per_axis in self.axes.items():
            for axis, (g, block) in enumerate(per_axis):
                if g is not None:
                    occ[g].append((name, axis, block))
        self.occurrences = occ


class _Builder:
    def __init__(self, layout: ParamLayout):
        self.shapes = {e.name: e.shape for e in layout.entries}
        self.axes: dict[str, list[tuple[str | None, int]]] = {n: [(None, 1)] * len(s) for n, s in self.shapes.items()}
        self.groups: dict[str, int] = {}
        self.touched: set[str] = set()

    def group(self, g: str, size: int) -> str:
        self.groups[g] = int(size)
        return g

    def set(self, name: str, axis: int, g: str, block: int = 1) -> None:
        if name not in self.shapes:
            return
        size = self.shapes[name][axis] if axis < len(self.shapes[name]) else None
        if size != self.groups[g] * block:
            raise UserError(f"tensor {name!r} has {size} entries on axis {axis} where the permutation rule expects "
                            f"{self.groups[g] * block} (group {g!r})",
                            "this layout does not have the structure its symmetry rule assumes; align it by hand")
        self.axes[name][axis] = (g, block)
        self.touched.add(name)

    def units(self, prefix: str, g: str) -> None:
        """A conv / Linear `prefix` whose outputs are group g's units: its weight rows and bias."""
        self.set(prefix + ".weight", 0, g)
        self.set(prefix + ".bias", 0, g)

    def norm(self, prefix: str, g: str) -> None:
        for leaf in _BN_LEAVES:
            self.set(f"{prefix}.{leaf}", 0, g)
        self.touched.add(prefix + ".num_batches_tracked")

    def spec(self) -> PermutationSpec:
        return PermutationSpec(self.groups, {n: tuple(a) for n, a in self.axes.items()})


def _dense(b: _Builder) -> None:
    L = sum(1 for n in b.shapes if n.endswith(".weight"))
    for i in range(L - 1):
        g = b.group(f"layers.{i}", b.shapes[f"layers.{i}.weight"][0])
        b.units(f"layers.{i}", g)
        b.set(f"layers.{i + 1}.weight", 1, g)


def _cnn(b: _Builder) -> None:
    shapes = b.shapes
    n_conv = sum(1 for n in shapes if re.fullmatch(r"convs\.\d+\.weight", n))
    for i in range(n_conv):
        g = b.group(f"convs.{i}", shapes[f"convs.{i}.weight"][0])
        b.units(f"convs.{i}", g)
        b.norm(f"norms.{i}", g)
        if i + 1 < n_conv:
            b.set(f"convs.{i + 1}.weight", 1, g)
    last = f"convs.{n_conv - 1}"
    nxt = "fc.weight" if "fc.weight" in shapes else "head.weight"
    b.set(nxt, 1, last, shapes[nxt][1] // b.groups[last])  # flatten(1) puts each channel's spatial block together
    if "fc.weight" in shapes:
        g = b.group("fc", shapes["fc.weight"][0])
        b.units("fc", g)
        b.set("head.weight", 1, g)


def _resnet(b: _Builder) -> None:
    shapes = b.shapes
    stream = b.group("conv1", shapes["conv1.weight"][0])
    b.units("conv1", stream)
    b.norm("bn1", stream)
    stage = 1
    while f"layer{stage}.0.conv1.weight" in shapes:
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in shapes:
            pre = f"layer{stage}.{j}."
            K = 1
            while f"{pre}conv{K + 1}.weight" in shapes:
                K += 1
            out_stream = stream
            if pre + "downsample.0.weight" in shapes:  # a new stream starts here
                out_stream = b.group(pre + "downsample", shapes[pre + "downsample.0.weight"][0])
                b.set(pre + "downsample.0.weight", 1, stream)
                b.units(pre + "downsample.0", out_stream)
                b.norm(pre + "downsample.1", out_stream)
            prev = stream
            for k in range(1, K + 1):
                conv = f"{pre}conv{k}"
                b.set(conv + ".weight", 1, prev)
                g = out_stream if k == K else b.group(conv, shapes[conv + ".weight"][0])
                b.units(conv, g)
                b.norm(f"{pre}bn{k}", g)
                prev = g
            stream = out_stream
            j += 1
        stage += 1
    b.set("fc.weight", 1, stream)
    b.touched.update({"fc.weight", "fc.bias"})


def permutation_spec(layout: ParamLayout) -> PermutationSpec:
    """Which axes of which tensors each hidden-unit permutation acts on (rules in the module docstring)."""
    cfg = full_config(layout)
    name = cfg["name"]
    b = _Builder(layout)
    if name in ("mlp", "siren"):
        _dense(b)
    elif name in ("cnn2d", "cnn1d"):
        _cnn(b)
    elif name in ("resnet", "resnet1d") or (name == "module" and cfg.get("symmetry") == "resnet"):
        if "conv1.weight" not in b.shapes or "fc.weight" not in b.shapes:
            raise UserError(f"layout {layout.layout_id} declares the resnet symmetry but has no conv1 / fc tensors",
                            "the rule reads torchvision's ResNet names (conv1, bn1, layerS.J.convK, ..., fc)")
        _resnet(b)
        if name == "module":
            unknown = sorted(set(b.shapes) - b.touched)
            if unknown:
                raise UserError(f"layout {layout.layout_id} declares the resnet symmetry but the rule does not "
                                f"account for {unknown[:5]}", "align only ResNets with torchvision's structure")
    else:
        hint = ("; a 'module' ResNet with torchvision's names can declare symmetry = \"resnet\" in its config"
                if name == "module" else "")
        raise UserError(f"permutation alignment supports {', '.join(ALIGNABLE)}, not {name!r}",
                        "align models of one of those architectures" + hint)
    return b.spec()
