"""The transformer encoder, hand-batched: embedding as one GEMM for a shared input, attention and MLPs as
batched matmuls over [N, ...], each LayerNorm's per-model affine folded into the next Linear."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsl.functional.common import Call, Dropout, act
from wsl.functional.dense import lin


def _layer_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-model LayerNorm: h [N, ..., D], w/b [N, D]."""
    shape = (w.shape[0],) + (1,) * (h.dim() - 2) + (w.shape[1],)
    return F.layer_norm(h, (h.shape[-1],), eps=1e-5) * w.reshape(shape) + b.reshape(shape)


def _linear_tokens(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h [N, B, T, in] -> [N, B, T, out] with per-model W [N, out, in]."""
    N, B, T, _ = h.shape
    y = torch.baddbmm(b.unsqueeze(1), h.reshape(N, B * T, -1), w.transpose(1, 2))
    return y.view(N, B, T, -1)


def _fold_norm(ln_w: torch.Tensor, ln_b: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """Linear(LN(h)) = Linear'(plain LN(h)): fold the per-model LN affine into the next weights.

    W' = W diag(ln_w), b' = b + W ln_b. Saves two passes over the activations
    (the per-model scale/shift cannot go inside F.layer_norm, which takes one [D] weight).
    """
    return w * ln_w.unsqueeze(1), torch.baddbmm(b.unsqueeze(-1), w, ln_b.unsqueeze(-1)).squeeze(-1)


def transformer(call: Call, x: torch.Tensor) -> torch.Tensor:
    cfg, params, shared, features, batch_last = call.cfg, call.params, call.shared, call.features, call.batch_last
    N = params["head.weight"].shape[0]
    T, tok, D, H = cfg["seq_len"], cfg["token_dim"], cfg["width"], cfg["heads"]
    a_fn = act(cfg.get("activation", "gelu"))
    drop = Dropout(cfg.get("dropout", 0.0), call.train, call.masks)
    inplace = not torch.is_grad_enabled()
    we, be = params["embed.weight"], params["embed.bias"]
    if shared:
        B = x.shape[0]
        xt = x.reshape(B * T, tok)
        h = torch.addmm(be.reshape(1, N * D), xt, we.reshape(N * D, tok).t())  # one GEMM over all models
        h = h.view(B, T, N, D).permute(2, 0, 1, 3)
    else:
        B = x.shape[1]
        h = _linear_tokens(x.reshape(N, B, T, tok), we, be)
    h = h + params["pos"].unsqueeze(1)  # [N, 1, T, D]; a fresh contiguous [N, B, T, D]
    dh = D // H

    def residual(h, y):
        return h.add_(y) if inplace else h + y

    j = 0
    while f"blocks.{j}.qkv.weight" in params:
        p = f"blocks.{j}."
        wq, bq = _fold_norm(params[p + "norm1.weight"], params[p + "norm1.bias"], params[p + "qkv.weight"],
                            params[p + "qkv.bias"])
        qkv = _linear_tokens(F.layer_norm(h, (D,), eps=1e-5), wq, bq)  # [N, B, T, 3D]
        # (N*B) sequences of T tokens: SDPA's batched kernel, 2x faster on CPU than softmax(q k^T) v here
        q, k, v = (t.transpose(1, 2) for t in qkv.view(N * B, T, 3, H, dh).unbind(2))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, B, T, D)
        h = residual(h, drop(2 * j, _linear_tokens(y, params[p + "proj.weight"], params[p + "proj.bias"])))
        w1, b1 = _fold_norm(params[p + "norm2.weight"], params[p + "norm2.bias"], params[p + "fc1.weight"],
                            params[p + "fc1.bias"])
        a = drop(2 * j + 1, a_fn(_linear_tokens(F.layer_norm(h, (D,), eps=1e-5), w1, b1)))
        h = residual(h, _linear_tokens(a, params[p + "fc2.weight"], params[p + "fc2.bias"]))
        j += 1
    if features:
        return _layer_norm(h, params["norm.weight"], params["norm.bias"]).mean(2)  # [N, B, D]
    wh, bh = _fold_norm(params["norm.weight"], params["norm.bias"], params["head.weight"], params["head.bias"])
    return lin(F.layer_norm(h, (D,), eps=1e-5).mean(2), wh, bh, batch_last=batch_last)
