"""Layouts of one architecture family as the vqar prior sees them: tensor ids, positions, a descriptor.

One vqar generator serves several layouts of one family (e.g. MLPs of widths 16, 32
and 64). What the prior needs to know about a token of any of them:

- its *tensor id*: the index of its tensor's name in the family's name table (the same
  id for `layers.0.weight` at every width, so what is learned about a first layer is
  shared between widths);
- its *position*: the chunk's index within its tensor;
- the *layout descriptor*: one vector per layout, per name of the table: present or not,
  then log2 of each dimension (up to MAX_DIMS) and of the element count. It is what
  tells a width-16 sequence from a width-64 one, and what an unseen width is described by.

Family rule (`check_family`): a layout belongs to the family when its architecture name
is the fit layouts' and it has the same tensor names, in the same order, with the same
number of dimensions as one of them (so a different depth or another architecture is
outside it; a different width is inside). Anything else is a UserError (exit 2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.tokenize import ChunkTokenizer

MAX_DIMS = 4  # dimensions per tensor the descriptor encodes (conv kernels have 4)


def name_table(layouts: Sequence[ParamLayout]) -> list[str]:
    """The family's tensor names: first-seen order over the layouts (all of them share it for one family)."""
    names: list[str] = []
    for layout in layouts:
        for e in layout.entries:
            if e.name not in names:
                names.append(e.name)
    return names


def signature(layout: ParamLayout) -> tuple:
    """What a layout of the family shares with every other: architecture name, tensor names and ranks."""
    return ((layout.arch or {}).get("name"), tuple((e.name, len(e.shape), e.buffer) for e in layout.entries))


def check_family(layouts: Sequence[ParamLayout]) -> None:
    """UserError when fit layouts are not one architecture family (same names and ranks, other sizes)."""
    sigs = {signature(lay) for lay in layouts}
    if len(sigs) > 1:
        ids = ", ".join(lay.layout_id for lay in layouts)
        raise UserError(f"the selection mixes layouts of different architecture families ({ids}): vqar serves several "
                        "sizes of one architecture (same tensor names and ranks, e.g. MLP widths), not several architectures",
                        "select one architecture and depth (e.g. add \"architecture = 'mlp' AND depth = 2\")")


def check_member(layout: ParamLayout, fit_layouts: Sequence[ParamLayout]) -> None:
    """UserError (exit 2) when `layout` is outside the family the generator was fit on."""
    if signature(layout) != signature(fit_layouts[0]):
        arch = (layout.arch or {}).get("name")
        fam = (fit_layouts[0].arch or {}).get("name")
        raise UserError(f"layout {layout.layout_id} ({arch}, tensors {layout.names}) is outside the family this vqar "
                        f"generator was fit on ({fam}, tensors {fit_layouts[0].names})",
                        "ask for a layout of the same architecture and depth: one of "
                        + ", ".join(lay.layout_id for lay in fit_layouts) + " or another width of it")


def descriptor(layout: ParamLayout, names: Sequence[str]) -> torch.Tensor:
    """[len(names) * (MAX_DIMS + 2)] float vector: per table name, present + log2 dims + log2 numel."""
    out = torch.zeros(len(names), MAX_DIMS + 2)
    by_name = {e.name: e for e in layout.entries}
    for i, n in enumerate(names):
        e = by_name.get(n)
        if e is None:
            continue
        out[i, 0] = 1.0
        for j, d in enumerate(e.shape[:MAX_DIMS]):
            out[i, 1 + j] = math.log2(d + 1)
        out[i, MAX_DIMS + 1] = math.log2(e.numel + 1)
    return out.reshape(-1)


def descriptor_dim(names: Sequence[str]) -> int:
    return len(names) * (MAX_DIMS + 2)


