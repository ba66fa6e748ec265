"""ResNets (resnet, resnet1d), hand-batched: grouped convolutions over the stacked channels of N models,
BatchNorm over the same stacked channels (per-model statistics), residual adds on the stacked tensor.

Mirrors zoo's ResNet module op for op (stem conv -> BN -> ReLU; BasicBlocks
conv -> BN -> ReLU -> conv -> BN, + shortcut, -> ReLU; global average pool;
Linear head); a 1-D ResNet runs as a 2-D one of height 1, like cnn1d.
Without autograd the residual add and the ReLUs run in place.
"""
from __future__ import annotations

import torch

from wsl.functional.batchnorm import batch_norm
from wsl.functional.common import Call, act
from wsl.functional.conv import conv, memory_format, stacked_input
from wsl.functional.dense import linear


def resnet(call: Call, x: torch.Tensor) -> torch.Tensor:
    params, cfg = call.params, call.cfg
    one_d = cfg["name"] == "resnet1d"
    N = params["fc.weight"].shape[0]
    relu = act("relu")
    inplace = not torch.is_grad_enabled()
    bn = bool(cfg.get("batchnorm", True))

    def norm(h, prefix):
        return batch_norm(call, h, prefix, N) if bn else h

    if one_d:  # [B, L] / [B, C, L] or [N, B, L] / [N, B, C, L] -> a channel axis, then height 1
        if call.shared and x.dim() == 2:
            x = x.unsqueeze(1)
        if not call.shared and x.dim() == 3:
            x = x.unsqueeze(2)
    h, B = stacked_input(x, call.shared)
    if one_d:
        h = h.unsqueeze(2)
    h = h.contiguous(memory_format=memory_format())
    h = relu(norm(conv(params, "conv1.weight", h, N, 1, 1, 1 if call.shared else N), "bn1"))
    for s, n_blocks in enumerate(cfg["blocks"]):
        for j in range(n_blocks):
            pre = f"layer{s + 1}.{j}."
            stride = 2 if (s > 0 and j == 0) else 1
            out = relu(norm(conv(params, pre + "conv1.weight", h, N, stride, 1, N), pre + "bn1"))
            out = norm(conv(params, pre + "conv2.weight", out, N, 1, 1, N), pre + "bn2")
            if pre + "downsample.0.weight" in params:
                short = norm(conv(params, pre + "downsample.0.weight", h, N, stride, 0, N), pre + "downsample.1")
            else:
                short = h
            h = relu(out.add_(short) if inplace else out + short)
    f = h.mean((2, 3)).view(B, N, -1).transpose(0, 1)  # global average pool -> [N, B, C]
    if call.features:
        return f
    return linear(f, params, "fc", call.batch_last)
