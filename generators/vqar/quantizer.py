"""The VQ-VAE over weight chunks: chunk -> small encoder -> nearest codebook entry -> small decoder -> chunk.

    vq = ChunkVQVAE(chunk_size=16, codebook_size=256, code_dim=16, hidden=128)
    train_vqvae(vq, chunks, masks, steps=800, batch_size=2048, lr=1e-3, generator=g)
    idx = vq.encode(chunks, masks)          # [M] code indices (eval mode: nearest entry, deterministic)
    rec = vq.decode(idx)                    # [M, D] chunk values (padding entries are meaningless: masked)
    codebook_health(idx, codebook_size)     # usage fraction, perplexity, dead codes

The quantizer is lucidrains' `vector-quantize-pytorch` (`VectorQuantize`): EMA codebook
updates, k-means initialisation on the first batch, and dead-code replacement (an entry
whose EMA usage falls under `dead_threshold` is re-seeded from the batch). Users of VQ
libraries report 40-90% unused entries without replacement (docs/design.md), which is why
it is on. `hidden = 0` makes the encoder and decoder the identity: the codebook then holds
chunks themselves (pure vector quantization), which is also the exact-round-trip case
the tests check with an identity codebook.

Loss = masked reconstruction MSE (padding of a tensor's last chunk never counts) +
the library's commitment loss. Encoder input is [values * mask, mask] so a padded chunk
is distinguishable from one that ends in zeros.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from generators.components.schedules import warmup_cosine


class ChunkVQVAE(nn.Module):
    """Chunks [M, D] (+ masks) <-> code indices [M]; a VectorQuantize between a small encoder and decoder."""

    def __init__(self, chunk_size: int, codebook_size: int, code_dim: int, hidden: int, decay: float = 0.9,
                 commitment: float = 0.25, dead_threshold: float = 1.0, kmeans_iters: int = 10, levels: int = 1):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ, VectorQuantize

        self.chunk_size, self.codebook_size, self.hidden = int(chunk_size), int(codebook_size), int(hidden)
        if self.hidden:
            self.code_dim = int(code_dim)
            self.encoder = nn.Sequential(nn.Linear(2 * chunk_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                         nn.SiLU(), nn.Linear(hidden, code_dim))
            self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                         nn.SiLU(), nn.Linear(hidden, chunk_size))
        else:  # identity encoder / decoder: the codebook holds chunks
            self.code_dim = self.chunk_size
            self.encoder = self.decoder = None
        self.levels = int(levels)
        kw = dict(dim=self.code_dim, codebook_size=self.codebook_size, decay=decay, commitment_weight=commitment,
                  kmeans_init=True, kmeans_iters=kmeans_iters, threshold_ema_dead_code=dead_threshold)
        # levels > 1: residual VQ (each level quantizes what the levels before it left), `levels` indices per chunk
        self.vq = VectorQuantize(**kw) if self.levels == 1 else ResidualVQ(num_quantizers=self.levels, **kw)

    def _encode(self, chunks: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = masks.to(chunks.dtype)
        if self.encoder is None:
            return chunks * m
        return self.encoder(torch.cat([chunks * m, m], -1))

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes if self.decoder is None else self.decoder(codes)

    def loss(self, chunks: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked reconstruction + commitment on a batch [B, D] (train mode updates the codebook by EMA)."""
        z = self._encode(chunks, masks)
        q, _, commit = self.vq(z[None])
        rec = self._decode(q[0])
        m = masks.to(chunks.dtype)
        mse = ((rec - chunks).pow(2) * m).sum() / m.sum().clamp_min(1.0)
        commit = commit.sum()
        return mse + commit, {"mse": float(mse.detach()), "commit": float(commit.detach())}

    @torch.no_grad()
    def encode(self, chunks: torch.Tensor, masks: torch.Tensor, batch: int = 65536) -> torch.Tensor:
        """[M, D] chunks -> [M] nearest-entry indices ([M, levels] with residual levels; no codebook update)."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(chunks), batch):
            z = self._encode(chunks[i:i + batch], masks[i:i + batch])
            out.append(self.vq(z[None])[1][0])
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """[..., T * levels] indices (a chunk's levels adjacent) -> [..., T, D] chunk values ([...] -> [..., D] at 1 level)."""
        if self.levels == 1:
            codes = self.vq.get_output_from_indices(indices.reshape(1, -1))[0]
            return self._decode(codes).reshape(*indices.shape, self.chunk_size)
        lead = indices.shape[:-1]
        codes = self.vq.get_output_from_indices(indices.reshape(1, -1, self.levels))[0]
        return self._decode(codes).reshape(*lead, -1, self.chunk_size)


def train_vqvae(vq: ChunkVQVAE, chunks: torch.Tensor, masks: torch.Tensor, steps: int, batch_size: int, lr: float,
                generator: torch.Generator, progress=None) -> float:
    """Train on random batches of the pooled chunks [M, D]; returns the final (smoothed) reconstruction MSE.

    The first batch initialises the codebook by k-means, so it is drawn large (at least
    8 chunks per entry when there are that many). Identity encoder/decoder: only the
    EMA codebook learns (no optimizer step).
    """
    vq.train()
    m = len(chunks)
    first = torch.randperm(m, generator=generator)[:max(batch_size, 8 * vq.codebook_size)]
    # (with residual levels every level's codebook is k-means initialised on this batch's residuals)
    vq.loss(chunks[first], masks[first])  # k-means init (and one EMA update)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, foreach=True) if params and vq.hidden else None
    sched = warmup_cosine(opt, steps) if opt is not None and steps else None
    bs = min(batch_size, m)
    ema = math.nan
    for step in range(steps):
        idx = torch.randint(m, (bs,), generator=generator)
        loss, parts = vq.loss(chunks[idx], masks[idx])
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        ema = parts["mse"] if math.isnan(ema) else 0.98 * ema + 0.02 * parts["mse"]
        if progress and (step + 1) % 50 == 0:
            progress(50, info=f"vq-vae mse {ema:.4f}")
    if progress and steps % 50:
        progress(steps % 50)
    vq.eval()
    return float(ema)


def codebook_health(indices: torch.Tensor, codebook_size: int, levels: int = 1) -> dict[str, float]:
    """Usage of a codebook by a set of tokens: fraction of entries used, perplexity, dead entries.

    perplexity = exp(entropy of the code frequencies): codebook_size when every entry is
    used equally, 1 when one entry takes every token. With residual levels (indices [..., T * levels],
    a chunk's levels adjacent) every level's codebook is its own: levels x codebook_size entries,
    and the perplexity is the mean over the levels.
    """
    if levels > 1:
        lv = indices.reshape(-1, levels)
        per = [codebook_health(lv[:, j], codebook_size) for j in range(levels)]
        out = codebook_health(lv + torch.arange(levels) * codebook_size, codebook_size * levels)
        out["perplexity"] = sum(h["perplexity"] for h in per) / levels
        out["level_usage_fractions"] = [h["usage_fraction"] for h in per]
        return out
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).to(torch.float64)
    p = counts / counts.sum().clamp_min(1.0)
    nz = p[p > 0]
    used = int((counts > 0).sum())
    return {"codebook_size": int(codebook_size), "codes_used": used, "usage_fraction": used / codebook_size,
            "dead_codes": codebook_size - used, "dead_code_fraction": (codebook_size - used) / codebook_size,
            "perplexity": float(torch.exp(-(nz * nz.log()).sum())), "tokens": int(counts.sum())}