class LayoutTokens:
    """A layout's chunk tokenizer and what the prior embeds per token (tensor ids, positions).

    With `levels` residual-VQ indices per chunk the prior's sequence has levels x chunks tokens
    (a chunk's levels adjacent): each gets its chunk's tensor id and position chunk * levels + level.
    """

    def __init__(self, layout: ParamLayout, chunk_size: int, names: Sequence[str], levels: int = 1):
        largest = max(e.numel for e in layout.entries)
        if chunk_size > largest:
            raise UserError(f"chunk_size {chunk_size} is larger than the largest tensor of layout {layout.layout_id} "
                            f"({largest} values)", f"give chunk_size between 1 and {largest}")
        self.layout = layout
        self.tokenizer = ChunkTokenizer(layout, chunk_size)
        table = {n: i for i, n in enumerate(names)}
        missing = [e.name for e in layout.entries if e.name not in table]
        if missing:  # a bug: check_member runs first
            raise RuntimeError(f"tensor names {missing} not in the family's table")
        ids = [table[layout.entries[int(t)].name] for t in self.tokenizer.token_tensor]
        lv = int(levels)
        self.tensor_id = torch.tensor(ids, dtype=torch.long).repeat_interleave(lv)  # [T * lv] family-wide tensor id
        # [T * lv] chunk index within its tensor (times levels, + level)
        self.position = (self.tokenizer.token_position[:, None] * lv + torch.arange(lv)).reshape(-1)
        self.descriptor = descriptor(layout, names)

    @property
    def num_tokens(self) -> int:
        return self.tokenizer.num_tokens

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, P] -> chunks [N, T, D] and mask [T, D] (padding: False)."""
        return self.tokenizer.encode(x), self.tokenizer.mask

    def decode(self, chunks: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(chunks)


def nearest(layout: ParamLayout, fit_layouts: Sequence[ParamLayout]) -> int:
    """Index of the fit layout closest in size (|log numel ratio| summed over tensors): statistics for an unseen size."""
    def dist(other: ParamLayout) -> float:
        return sum(abs(math.log((a.numel + 1) / (b.numel + 1))) for a, b in zip(layout.entries, other.entries))

    return min(range(len(fit_layouts)), key=lambda i: (dist(fit_layouts[i]), i))


def source_for(layout: ParamLayout, fit_layouts: Sequence[ParamLayout]) -> int:
    """Index of the fit layout an unseen size is resized from (`resize`).

    The widest fit layout no larger than `layout` in any dimension of any tensor (widening it is exact:
    the resized network computes what it computes); when every fit layout is larger somewhere, the
    nearest in size (`nearest`), cropped.
    """
    def fits_inside(other: ParamLayout) -> bool:
        return all(all(a <= b for a, b in zip(o.shape, e.shape)) for o, e in zip(other.entries, layout.entries))

    inside = [i for i, lay in enumerate(fit_layouts) if fits_inside(lay)]
    if inside:
        return max(inside, key=lambda i: (fit_layouts[i].num_params, -i))
    return nearest(layout, fit_layouts)


def resize(weights: torch.Tensor, src: ParamLayout, dst: ParamLayout) -> torch.Tensor:
    """Flat weights [n, P_src] of one family member -> [n, P_dst] of another size (Net2Net-style).

    Per tensor and dimension, index i of the target takes the source's index i mod size (so a wider
    target repeats units and a narrower one keeps the leading ones). Dimension 1 of a tensor of
    rank >= 2 is its fan-in (torch's Linear / Conv convention: [out, in, ...]): a repeated input unit's
    weights are divided by its number of copies, which keeps the function exactly when widening; a
    cropped fan-in is scaled by source / target size, which keeps the pre-activation's scale only.
    """
    parts = []
    for s, d in zip(src.entries, dst.entries):
        x = weights[:, s.offset:s.offset + s.numel].reshape(len(weights), *s.shape)
        for dim, (a, b) in enumerate(zip(s.shape, d.shape)):
            if a == b:
                continue
            idx = torch.arange(b) % a
            x = x.index_select(dim + 1, idx)
            if dim == 1 and len(s.shape) >= 2:
                factor = (1.0 / torch.bincount(idx, minlength=a)[idx].to(x.dtype)) if b > a \
                    else torch.full((b,), a / b, dtype=x.dtype)
                x = x * factor.reshape(1, 1, b, *([1] * (len(s.shape) - 2)))
        parts.append(x.reshape(len(weights), -1))
    return torch.cat(parts, 1)
