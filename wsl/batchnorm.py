"""Operations on BatchNorm models as weight vectors: folding BN into the convolutions, recomputing statistics.

    folded, plain = fold_batchnorm(weights, layout)     # the same eval-mode function, without BatchNorm
    fixed = reset_running_stats(averaged, layout, x)    # each model's own statistics on inputs x

`fold_batchnorm`: in eval mode a BatchNorm after a convolution is a per-channel
affine map, so conv -> BN equals one conv with W' = W * s and b' = beta + (b -
mean) * s, s = gamma / sqrt(var + eps) (per output channel). The result is a
layout of the same architecture with `batchnorm = false` (convolutions with
biases, no BN): cnn2d, cnn1d, resnet and resnet1d. It preserves the eval-mode
outputs (up to float rounding; the arithmetic is float64) and is what re-basin
tools ask users to do before aligning; here alignment handles BN directly, so
folding is for export, for comparison with BN-free zoos, and for speed.

`reset_running_stats`: running statistics are a property of the weights and
the data, not something that averages or interpolates: the average of two
models' running variances is not the variance of the averaged model's
activations. After averaging, interpolating or generating weights of a BN
model, recompute its statistics on training inputs, as
`torch.optim.swa_utils.update_bn` does for one model: every model of the
population in one train-mode pass per batch, the statistics a cumulative
average over the batches (momentum 1/(k+1) for batch k), num_batches_tracked =
the number of batches. Parameters are untouched.
"""
from __future__ import annotations

import torch

from store.architectures import build_architecture
from store.errors import UserError
from store.layout import ParamLayout
from wsl.functional import full_config, population_forward
from wsl.functional.common import check_input

__all__ = ["fold_batchnorm", "reset_running_stats", "batchnorm_pairs"]

FOLDABLE = ("cnn2d", "cnn1d", "resnet", "resnet1d")


def batchnorm_pairs(layout: ParamLayout) -> list[tuple[str, str]]:
    """(conv prefix, BatchNorm prefix) of every conv -> BN pair of a built-in architecture."""
    cfg = full_config(layout)
    name = cfg["name"]
    if name not in FOLDABLE or not cfg.get("batchnorm", name.startswith("resnet")):
        raise UserError(f"layout {layout.layout_id} ({name}) has no BatchNorm to fold",
                        f"fold_batchnorm folds {', '.join(FOLDABLE)} models built with batchnorm = true")
    names = set(layout.names)
    if name in ("cnn2d", "cnn1d"):
        return [(f"convs.{i}", f"norms.{i}") for i in range(len(names)) if f"norms.{i}.weight" in names]
    pairs = [("conv1", "bn1")]
    for n in layout.names:
        pre, _, leaf = n.rpartition(".")
        if leaf != "weight" or not pre.startswith("layer"):
            continue
        if pre.endswith(".downsample.0"):
            pairs.append((pre, pre[:-1] + "1"))
        elif pre.rsplit(".", 1)[-1].startswith("conv"):
            k = pre.rsplit(".", 1)[-1][4:]
            pairs.append((pre, pre.rsplit(".", 1)[0] + f".bn{k}"))
    return pairs


def fold_batchnorm(weights: torch.Tensor, layout: ParamLayout) -> tuple[torch.Tensor, ParamLayout]:
    """Weights [N, P] (or [P]) of a BN model -> (weights of the same model without BN, its layout)."""
    w = layout.check_flat(weights)
    single = w.dim() == 1
    w = w.unsqueeze(0) if single else w
    cfg = full_config(layout)
    pairs = batchnorm_pairs(layout)
    plain_cfg = {k: v for k, v in cfg.items() if k not in ("bn_momentum", "bn_eps", "batchnorm")}
    if cfg["name"].startswith("resnet"):
        plain_cfg["batchnorm"] = False
    module = build_architecture(plain_cfg)
    plain = ParamLayout.from_module(module, getattr(module, "arch_config", plain_cfg))
    src = layout.unflatten(w.double())
    eps = float(cfg.get("bn_eps", 1e-5))
    out: dict[str, torch.Tensor] = {}
    for conv, bn in pairs:
        s = src[bn + ".weight"] / (src[bn + ".running_var"] + eps).sqrt()  # [N, C]
        kernel = src[conv + ".weight"]
        out[conv + ".weight"] = kernel * s.reshape(*s.shape, *([1] * (kernel.dim() - 2)))
        bias = src.get(conv + ".bias")
        shift = (bias if bias is not None else 0) - src[bn + ".running_mean"]
        out[conv + ".bias"] = src[bn + ".bias"] + shift * s
    for e in plain.entries:
        if e.name not in out:
            out[e.name] = src[e.name]
    folded = torch.cat([out[e.name].reshape(w.shape[0], -1) for e in plain.entries], 1).to(w.dtype)
    return (folded[0] if single else folded), plain


def reset_running_stats(weights: torch.Tensor, layout: ParamLayout, x: torch.Tensor, batch_size: int = 256
                        ) -> torch.Tensor:
    """Weights [N, P] with every model's BatchNorm statistics recomputed on inputs x [n, *in] (see above)."""
    w = layout.check_flat(weights)
    single = w.dim() == 1
    w = w.unsqueeze(0) if single else w
    if not layout.buffer_entries:
        raise UserError(f"layout {layout.layout_id} has no buffers (no BatchNorm statistics) to recompute",
                        "reset_running_stats is for models with BatchNorm")
    if not isinstance(x, torch.Tensor) or len(x) < 2:
        raise UserError("reset_running_stats needs a tensor of at least 2 inputs", "pass training inputs x [n, *in]")
    if int(batch_size) < 2:
        raise UserError(f"batch_size={batch_size}", "BatchNorm statistics need batches of 2 or more")
    check_input(layout, x[:1])
    x = x.to(w.device, w.dtype)
    params = layout.unflatten(w)
    starts = list(range(0, len(x), int(batch_size)))
    if len(x) - starts[-1] < 2 and len(starts) > 1:
        starts.pop()  # a last batch of one sample has no variance: merge it into the previous one
    bounds = [(s, starts[i + 1] if i + 1 < len(starts) else len(x)) for i, s in enumerate(starts)]
    buffers = None
    with torch.no_grad():
        for k, (a, b) in enumerate(bounds):
            cur = params if buffers is None else {**params, **buffers}
            _, buffers = population_forward(layout, cur, x[a:b], train=True, return_buffers=True,
                                            bn_momentum=1.0 / (k + 1))
    out = w.clone()
    for e in layout.buffer_entries:
        t = buffers[e.name]
        if e.name.endswith("num_batches_tracked"):
            t = torch.full_like(t, float(len(bounds)))
        out[:, e.offset:e.offset + e.numel] = t.reshape(w.shape[0], -1).to(w.dtype)
    return out[0] if single else out
