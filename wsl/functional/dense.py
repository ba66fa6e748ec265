"""MLP and SIREN: per-model Linear layers as batched matmuls (the first one a single GEMM for a shared input)."""
from __future__ import annotations

import torch

from wsl.functional.common import Call, Dropout, act


def _wt(params, name: str) -> torch.Tensor:
    """W^T [N, in, out]: the contiguous copy `prepare_params` made, else a transposed view."""
    t = params.get(name + ":T")
    return t if t is not None else params[name].transpose(1, 2)


def lin(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wt: torch.Tensor | None = None,
        batch_last: bool = False) -> torch.Tensor:
    """Per-model Linear: h [N, B, in] -> [N, B, out], or [N, out, B] with batch_last.

    Without autograd: bmm then an in-place bias add (cheaper than baddbmm's broadcast-copy of the bias).
    """
    nograd = not torch.is_grad_enabled()
    if batch_last:
        if nograd:
            return torch.bmm(w, h.transpose(1, 2)).add_(b.unsqueeze(-1))
        return torch.baddbmm(b.unsqueeze(-1), w, h.transpose(1, 2))
    wt = w.transpose(1, 2) if wt is None else wt
    if nograd:
        return torch.bmm(h, wt).add_(b.unsqueeze(1))
    return torch.baddbmm(b.unsqueeze(1), h, wt)


def linear(h: torch.Tensor, params, prefix: str, batch_last: bool = False) -> torch.Tensor:
    return lin(h, params[prefix + ".weight"], params[prefix + ".bias"], _wt(params, prefix + ".weight"), batch_last)


def _dense_stack(params, n_layers: int, x: torch.Tensor, shared: bool, hidden_fn, drop: Dropout | None,
                 features: bool, batch_last: bool = False) -> torch.Tensor:
    """layers.{i} Linear stack; hidden_fn(i, pre_activation) -> activation of hidden layer i."""
    N = params["layers.0.weight"].shape[0]
    if shared:
        x = x.reshape(x.shape[0], -1)
        B = x.shape[0]
        if features and n_layers == 1:
            return x.unsqueeze(0).expand(N, B, x.shape[1])
        w0, b0 = params["layers.0.weight"], params["layers.0.bias"]
        out0 = w0.shape[1]
        # one GEMM over all models: [B, in] @ [in, N*out]; the input is read once
        h = torch.addmm(b0.reshape(1, N * out0), x, w0.reshape(N * out0, -1).t())
        h = h.view(B, N, out0).transpose(0, 1)  # [N, B, out0], a strided view bmm accepts
        if n_layers == 1 and batch_last:
            return h.transpose(1, 2).contiguous()
    else:
        x = x.reshape(x.shape[0], x.shape[1], -1)
        if features and n_layers == 1:
            return x
        h = linear(x, params, "layers.0", batch_last and n_layers == 1)
    for i in range(1, n_layers):
        h = hidden_fn(i - 1, h)
        if drop is not None:
            h = drop(i - 1, h)
        if features and i == n_layers - 1:
            return h
        h = linear(h, params, f"layers.{i}", batch_last and i == n_layers - 1)
    return h


def _n_linear(params, prefix: str = "layers") -> int:
    i = 0
    while f"{prefix}.{i}.weight" in params:
        i += 1
    return i


def mlp(call: Call, x: torch.Tensor) -> torch.Tensor:
    a = act(call.cfg.get("activation", "relu"))
    drop = Dropout(call.cfg.get("dropout", 0.0), call.train, call.masks)
    n = _n_linear(call.params)
    return _dense_stack(call.params, n, x, call.shared, lambda i, h: a(h), drop, call.features, call.batch_last)


def siren(call: Call, x: torch.Tensor) -> torch.Tensor:
    w0 = float(call.cfg.get("w0", 30.0))
    n = _n_linear(call.params)
    return _dense_stack(call.params, n, x, call.shared, lambda i, h: torch.sin(w0 * h), None, call.features,
                        call.batch_last)
