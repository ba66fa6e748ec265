"""The autoregressive prior: a causal transformer over a layout's code indices, with a condition prefix.

    prior = TokenPrior(codebook_size=256, n_names=6, max_position=256, desc_dim=36, cond_dim=64,
                       d_model=128, depth=2, heads=4)
    logits = prior(cond, desc, tensor_id, position, tokens)          # [B, T, K]: teacher forcing
    tokens = prior.generate(cond, desc, tensor_id, position, temperature=1.0, top_k=0, generator=g)
    train_prior(gen, parts, toks, codes, datasets, k, g, progress)   # a vqar fit's prior stage (model.py)

Sequence (IGPG style): two prefix vectors, then one input per token in layout order:

    prefix:   [ cond_in(condition),  desc_in(layout descriptor) ]
    token t:  embed(token t-1, or BOS for t = 0) + tensor_emb(tensor id of t) + pos_emb(position of t)
              + context (the two prefix vectors, added to every token as well)

and the output at token t's slot predicts token t. The condition is the Conditioner's
vector (set-encoder dataset embedding + init group + optional target metric); the
descriptor says which layout (widths) the sequence is for (layouts.py). Positions beyond
the largest seen (an unseen wider layout) reuse the last position embedding.

Why our own blocks rather than nn.TransformerDecoder: sampling needs a key/value cache
(one new token per step for 256+ sequences at once), which torch.nn's modules do not
expose; the blocks are the standard pre-LayerNorm attention + MLP, attention through
F.scaled_dot_product_attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generators.components.schedules import warmup_cosine
from generators.components.set_encoder import ContextTable


class Block(nn.Module):
    """Pre-LN causal self-attention + MLP; `forward(x, cache)` appends to cache["k"/"v"] when given."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        causal = True
        if cache is not None:
            # preallocated to cache["cap"] positions: appending by torch.cat copied the whole cache every step
            # (O(T^2) memory traffic, minutes for 256 sequences of ~500 tokens)
            n = cache.get("n", 0)
            if n == 0:
                shape = (B, self.heads, max(int(cache.get("cap", T)), T), d // self.heads)
                cache["k"], cache["v"] = k.new_empty(shape), v.new_empty(shape)
            cache["k"][:, :, n:n + T] = k
            cache["v"][:, :, n:n + T] = v
            cache["n"] = n + T
            causal = n == 0 and T > 1  # later: one new query attends every cached key
            k, v = cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]
        # no attention dropout: on CPU it sends SDPA down a path ~5x slower (measured); dropout acts on the residuals
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TokenPrior(nn.Module):
    """p(token t | tokens < t, condition, layout) over codebook indices (see module docstring)."""

    PREFIX = 2

    def __init__(self, codebook_size: int, n_names: int, max_position: int, desc_dim: int, cond_dim: int,
                 d_model: int = 128, depth: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.codebook_size, self.max_position = int(codebook_size), int(max_position)
        self.tok = nn.Embedding(codebook_size + 1, d_model)  # the last index is BOS
        self.tensor = nn.Embedding(n_names, d_model)
        self.pos = nn.Embedding(max_position, d_model)
        self.cond_in = nn.Linear(cond_dim, d_model)
        self.desc_in = nn.Sequential(nn.Linear(desc_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.prefix_type = nn.Parameter(torch.zeros(self.PREFIX, d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, codebook_size)
        nn.init.normal_(self.prefix_type, std=0.02)

    def _prefix(self, cond: torch.Tensor, desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cond_in(cond)
        dsc = self.desc_in(desc).expand_as(c)
        prefix = torch.stack([c, dsc], 1) + self.prefix_type
        return prefix, (c + dsc)[:, None, :]

    def _meta(self, tensor_id: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.tensor(tensor_id) + self.pos(position.clamp(max=self.max_position - 1))

    def forward(self, cond: torch.Tensor, desc: torch.Tensor, tensor_id: torch.Tensor, position: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: cond [B, C], desc [Dd] or [B, Dd], tensor_id/position [T], tokens [B, T] -> logits [B, T, K]."""
        B, T = tokens.shape
        prefix, ctx = self._prefix(cond, desc)
        prev = torch.cat([torch.full((B, 1), self.codebook_size, dtype=torch.long), tokens[:, :-1]], 1)
        x = torch.cat([prefix, self.tok(prev) + self._meta(tensor_id, position) + ctx], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x[:, self.PREFIX:]))

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, desc: torch.Tensor, tensor_id: torch.Tensor, position: torch.Tensor,
                 temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
        """Sample [B, T] token sequences, one token per step with a key/value cache; seeded by `generator`."""
        B, T = cond.shape[0], len(tensor_id)
        prefix, ctx = self._prefix(cond, desc)
        meta = self._meta(tensor_id, position)  # [T, d]
        caches = [{"cap": self.PREFIX + T} for _ in self.blocks]
        out = torch.empty(B, T, dtype=torch.long)
        x = torch.cat([prefix, self.tok(torch.full((B, 1), self.codebook_size, dtype=torch.long)) + meta[0] + ctx], 1)
        for t in range(T):
            for blk, cache in zip(self.blocks, caches):
                x = blk(x, cache)
            logits = self.head(self.ln_f(x[:, -1]))
            out[:, t] = sample_logits(logits, temperature, top_k, generator)
            if t + 1 < T:
                x = self.tok(out[:, t:t + 1]) + meta[t + 1] + ctx
        return out


def sample_logits(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """[B, K] logits -> [B] indices: greedy at temperature 0, else softmax(logits / T) restricted to the top k (0: all)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def train_prior(gen, parts, toks, codes, datasets, k, g, progress) -> float:
    """Teacher-forced cross-entropy of gen's prior (and its conditioner) on every fit layout's token sequences."""
    c = gen.config
    if c.steps == 0:
        return float("nan")
    cond, prior = gen.modules["conditioner"], gen.modules["prior"]
    names = gen.fit_info["metrics"]
    mvals = [torch.stack([p["metrics"][m] for m in names], 1) if names else None for p in parts]
    if names:
        allm = torch.cat(mvals)
        cond.metric_mean.copy_(allm.mean(0))
        cond.metric_std.copy_(allm.std(0).clamp_min(1e-3) if len(allm) > 1 else torch.ones(allm.shape[1]))
    contexts = ContextTable(datasets, k)
    params = list(cond.parameters()) + list(prior.parameters())
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, foreach=True)
    sched = warmup_cosine(opt, c.steps)
    sizes = torch.tensor([float(len(p["x"])) for p in parts])
    offs = gen.fit_info["group_offsets"]
    cond.train()
    prior.train()
    ema = None
    for step in range(c.steps):
        li = int(torch.multinomial(sizes, 1, generator=g)) if len(parts) > 1 else 0
        p, t = parts[li], toks[li]
        bs = min(c.batch_size, len(p["x"]))
        idx = torch.randint(len(p["x"]), (bs,), generator=g)
        xs, ys, set_index, n_sets, uniq, inv = contexts.draw(p["index"][idx], c.max_per_class, g)
        emb = cond.set_encoder(xs, ys, set_index, n_sets)[inv]
        keep = torch.zeros(bs, dtype=torch.bool)
        mv = mvals[li][idx] if names else None
        drop_m = torch.rand(bs, generator=g) < c.metric_drop if names else None
        cvec = cond.combine(emb, keep, mv, drop_m, p["groups"][idx] + offs[li])
        logits = prior(cvec, t.descriptor, t.tensor_id, t.position, codes[li][idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[li][idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.98 * ema + 0.02 * float(loss.detach())
        if progress and (step + 1) % 50 == 0:
            progress(50, info=f"prior loss {ema:.3f}")
    if progress and c.steps % 50:
        progress(c.steps % 50)
    return float(ema)
