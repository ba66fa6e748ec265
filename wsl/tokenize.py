"""Weight vectors as token sequences, and back, exactly.

Two tokenizations that sequence models over weights use:

- `NeuronTokenizer`: one token per unit (neuron / output channel): the unit's
  incoming weights and its bias, e.g. row j of a Linear weight plus bias[j], or
  output channel j of a conv kernel (in*k*k values) plus its bias. Tensors
  that are not part of a weight+bias pair give one token per leading index
  (a 2-D `pos` table: one token per position; a lone 1-D vector: chunks).
- `ChunkTokenizer`: fixed-size chunks of `chunk_size` values (IGPG / VQ-VAE
  style), within each tensor by default so no token mixes two layers.

Tokens are padded to one width D; `mask` [T, D] says which entries are real.
Both are a precomputed gather index into the flat vector, so

    tok = NeuronTokenizer(layout)
    t = tok.encode(weights)          # [N, T, D] (padding is 0)
    w = tok.decode(t)                # == weights, bit for bit (a scatter of the same values)

`token_tensor` [T] (which parameter tensor a token comes from) and
`token_position` [T] (its index within that tensor's tokens) are what a
sequence model uses as layer/position embeddings.

Buffers (BatchNorm running statistics, stored after the parameters): tokenized
like any tensor by default, so a decoded vector is a whole model, statistics
included. `include_buffers=False` tokenizes the parameters only; `decode` then
needs the buffer values (`buffers=`, [N, num_buffers]: e.g. a reference
model's, or zeros to be replaced by `wsl.reset_running_stats`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from store.errors import UserError
from store.layout import ParamLayout

__all__ = ["NeuronTokenizer", "ChunkTokenizer", "tokenizer_from_dict"]


class _IndexTokenizer:
    """Tokens = flat[index] where mask; index [T, D] points into [P] (padding points at P, a zero)."""

    kind = "index"

    def __init__(self, layout: ParamLayout, rows: list[tuple[int, torch.Tensor]], include_buffers: bool = True):
        """rows: (tensor number, flat positions of the token's values) in token order."""
        if not rows:
            raise UserError(f"layout {layout.layout_id} gives no tokens", "tokenize a layout with parameters")
        self.layout = layout
        self.include_buffers = bool(include_buffers) or not layout.buffer_entries
        P = layout.num_params
        D = max(len(r) for _, r in rows)
        index = torch.full((len(rows), D), P, dtype=torch.long)
        mask = torch.zeros((len(rows), D), dtype=torch.bool)
        for t, (_, pos) in enumerate(rows):
            index[t, :len(pos)] = pos
            mask[t, :len(pos)] = True
        covered = torch.zeros(P + 1, dtype=torch.long)
        covered.scatter_add_(0, index[mask], torch.ones(int(mask.sum()), dtype=torch.long))
        want = torch.ones(P, dtype=torch.long) if self.include_buffers else layout.trainable.long()
        if not torch.equal(covered[:P], want):
            raise RuntimeError("tokenizer does not cover every parameter exactly once")  # a bug, not user input
        self.index = index
        self.mask = mask
        self.token_tensor = torch.tensor([t for t, _ in rows], dtype=torch.long)
        pos = torch.zeros(len(rows), dtype=torch.long)
        for t in range(1, len(rows)):
            pos[t] = pos[t - 1] + 1 if self.token_tensor[t] == self.token_tensor[t - 1] else 0
        self.token_position = pos

    @property
    def num_tokens(self) -> int:
        return self.index.shape[0]

    @property
    def token_dim(self) -> int:
        return self.index.shape[1]

    def encode(self, weights: torch.Tensor) -> torch.Tensor:
        """[N, P] or [P] -> [N, T, D] or [T, D]; padded entries are 0."""
        w = self.layout.check_flat(weights, allow_nonfinite=True)
        padded = torch.cat([w, w.new_zeros(w.shape[:-1] + (1,))], -1)
        idx = self.index.to(w.device)
        return padded[..., idx]

    def decode(self, tokens: torch.Tensor, buffers: torch.Tensor | None = None) -> torch.Tensor:
        """[N, T, D] or [T, D] -> [N, P] or [P]; padded entries are ignored.

        buffers: the buffer values ([N, num_buffers] or [num_buffers]) when the tokens exclude them."""
        T, D = self.index.shape
        if not isinstance(tokens, torch.Tensor) or tuple(tokens.shape[-2:]) != (T, D) or tokens.dim() not in (2, 3):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise UserError(f"tokens have shape {shape}, this tokenizer makes [N, {T}, {D}]",
                            "decode tokens made by the same tokenizer (same layout and settings)")
        mask = self.mask.to(tokens.device)
        flat_idx = self.index.to(tokens.device)[mask]  # [P] positions, in token order
        out = tokens.new_empty(tokens.shape[:-2] + (self.layout.num_params,))
        out[..., flat_idx] = tokens[..., mask]
        if not self.include_buffers:
            nb = self.layout.num_buffers
            if not isinstance(buffers, torch.Tensor) or buffers.shape[-1] != nb or buffers.dim() > out.dim():
                raise UserError(f"these tokens exclude the layout's {nb} buffer values (BatchNorm statistics)",
                                f"pass decode(tokens, buffers=...) with [N, {nb}] values (a reference model's, or "
                                "zeros followed by wsl.reset_running_stats)")
            out[..., self.layout.num_trainable:] = buffers.to(out.dtype)
        elif buffers is not None:
            raise UserError("decode got buffers, but these tokens include them", "call decode(tokens)")
        return out

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.include_buffers else {"include_buffers": False}  # older dicts stay as they were
        return {"kind": self.kind, "layout": self.layout.to_dict(), **self._settings(), **extra}

    def _entries(self, layout: ParamLayout, include_buffers: bool):
        return [(ti, e) for ti, e in enumerate(layout.entries) if include_buffers or not e.buffer]

    def _settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout.layout_id}, tokens={self.num_tokens}, dim={self.token_dim})"


