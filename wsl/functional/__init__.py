"""Batched, differentiable forward of a population of models that share one layout.

    out = population_forward(layout, params, x)            # [N, B, out]
    out, new_buffers = population_forward(layout, params, x, train=True, return_buffers=True)

`params` maps each tensor name to a tensor [N, *shape] (for example the views
`layout.unflatten(flat)` returns for a [N, P] tensor, or leaf tensors with
`requires_grad=True`: everything here is differentiable, so the population
trainer and the landscape metrics backpropagate through it). A layout with
buffers (BatchNorm running statistics) needs them too: in `params` (what
`layout.unflatten` gives) or in `buffers=`.

BatchNorm, exactly as `nn.Module` does it: `train=True` normalizes with each
model's own batch statistics and computes each model's updated running mean /
(unbiased) running var / num_batches_tracked, which `return_buffers=True`
returns as a dict name -> [N, *shape] (new tensors: the inputs are never
written); `train=False` normalizes with the running statistics it is given.
`bn_momentum` overrides the architecture's momentum for one call
(`wsl.reset_running_stats` uses it for a cumulative average).

Why hand-batched code instead of `vmap(functional_call)`: on CPU a naive vmap
of small models was slower than a Python loop over `load_state_dict`
(docs/design.md). What makes a population fast is the shape of the work:

- MLP / SIREN, shared input: the first layer is ONE GEMM over all models,
  x [B, in] @ W_all^T with W stacked to [N*out, in] (the input is read once);
  later layers are one `torch.baddbmm` each (dense.py).
- CNNs and ResNets: models are stacked along the channel axis and run as
  grouped convolutions (`groups=N`); with a shared input the first conv is a
  single convolution with N*C_out output channels; BatchNorm over the stacked
  channels is per-model BatchNorm (conv.py, resnet.py, batchnorm.py).
- Transformer: hand-batched too (embedding is one GEMM for a shared input,
  attention and MLPs are batched matmuls over [N, ...]) (transformer.py).
- Anything else (a registered architecture, a user's nn.Module) runs
  `torch.func.functional_call` under `vmap`, buffers included (generic.py).

The architecture is read from `layout.arch` (never by importing `zoo`): the
full config (defaults filled in) comes from the module the registry builds
for that config, cached per layout.

Dropout convention (train=True and the config has dropout > 0). Dropout sites
are numbered in forward order, and each site gets a keep-mask of shape
[N, B, *feature_shape] (bool or 0/1 float); the forward multiplies by
mask / (1 - p), exactly like `F.dropout`. Sites per architecture:

    mlp          site i after hidden layer i's activation, shape [N, B, width], i = 0..depth-1
    cnn2d        site 0 on the flattened conv features [N, B, F]; site 1 after fc [N, B, hidden]
    cnn1d        site 0 on the flattened conv features [N, B, F]
    transformer  block j: site 2j after the attention projection [N, B, T, D],
                 site 2j+1 after the MLP activation [N, B, T, mlp_ratio*D]

`dropout_masks` is a dict {site: mask} or a callable `(site, shape) -> mask`.
`bernoulli_masks(p, generators)` builds that callable from one
`torch.Generator` per model, so each model draws its masks from its own seed
(model i's masks do not depend on which cohort it runs in). Without
`dropout_masks`, masks come from torch's global RNG. `dropout_sites(layout, B)`
lists the sites and shapes.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from store.errors import UserError
from store.layout import ParamLayout
from wsl.functional.common import (ACTIVATIONS, FAST_PATHS, Call, MaskSource, activation, bernoulli_masks,  # noqa: F401
                                   check_input, dropout_sites, full_config, module_for, population_size, probe_output)
from wsl.functional.conv import cnn1d, cnn2d
from wsl.functional.dense import mlp, siren
from wsl.functional.generic import generic as _generic_forward
from wsl.functional.resnet import resnet
from wsl.functional.transformer import transformer

__all__ = ["population_forward", "prepare_params", "full_config", "dropout_sites", "bernoulli_masks", "check_input",
           "FAST_PATHS", "activation", "ACTIVATIONS"]

_FORWARDS: dict[str, Callable[[Call, torch.Tensor], torch.Tensor]] = {
    "mlp": mlp, "siren": siren, "cnn2d": cnn2d, "cnn1d": cnn1d, "transformer": transformer,
    "resnet": resnet, "resnet1d": resnet,
}
_CONV_FAMILIES = ("cnn2d", "cnn1d", "resnet", "resnet1d")


def prepare_params(layout: ParamLayout, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """params made contiguous per tensor, plus the copies repeated forwards would otherwise make per call:
    a contiguous W^T ("name:T") of every per-model matrix the forward multiplies from the right, and for
    the conv families every kernel as one grouped kernel in the conv memory format ("name:conv").

    For repeated forwards of the same population (evaluation over many input tiles): the views
    `layout.unflatten` returns are strided across models, so stacking a layer's weights to
    [N * out, in] would copy them on every call, and a transposed weight view makes each bmm ~1.5x
    slower on CPU. Here the copies are paid once per cohort. Not for training (they would be stale
    after an optimizer step, and BatchNorm is folded into the convolutions: eval mode only, which
    saves a pass over every BN's activations; the outputs equal the unfolded ones to float rounding).
    """
    from wsl.functional.batchnorm import fold_for_eval
    from wsl.functional.conv import conv_weight

    out = {name: t.contiguous() for name, t in params.items()}
    conv_family = (layout.arch or {}).get("name") in _CONV_FAMILIES
    for e in layout.param_entries:
        if len(e.shape) == 2 and e.name.endswith(".weight") and not e.name.startswith("layers.0."):
            out[e.name + ":T"] = out[e.name].transpose(1, 2).contiguous()
        elif conv_family and len(e.shape) in (3, 4) and e.name.endswith(".weight"):
            out[e.name + ":conv"] = conv_weight(out, e.name)
    if conv_family and layout.buffer_entries:
        fold_for_eval(out, float(full_config(layout).get("bn_eps", 1e-5)))
    return out


def population_forward(layout: ParamLayout, params: Mapping[str, torch.Tensor], x: torch.Tensor, *,
                       shared_input: bool = True, train: bool = False, dropout_masks: MaskSource = None,
                       features: bool = False, generic: bool = False, batch_last: bool = False,
                       buffers: Mapping[str, torch.Tensor] | None = None, return_buffers: bool = False,
                       bn_momentum: float | None = None):
    """Forward N models of `layout` at once. Returns [N, B, out] (or [N, B, H] with features=True).

    params: name -> [N, *shape] (buffers included, or given as `buffers`). x: [B, *in] with
    shared_input=True (one batch for every model), else [N, B, *in] (each model its own batch).
    train=True: dropout with the caller's masks (module docstring) and BatchNorm with per-model
    batch statistics; train=False: no dropout, BatchNorm with the running statistics.
    return_buffers=True returns (out, {buffer name: [N, *shape]}): in train mode the running
    statistics after this batch, in eval mode the ones given. generic=True forces the vmap fallback
    (for testing and for comparison). batch_last=True returns the logits as [N, out, B]
    (contiguous): the layout the fused evaluator's loss reads fastest.
    """
    cfg = full_config(layout)
    if buffers is not None:
        params = {**params, **buffers}
    n = population_size(layout, params)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError("input x must be a floating-point tensor", "convert the inputs with .float()")
    if bn_momentum is not None and not 0.0 < float(bn_momentum) <= 1.0:
        raise UserError(f"bn_momentum={bn_momentum!r}", "give a momentum in (0, 1]")
    check_input(layout, x, n, shared_input)
    fwd = None if generic else _FORWARDS.get(cfg["name"])
    call = Call(layout, cfg, params, shared_input, train, dropout_masks, features, batch_last and not features,
                None if bn_momentum is None else float(bn_momentum))
    out = (fwd or _generic_forward)(call, x)
    if not return_buffers:
        return out
    new = {e.name: call.new_buffers.get(e.name, params[e.name]) for e in layout.buffer_entries}
    return out, new

