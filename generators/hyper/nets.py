"""The three hypernetwork architectures: input u [B, D] -> the target's trainable weights [B, P].

    net = build_net("rnn", in_dim, layout, hidden=128, depth=2, chunk_size=128, chunk_emb=16)
    w = net(u)                                                     # [B, layout.num_trainable]

- `mlp`: one head for all weights (Ha et al.; MIP's reference hypernetwork): u -> MLP -> Linear(hidden, P).
  Simple and exact, but the head has hidden x P parameters.
- `chunked` (hypnettorch's ChunkedHMLP idea): the weights are cut into K chunks of `chunk_size`
  (the last one padded); a learned embedding per chunk joins u, ONE shared head emits every
  chunk. Parameters grow with chunk_size, not with P.
- `rnn` (Chandra et al. 2022, dependency-preserving): a GRU walks the chunks in layout order
  (layer by layer), its state initialised from u and carried from chunk to chunk, each step fed
  its chunk's position and the embedding of the layer (tensor) the chunk starts in; a shared
  head reads each step's output. What a layer's weights are can then depend on what the earlier
  layers were generated as.

The output head's last layer is initialised small (`out_init`): with MIP the generated
weights start at theta_0 (the delta is ~0) and with fan-out-scaled inputs the first steps
do not blow the target network up. Without MIP the head's default init is kept: the plain
parametrization the benchmark compares with.

Why our own and not hypnettorch / hyperlight: both install and run under our torch (2.13),
but neither has a recurrent hypernetwork or a noise-and-dataset-conditioned batched output
as flat [B, P] rows of our ParamLayout (what wsl.functional's fused forward takes), hyperlight
has no chunking, and both were last released in 2022/2023 (docs/generators.md "hyper").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from store.errors import UserError
from store.layout import ParamLayout

ARCHS = ("mlp", "chunked", "rnn")
MAX_CHUNKS = 4096  # GRU steps / chunk embeddings beyond this are a chunk size that is far too small
MAX_PADDING = 0.25  # padding of the last chunk as a fraction of all generated values


def _mlp(in_dim: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(max(1, depth)):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*layers)


def plan_chunks(num_values: int, chunk_size: int | str) -> tuple[int, int]:
    """(chunk_size, n_chunks) for P values; "auto" picks ~sqrt-sized chunks; a UserError when it is not sensible.

    Sensible: 1 <= n_chunks <= MAX_CHUNKS and the padded tail at most MAX_PADDING of everything
    generated. The error names chunk sizes that would do (divisors of P first, then near ones).
    """
    p = int(num_values)
    if chunk_size == "auto":
        c = max(16, int(2 ** round(math.log2(max(1.0, math.sqrt(p) * 2)))))
        c = min(c, p)
        return c, -(-p // c)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise UserError(f"chunk_size {chunk_size!r} is not an integer", "give chunk_size=auto or a positive integer")
    c = int(chunk_size)
    n = -(-p // c) if c > 0 else 0
    pad = n * c - p
    if c < 1 or c > p or n > MAX_CHUNKS or pad > MAX_PADDING * n * c:
        why = ("is not positive" if c < 1 else f"is larger than the {p} generated values" if c > p else
               f"makes {n} chunks (more than {MAX_CHUNKS})" if n > MAX_CHUNKS else
               f"pads the last chunk with {pad} of {n * c} values ({pad / (n * c):.0%} > {MAX_PADDING:.0%})")
        raise UserError(f"chunk_size {c} for a layout of {p} trainable values {why}",
                        f"use chunk_size=auto or one of {', '.join(map(str, good_chunk_sizes(p)))}")
    return c, n


def good_chunk_sizes(p: int, k: int = 6) -> list[int]:
    """Chunk sizes that fit P values: divisors of P in a useful range, else powers of two with little padding."""
    lo, hi = max(8, p // MAX_CHUNKS), max(8, p // 2)
    divs = [d for d in range(lo, hi + 1) if p % d == 0]
    if len(divs) >= 3:
        step = max(1, len(divs) // k)
        return divs[::step][:k]
    out = []
    for e in range(3, 16):
        c = 2 ** e
        if c > p:
            break
        n = -(-p // c)
        if n <= MAX_CHUNKS and n * c - p <= 0.1 * n * c:
            out.append(c)
    return (divs + out)[:k] or [p]


def chunk_layers(layout: ParamLayout, chunk: int, n_chunks: int) -> torch.Tensor:
    """[n_chunks] index of the layout tensor each chunk starts in (the 'layer' the RNN step belongs to)."""
    starts = [e.offset for e in layout.param_entries]
    out = []
    for k in range(n_chunks):
        off = k * chunk
        out.append(max(i for i, s in enumerate(starts) if s <= off))
    return torch.tensor(out, dtype=torch.long)


class MLPHyper(nn.Module):
    """One head for all P weights."""

    def __init__(self, in_dim: int, num_values: int, hidden: int, depth: int):
        super().__init__()
        self.num_values = int(num_values)
        self.body = _mlp(in_dim, hidden, depth)
        self.out = nn.Linear(hidden, num_values)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(u))


class ChunkedHyper(nn.Module):
    """Learned chunk embeddings + one shared head; the first layer is split so u is projected once per row."""

    def __init__(self, in_dim: int, num_values: int, hidden: int, depth: int, chunk: int, n_chunks: int, chunk_emb: int):
        super().__init__()
        self.num_values, self.chunk, self.n_chunks = int(num_values), int(chunk), int(n_chunks)
        self.chunk_emb = nn.Parameter(torch.randn(n_chunks, chunk_emb))
        self.in_u = nn.Linear(in_dim, hidden)
        self.in_c = nn.Linear(chunk_emb, hidden, bias=False)
        self.body = _mlp(hidden, hidden, depth - 1) if depth > 1 else nn.Identity()
        self.out = nn.Linear(hidden, chunk)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.in_u(u)[:, None, :] + self.in_c(self.chunk_emb)[None])  # [B, K, H]
        out = self.out(self.body(h))  # [B, K, chunk]
        return out.reshape(len(u), -1)[:, :self.num_values]


class RNNHyper(nn.Module):
    """A GRU over the chunks in layout order; state from u, inputs: chunk position + layer embeddings."""

    def __init__(self, in_dim: int, num_values: int, hidden: int, depth: int, chunk: int, n_chunks: int,
                 chunk_emb: int, layers: torch.Tensor, n_layers: int):
        super().__init__()
        self.num_values, self.chunk, self.n_chunks = int(num_values), int(chunk), int(n_chunks)
        self.register_buffer("layers", layers.clone())
        self.pos_emb = nn.Parameter(torch.randn(n_chunks, chunk_emb) * 0.1)
        self.layer_emb = nn.Embedding(n_layers, chunk_emb)
        self.h0 = nn.Sequential(_mlp(in_dim, hidden, 1), nn.Linear(hidden, hidden * max(1, depth)))
        self.in_u = nn.Linear(in_dim, chunk_emb)
        self.gru = nn.GRU(chunk_emb, hidden, num_layers=max(1, depth), batch_first=True)
        self.out = nn.Linear(hidden, chunk)
        self.depth = max(1, depth)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b = len(u)
        steps = self.pos_emb + self.layer_emb(self.layers)  # [K, E]
        x = torch.tanh(steps[None] + self.in_u(u)[:, None, :])  # [B, K, E]
        h0 = torch.tanh(self.h0(u)).reshape(b, self.depth, -1).transpose(0, 1).contiguous()
        y, _ = self.gru(x, h0)  # [B, K, H]
        return self.out(y).reshape(b, -1)[:, :self.num_values]


def build_net(arch: str, in_dim: int, layout: ParamLayout, hidden: int, depth: int, chunk_size: int | str,
              chunk_emb: int) -> nn.Module:
    """The hypernetwork body for the layout's trainable values (a UserError for an unknown arch or a bad chunk size)."""
    p = layout.num_trainable
    if arch == "mlp":
        return MLPHyper(in_dim, p, hidden, depth)
    if arch not in ARCHS:
        raise UserError(f"unknown hypernetwork arch {arch!r}", f"use one of: {', '.join(ARCHS)}")
    chunk, n = plan_chunks(p, chunk_size)
    if arch == "chunked":
        return ChunkedHyper(in_dim, p, hidden, depth, chunk, n, chunk_emb)
    return RNNHyper(in_dim, p, hidden, depth, chunk, n, chunk_emb, chunk_layers(layout, chunk, n),
                    len(layout.param_entries))


def init_output(net: nn.Module, scale: float) -> None:
    """The head's last layer: weights ~ N(0, (scale / sqrt(fan_in))^2), bias 0 (MIP: the delta starts near 0)."""
    out = net.out
    with torch.no_grad():
        out.weight.normal_(0.0, scale / math.sqrt(out.weight.shape[1]))
        out.bias.zero_()
