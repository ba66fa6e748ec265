"""CNNs (cnn2d, cnn1d): models stacked along the channel axis, run as grouped convolutions.

With a shared input the first conv is a single convolution with N*C_out output
channels; later convs use `groups=N`. 1-D convs run as 2-D ones with height 1:
oneDNN's channels-last grouped convolution was 2-4x faster here than the
default layout (and than the per-model loop), its grouped conv1d in the
default layout half as fast as the loop. BatchNorm (cnn2d / cnn1d with
batchnorm = true, and every ResNet) is one F.batch_norm over the stacked
channels (wsl/functional/batchnorm.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsl.functional.batchnorm import batch_norm
from wsl.functional.common import Call, Dropout, act
from wsl.functional.dense import linear

# Grouped convolutions in channels-last memory format (oneDNN's fast path on CPU); a switch for comparisons.
CONV_CHANNELS_LAST = True


def memory_format() -> torch.memory_format:
    return torch.channels_last if CONV_CHANNELS_LAST else torch.contiguous_format


def stacked_input(x: torch.Tensor, shared: bool) -> tuple[torch.Tensor, int]:
    """Shared: x stays [B, C, ...]. Per-model [N, B, C, ...] -> [B, N*C, ...]. Returns (x, B)."""
    if shared:
        return x, x.shape[0]
    N, B = x.shape[0], x.shape[1]
    spatial = x.shape[3:]
    return x.transpose(0, 1).reshape(B, N * x.shape[2], *spatial), B


def conv_weight(params, name: str) -> torch.Tensor:
    """Kernel `name` [N, C_out, C_in, *k] as one grouped kernel [N*C_out, C_in, (1,) *k] in the conv memory format
    (the copy prepare_params made, when there is one)."""
    t = params.get(name + ":conv")
    if t is not None:
        return t
    w = params[name]
    w_all = w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])
    if w.dim() == 4:  # a 1-D kernel [N, out, in, k] runs as a 2-D one of height 1
        w_all = w_all.unsqueeze(2)
    return w_all.contiguous(memory_format=memory_format())


def conv(params, name: str, h: torch.Tensor, N: int, stride: int, padding: int, groups: int) -> torch.Tensor:
    """One conv of every model: h [B, C_in or N*C_in, (1,) *spatial] -> [B, N*C_out, (1,) *spatial']."""
    w_all = conv_weight(params, name)
    bias = params.get(name[:-len("weight")] + "bias:folded")
    if bias is None:
        bias = params.get(name[:-len("weight")] + "bias")
    if bias is not None:
        bias = bias.reshape(-1)
    one_d = params[name].dim() == 4
    st, pd = ((1, stride), (0, padding)) if one_d else (stride, padding)
    return F.conv2d(h, w_all, bias, stride=st, padding=pd, groups=groups)


def _conv_stack(call: Call, x: torch.Tensor, N: int, a, post, dims: int, stride: int, padding: int):
    """convs.{i} (-> norms.{i}) -> act -> post, in channels-last memory format.

    x: [B, C, *spatial] (shared input) or [B, N*C, *spatial] (models stacked along channels).
    Returns [B, N*C_last, *spatial'].
    """
    params = call.params
    if dims == 1:
        x = x.unsqueeze(2)
    x = x.contiguous(memory_format=memory_format())
    i = 0
    while f"convs.{i}.weight" in params:
        y = conv(params, f"convs.{i}.weight", x, N, stride, padding, 1 if (i == 0 and call.shared) else N)
        if f"norms.{i}.running_mean" in params:
            y = batch_norm(call, y, f"norms.{i}", N)
        x = post(a(y))
        i += 1
    return x.squeeze(2) if dims == 1 else x


def cnn2d(call: Call, x: torch.Tensor) -> torch.Tensor:
    params, cfg = call.params, call.cfg
    N = params["head.weight"].shape[0]
    a = act(cfg.get("activation", "relu"))
    drop = Dropout(cfg.get("dropout", 0.0), call.train, call.masks)
    pooling = cfg.get("pooling", "max")
    k = int(cfg.get("kernel", 3))
    if call.shared and x.dim() == 3:
        x = x.unsqueeze(1)

    def pool(h):
        if pooling == "none" or h.shape[-1] < 2:
            return h
        return F.max_pool2d(h, 2) if pooling == "max" else F.avg_pool2d(h, 2)

    h, B = stacked_input(x, call.shared)
    h = _conv_stack(call, h, N, a, pool, dims=2, stride=1, padding=k // 2)
    h = h.reshape(B, N, -1).transpose(0, 1)  # [N, B, F]
    h = drop(0, h)
    if "fc.weight" in params:
        h = drop(1, a(linear(h, params, "fc")))
    if call.features:
        return h
    return linear(h, params, "head", call.batch_last)


def cnn1d(call: Call, x: torch.Tensor) -> torch.Tensor:
    params, cfg = call.params, call.cfg
    N = params["head.weight"].shape[0]
    a = act(cfg.get("activation", "relu"))
    drop = Dropout(cfg.get("dropout", 0.0), call.train, call.masks)
    stride = int(cfg.get("stride", 2))
    if call.shared and x.dim() == 2:
        x = x.unsqueeze(1)
    if not call.shared and x.dim() == 3:
        x = x.unsqueeze(2)
    h, B = stacked_input(x, call.shared)
    h = _conv_stack(call, h, N, a, lambda t: t, dims=1, stride=stride, padding=1)
    h = drop(0, h.reshape(B, N, -1).transpose(0, 1))
    if call.features:
        return h
    return linear(h, params, "head", call.batch_last)