def _positions(layout: ParamLayout, name: str) -> torch.Tensor:
    e = layout[name]
    return torch.arange(e.offset, e.offset + e.numel).reshape(e.shape)


class NeuronTokenizer(_IndexTokenizer):
    """One token per unit: incoming weights + bias (see module docstring)."""

    kind = "neuron"

    def __init__(self, layout: ParamLayout, max_token: int | None = None, include_buffers: bool = True):
        """max_token: split rows longer than this into several tokens (a wide first layer); default no limit."""
        if max_token is not None and max_token < 1:
            raise UserError(f"max_token must be >= 1, got {max_token}", "pass a positive max_token or None")
        self.max_token = max_token
        names = {e.name for _, e in self._entries(layout, include_buffers)}
        used: set[str] = set()
        groups: list[tuple[int, list[torch.Tensor], bool]] = []  # (tensor number, rows, lone vector?)
        for ti, e in self._entries(layout, include_buffers):
            if e.name in used:
                continue
            prefix, _, leaf = e.name.rpartition(".")
            bias_name = f"{prefix}.bias" if prefix else "bias"
            pos = _positions(layout, e.name)
            used.add(e.name)
            if (leaf == "weight" and bias_name in names and bias_name not in used
                    and layout[bias_name].shape == (e.shape[0],)):
                bias = _positions(layout, bias_name)
                used.add(bias_name)
                groups.append((ti, [torch.cat([pos[j].reshape(-1), bias[j:j + 1]]) for j in range(e.shape[0])], False))
            elif len(e.shape) >= 2:
                groups.append((ti, [pos[j].reshape(-1) for j in range(e.shape[0])], False))
            else:
                groups.append((ti, [pos.reshape(-1)], True))
        unit_rows = [len(r) for _, rs, lone in groups if not lone for r in rs]
        # lone vectors (a bias without weight, a gain) are cut to the width of the unit rows
        lone_width = max(unit_rows) if unit_rows else max(len(rs[0]) for _, rs, _ in groups)
        rows: list[tuple[int, torch.Tensor]] = []
        for ti, rs, lone in groups:
            for r in rs:
                width = lone_width if lone else (max_token or len(r))
                rows += [(ti, piece) for piece in r.split(min(width, max_token or width))]
        super().__init__(layout, rows, include_buffers)

    def _settings(self) -> dict[str, Any]:
        return {"max_token": self.max_token}


class ChunkTokenizer(_IndexTokenizer):
    """Fixed-size chunks of the flat vector; per tensor (default) or across tensor boundaries."""

    kind = "chunk"

    def __init__(self, layout: ParamLayout, chunk_size: int = 64, per_tensor: bool = True, include_buffers: bool = True):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}", "e.g. chunk_size=64")
        self.chunk_size = chunk_size
        self.per_tensor = per_tensor
        rows: list[tuple[int, torch.Tensor]] = []
        if per_tensor:
            for ti, e in self._entries(layout, include_buffers):
                for piece in torch.arange(e.offset, e.offset + e.numel).split(chunk_size):
                    rows.append((ti, piece))
        else:
            owner = torch.repeat_interleave(torch.arange(len(layout)), torch.tensor([e.numel for e in layout.entries]))
            size = layout.num_params if include_buffers else layout.num_trainable
            for piece in torch.arange(size).split(chunk_size):
                rows.append((int(owner[piece[0]]), piece))  # a chunk is labelled by the tensor it starts in
        super().__init__(layout, rows, include_buffers)

    def _settings(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, "per_tensor": self.per_tensor}


def tokenizer_from_dict(d: Mapping[str, Any]) -> _IndexTokenizer:
    """Rebuild a tokenizer from `to_dict()` output (generators save it with their config)."""
    try:
        layout = ParamLayout.from_dict(d["layout"])
        kind = d["kind"]
    except (KeyError, TypeError) as e:
        raise UserError(f"malformed tokenizer config ({e})", "pass what tokenizer.to_dict() wrote") from None
    buffers = bool(d.get("include_buffers", True))
    if kind == "neuron":
        return NeuronTokenizer(layout, d.get("max_token"), buffers)
    if kind == "chunk":
        return ChunkTokenizer(layout, int(d.get("chunk_size", 64)), bool(d.get("per_tensor", True)), buffers)
    raise UserError(f"unknown tokenizer kind {kind!r}", "use 'neuron' or 'chunk'")

