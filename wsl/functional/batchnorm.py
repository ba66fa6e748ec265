"""BatchNorm over a population whose models are stacked along the channel axis.

The conv families run N models as one tensor [B, N*C, *spatial] (grouped
convolutions). BatchNorm normalizes each channel over the batch and spatial
axes, so one `F.batch_norm` over the N*C stacked channels computes exactly
each model's own per-channel statistics: per-model batch statistics in train
mode, for free, with torch's own kernel (and its running-stat rule: running =
(1 - momentum) * running + momentum * batch statistic, the variance unbiased).

The caller's tensors are never written: in train mode the running statistics
are updated in fresh copies, returned through `Call.new_buffers` (and
num_batches_tracked + 1), which is what `population_forward(...,
return_buffers=True)` hands back. In eval mode the running statistics are
read as they are (differentiable like any input, though nothing here asks for
their gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsl.functional.common import Call


def batch_norm(call: Call, h: torch.Tensor, prefix: str, N: int) -> torch.Tensor:
    """h [B, N*C, *spatial] -> normalized, with BatchNorm `prefix` (weight, bias, running_mean/var, ...)."""
    p = call.params
    if prefix + ":folded" in p:  # prepare_params folded this BN into its conv (evaluation)
        if call.train:
            from store.errors import UserError

            raise UserError("prepared (BatchNorm-folded) params cannot run in train mode",
                            "pass layout.unflatten(weights) for training, prepare_params only for evaluation")
        return h
    rm, rv = p[prefix + ".running_mean"], p[prefix + ".running_var"]
    C = rm.shape[1]
    w, b = p.get(prefix + ".weight"), p.get(prefix + ".bias")
    w = w.reshape(N * C) if w is not None else None
    b = b.reshape(N * C) if b is not None else None
    eps = float(call.cfg.get("bn_eps", 1e-5))
    if not call.train:
        return F.batch_norm(h, rm.reshape(N * C), rv.reshape(N * C), w, b, training=False, eps=eps)
    momentum = call.bn_momentum if call.bn_momentum is not None else float(call.cfg.get("bn_momentum", 0.1))
    rm_new = rm.detach().reshape(N * C).clone()
    rv_new = rv.detach().reshape(N * C).clone()
    y = F.batch_norm(h, rm_new, rv_new, w, b, training=True, momentum=momentum, eps=eps)
    call.new_buffers[prefix + ".running_mean"] = rm_new.view(N, C)
    call.new_buffers[prefix + ".running_var"] = rv_new.view(N, C)
    nbt = p.get(prefix + ".num_batches_tracked")
    if nbt is not None:
        call.new_buffers[prefix + ".num_batches_tracked"] = nbt.detach() + 1
    return y


def conv_of(bn_prefix: str) -> str:
    """The convolution a BatchNorm of a built-in conv family normalizes (names of cnn2d / cnn1d / resnet)."""
    head, _, leaf = bn_prefix.rpartition(".")
    if bn_prefix.startswith("norms."):
        return "convs." + leaf
    if leaf == "1" and head.endswith("downsample"):
        return head + ".0"
    return (head + "." if head else "") + "conv" + leaf[2:]


def fold_for_eval(params: dict, eps: float) -> None:
    """Fold every BatchNorm into its convolution, in place in a prepared params dict (evaluation only).

    In eval mode conv -> BN is one conv with kernel W * s and bias beta + (b - mean) * s,
    s = gamma / sqrt(var + eps): the forward then skips one pass over every BN's activations. The
    prepared kernel ("name:conv") and bias ("name:bias") replace the originals; "prefix:folded" tells
    batch_norm() to pass its input through, and refuse train mode.
    """
    from wsl.functional.conv import conv_weight

    for name in [n for n in params if n.endswith(".running_mean")]:
        prefix = name[:-len(".running_mean")]
        conv = conv_of(prefix)
        w = params[conv + ".weight"]
        N, C = w.shape[0], w.shape[1]
        s = params[prefix + ".weight"].double() / (params[prefix + ".running_var"].double() + eps).sqrt()
        bias = params.get(conv + ".bias")
        shift = (bias.double() if bias is not None else 0.0) - params[prefix + ".running_mean"].double()
        folded = {conv + ".weight": (w.double() * s.reshape(N, C, *([1] * (w.dim() - 2)))).to(w.dtype)}
        params[conv + ".weight:conv"] = conv_weight(folded, conv + ".weight")
        params[conv + ".bias:folded"] = (params[prefix + ".bias"].double() + shift * s).to(w.dtype).reshape(N * C)
        params[prefix + ":folded"] = torch.ones(())
