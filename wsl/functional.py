"""Batched, differentiable forward of a population of models that share one layout.

    out = population_forward(layout, params, x)            # [N, B, out]

`params` maps each parameter name to a tensor [N, *shape] (for example the views
`layout.unflatten(flat)` returns for a [N, P] tensor, or leaf tensors with
`requires_grad=True`: everything here is differentiable, so the population
trainer and the landscape metrics backpropagate through it).

Why hand-batched code instead of `vmap(functional_call)`: on CPU a naive vmap
of small models was slower than a Python loop over `load_state_dict`
(DESIGN.md). What makes a population fast is the shape of the work:

- MLP / SIREN, shared input: the first layer is ONE GEMM over all models,
  x [B, in] @ W_all^T with W stacked to [N*out, in] (the input is read once);
  later layers are one `torch.baddbmm` each.
- CNNs: models are stacked along the channel axis and run as grouped
  convolutions (`groups=N`); with a shared input the first conv is a single
  convolution with N*C_out output channels.
- Transformer: hand-batched too (embedding is one GEMM for a shared input,
  attention and MLPs are batched matmuls over [N, ...]).
- Anything else (an architecture registered by a third party) falls back to
  `torch.func.functional_call` under `vmap`.

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

import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from store.errors import UserError
from store.layout import ParamLayout, build_architecture

__all__ = ["population_forward", "prepare_params", "full_config", "dropout_sites", "bernoulli_masks", "check_input",
           "FAST_PATHS"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}

FAST_PATHS = ("mlp", "siren", "cnn2d", "cnn1d", "transformer")

MaskSource = Mapping[int, torch.Tensor] | Callable[[int, tuple], torch.Tensor] | None

# Grouped convolutions in channels-last memory format (oneDNN's fast path on CPU); a switch for comparisons.
CONV_CHANNELS_LAST = True

_CONFIG_CACHE: dict[str, dict[str, Any]] = {}
_MODULE_CACHE: dict[str, torch.nn.Module] = {}


# --------------------------------------------------------------------------- config
def full_config(layout: ParamLayout) -> dict[str, Any]:
    """The layout's architecture config with every default filled in.

    `layout.arch` may hold only what the user gave (ParamLayout.from_config
    stores the config as passed); the module the registry builds carries the
    complete one in `arch_config`.
    """
    if layout.arch is None:
        raise UserError(f"layout {layout.layout_id} has no architecture config",
                        "build the layout with ParamLayout.from_config or pass arch=")
    cfg = _CONFIG_CACHE.get(layout.layout_id)
    if cfg is None:
        module = _module_for(layout)
        cfg = dict(getattr(module, "arch_config", None) or layout.arch)
        cfg.setdefault("name", layout.arch.get("name"))
        _CONFIG_CACHE[layout.layout_id] = cfg
    return cfg


def _module_for(layout: ParamLayout) -> torch.nn.Module:
    m = _MODULE_CACHE.get(layout.layout_id)
    if m is None:
        m = build_architecture(layout.arch)
        _MODULE_CACHE[layout.layout_id] = m
    return m


# In-place variants, used when autograd is off (evaluation): they save one pass over memory.
_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "silu": lambda t: F.silu(t, inplace=True),
    "leaky_relu": F.leaky_relu_,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name` (architecture configs name them); UserError if unknown."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}", f"use one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation; in place when autograd is off (callers only pass fresh tensors)."""
    fn = activation(name)
    if not torch.is_grad_enabled() and name in _INPLACE:
        return _INPLACE[name]
    return fn


# --------------------------------------------------------------------------- inputs
def _population_size(layout: ParamLayout, params: Mapping[str, torch.Tensor]) -> int:
    if not isinstance(params, Mapping):
        raise UserError(f"params is a {type(params).__name__}",
                        "pass a dict name -> [N, *shape], e.g. layout.unflatten(weights)")
    missing = [n for n in layout.names if n not in params]
    if missing:
        raise UserError(f"params lack {missing[:5]} of layout {layout.layout_id}",
                        "pass every parameter of the layout (layout.unflatten(weights) gives them)")
    n = None
    for e in layout.entries:
        t = params[e.name]
        if tuple(t.shape[1:]) != e.shape or t.dim() != len(e.shape) + 1:
            raise UserError(f"parameter {e.name!r} has shape {tuple(t.shape)}, layout expects [N, *{list(e.shape)}]",
                            "stack the models' parameters along a leading population axis")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise UserError(f"parameter {e.name!r} has {t.shape[0]} models, others have {n}",
                            "give every parameter the same population size N")
    return int(n)


def check_input(layout: ParamLayout, x: torch.Tensor, n_models: int | None = None, shared_input: bool = True) -> None:
    """Raise UserError when x's per-sample shape cannot feed the layout's architecture."""
    cfg = full_config(layout)
    name = cfg["name"]
    if shared_input:
        sample = tuple(x.shape[1:])
    else:
        if x.dim() < 2 or (n_models is not None and x.shape[0] != n_models):
            raise UserError(f"input of shape {tuple(x.shape)} is not [N={n_models}, B, ...]",
                            "give each model its own batch, or pass shared_input=True with x [B, ...]")
        sample = tuple(x.shape[2:])
    numel = math.prod(sample)
    want = None
    if name in ("mlp", "siren"):
        if numel != cfg["in_features"]:
            want = f"{cfg['in_features']} input features"
    elif name == "cnn2d":
        c, s = cfg.get("in_channels", 1), cfg["image_size"]
        if sample != (c, s, s):
            want = f"images [{c}, {s}, {s}]"
    elif name == "cnn1d":
        c, L = cfg.get("in_channels", 1), cfg["length"]
        if sample != (c, L) and not (c == 1 and sample == (L,)):
            want = f"sequences [{c}, {L}]"
    elif name == "transformer":
        if numel != cfg["seq_len"] * cfg["token_dim"]:
            want = f"{cfg['seq_len']} x {cfg['token_dim']} = {cfg['seq_len'] * cfg['token_dim']} values"
    if want is not None:
        raise UserError(f"inputs of shape {list(sample)} do not fit {name} layout {layout.layout_id}, which takes {want}",
                        "evaluate on the dataset the models were built for (or build the layout for this dataset)")


# --------------------------------------------------------------------------- dropout
def dropout_sites(layout: ParamLayout, batch: int, n_models: int = 1) -> list[tuple[int, tuple[int, ...]]]:
    """[(site, mask shape)] of the dropout sites the forward uses (see the module docstring)."""
    cfg = full_config(layout)
    name = cfg["name"]
    N, B = n_models, batch
    if name == "mlp":
        return [(i, (N, B, cfg["width"])) for i in range(cfg["depth"])]
    if name == "cnn2d":
        feat = layout["head.weight"].shape[1] if cfg["hidden"] == 0 else layout["fc.weight"].shape[1]
        sites = [(0, (N, B, feat))]
        if cfg["hidden"] > 0:
            sites.append((1, (N, B, cfg["hidden"])))
        return sites
    if name == "cnn1d":
        return [(0, (N, B, layout["head.weight"].shape[1]))]
    if name == "transformer":
        T, D, r = cfg["seq_len"], cfg["width"], cfg["mlp_ratio"]
        out = []
        for j in range(cfg["depth"]):
            out += [(2 * j, (N, B, T, D)), (2 * j + 1, (N, B, T, r * D))]
        return out
    return []


def bernoulli_masks(p: float, generators: Sequence[torch.Generator], device: str | torch.device | None = None,
                    ) -> Callable[[int, tuple], torch.Tensor]:
    """A `dropout_masks` callable: model i's keep-masks come from generators[i] (keep prob 1 - p)."""
    gens = list(generators)

    def draw(site: int, shape: tuple) -> torch.Tensor:
        if shape[0] != len(gens):
            raise UserError(f"dropout mask for {shape[0]} models but {len(gens)} generators",
                            "give one torch.Generator per model")
        dev = device if device is not None else gens[0].device
        return torch.stack([torch.rand(shape[1:], generator=g, device=dev) >= p for g in gens])

    return draw


class _Dropout:
    """Applies the caller's masks at numbered sites (identity when off)."""

    def __init__(self, p: float, train: bool, masks: MaskSource):
        self.p = float(p)
        self.on = bool(train) and self.p > 0
        self.masks = masks

    def __call__(self, site: int, h: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return h
        shape = tuple(h.shape)
        if self.masks is None:
            m = torch.rand(shape, device=h.device) >= self.p
        elif callable(self.masks):
            m = self.masks(site, shape)
        else:
            if site not in self.masks:
                raise UserError(f"no dropout mask for site {site}", "give a mask for every site in dropout_sites(layout, B)")
            m = self.masks[site]
        if tuple(m.shape) != shape:
            raise UserError(f"dropout mask for site {site} has shape {tuple(m.shape)}, expected {shape}",
                            "use dropout_sites(layout, B, N) for the shapes")
        return h * (m.to(h.dtype) / (1.0 - self.p))


# --------------------------------------------------------------------------- MLP / SIREN
def _wt(params, name: str) -> torch.Tensor:
    """W^T [N, in, out]: the contiguous copy `prepare_params` made, else a transposed view."""
    t = params.get(name + ":T")
    return t if t is not None else params[name].transpose(1, 2)


def _lin(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wt: torch.Tensor | None = None,
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


def _linear(h: torch.Tensor, params, prefix: str, batch_last: bool = False) -> torch.Tensor:
    return _lin(h, params[prefix + ".weight"], params[prefix + ".bias"], _wt(params, prefix + ".weight"), batch_last)


def _dense_stack(params, n_layers: int, x: torch.Tensor, shared: bool, hidden_fn, drop: _Dropout | None,
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
        h = _linear(x, params, "layers.0", batch_last and n_layers == 1)
    for i in range(1, n_layers):
        h = hidden_fn(i - 1, h)
        if drop is not None:
            h = drop(i - 1, h)
        if features and i == n_layers - 1:
            return h
        h = _linear(h, params, f"layers.{i}", batch_last and i == n_layers - 1)
    return h


def _n_linear(params, prefix: str = "layers") -> int:
    i = 0
    while f"{prefix}.{i}.weight" in params:
        i += 1
    return i


def _mlp(layout, cfg, params, x, shared, train, masks, features, batch_last):
    act = _act(cfg.get("activation", "relu"))
    drop = _Dropout(cfg.get("dropout", 0.0), train, masks)
    n = _n_linear(params)
    return _dense_stack(params, n, x, shared, lambda i, h: act(h), drop, features, batch_last)


def _siren(layout, cfg, params, x, shared, train, masks, features, batch_last):
    w0 = float(cfg.get("w0", 30.0))
    n = _n_linear(params)
    return _dense_stack(params, n, x, shared, lambda i, h: torch.sin(w0 * h), None, features, batch_last)


# --------------------------------------------------------------------------- CNNs
def _stacked_input(x: torch.Tensor, shared: bool, channel_dims: int) -> tuple[torch.Tensor, int]:
    """Shared: x stays [B, C, ...]. Per-model [N, B, C, ...] -> [B, N*C, ...]. Returns (x, B)."""
    if shared:
        return x, x.shape[0]
    N, B = x.shape[0], x.shape[1]
    spatial = x.shape[3:]
    return x.transpose(0, 1).reshape(B, N * x.shape[2], *spatial), B


def _conv_stack(params, prefix, x, shared, N, act, post, dims: int, stride: int, padding: int):
    """Grouped-conv stack in channels-last memory format.

    x: [B, C, *spatial] (shared input) or [B, N*C, *spatial] (models stacked along channels).
    Returns [B, N*C_last, *spatial']. 1-D convs run as 2-D ones with height 1: oneDNN's channels-last
    grouped convolution was 2-4x faster here than the default layout (and than the per-model loop),
    its grouped conv1d in the default layout half as fast as the loop.
    """
    cl = torch.channels_last if CONV_CHANNELS_LAST else torch.contiguous_format
    if dims == 1:
        x = x.unsqueeze(2)
        st, pd = (1, stride), (0, padding)
    else:
        st, pd = stride, padding
    x = x.contiguous(memory_format=cl)
    i = 0
    while f"{prefix}.{i}.weight" in params:
        w, b = params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"]
        cout = w.shape[1]
        w_all = w.reshape(N * cout, *w.shape[2:])
        if dims == 1:
            w_all = w_all.unsqueeze(2)
        groups = 1 if (i == 0 and shared) else N
        y = F.conv2d(x, w_all.contiguous(memory_format=cl), b.reshape(N * cout), stride=st, padding=pd, groups=groups)
        x = post(act(y))
        i += 1
    return x.squeeze(2) if dims == 1 else x


def _cnn2d(layout, cfg, params, x, shared, train, masks, features, batch_last):
    N = params["head.weight"].shape[0]
    act = _act(cfg.get("activation", "relu"))
    drop = _Dropout(cfg.get("dropout", 0.0), train, masks)
    pooling = cfg.get("pooling", "max")
    k = int(cfg.get("kernel", 3))
    if shared and x.dim() == 3:
        x = x.unsqueeze(1)

    def pool(h):
        if pooling == "none" or h.shape[-1] < 2:
            return h
        return F.max_pool2d(h, 2) if pooling == "max" else F.avg_pool2d(h, 2)

    h, B = _stacked_input(x, shared, 2)
    h = _conv_stack(params, "convs", h, shared, N, act, pool, dims=2, stride=1, padding=k // 2)
    h = h.reshape(B, N, -1).transpose(0, 1)  # [N, B, F]
    h = drop(0, h)
    if "fc.weight" in params:
        h = drop(1, act(_linear(h, params, "fc")))
    if features:
        return h
    return _linear(h, params, "head", batch_last)


def _cnn1d(layout, cfg, params, x, shared, train, masks, features, batch_last):
    N = params["head.weight"].shape[0]
    act = _act(cfg.get("activation", "relu"))
    drop = _Dropout(cfg.get("dropout", 0.0), train, masks)
    stride = int(cfg.get("stride", 2))
    if shared and x.dim() == 2:
        x = x.unsqueeze(1)
    if not shared and x.dim() == 3:
        x = x.unsqueeze(2)
    h, B = _stacked_input(x, shared, 1)
    h = _conv_stack(params, "convs", h, shared, N, act, lambda t: t, dims=1, stride=stride, padding=1)
    h = drop(0, h.reshape(B, N, -1).transpose(0, 1))
    if features:
        return h
    return _linear(h, params, "head", batch_last)


# --------------------------------------------------------------------------- transformer
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


def _transformer(layout, cfg, params, x, shared, train, masks, features, batch_last):
    N = params["head.weight"].shape[0]
    T, tok, D, H = cfg["seq_len"], cfg["token_dim"], cfg["width"], cfg["heads"]
    act = _act(cfg.get("activation", "gelu"))
    drop = _Dropout(cfg.get("dropout", 0.0), train, masks)
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
        a = drop(2 * j + 1, act(_linear_tokens(F.layer_norm(h, (D,), eps=1e-5), w1, b1)))
        h = residual(h, _linear_tokens(a, params[p + "fc2.weight"], params[p + "fc2.bias"]))
        j += 1
    if features:
        return _layer_norm(h, params["norm.weight"], params["norm.bias"]).mean(2)  # [N, B, D]
    wh, bh = _fold_norm(params["norm.weight"], params["norm.bias"], params["head.weight"], params["head.bias"])
    return _lin(F.layer_norm(h, (D,), eps=1e-5).mean(2), wh, bh, batch_last=batch_last)


# --------------------------------------------------------------------------- generic fallback
def _generic(layout, cfg, params, x, shared, train, masks, features, batch_last):
    """vmap(functional_call) over the population: works for any registered architecture."""
    from torch.func import functional_call, vmap

    module = _module_for(layout)
    module.train(bool(train))
    if features and not hasattr(module, "features"):
        raise UserError(f"architecture {cfg.get('name')!r} has no features() method", "use features=False")

    def one(p, xb):
        if features:
            return _call_features(module, p, xb)
        return functional_call(module, p, (xb,))

    p = {n: params[n] for n in layout.names}
    in_dims = (0, None if shared else 0)
    out = vmap(one, in_dims=in_dims, randomness="different" if train else "error")(p, x)
    return out.transpose(1, 2).contiguous() if batch_last and not features else out


def _call_features(module, p, xb):
    from torch.func import functional_call

    class _Feat(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m.features(t)

    return functional_call(_Feat(module), {f"m.{k}": v for k, v in p.items()}, (xb,))


_FORWARDS = {"mlp": _mlp, "siren": _siren, "cnn2d": _cnn2d, "cnn1d": _cnn1d, "transformer": _transformer}


# --------------------------------------------------------------------------- entry point
def prepare_params(layout: ParamLayout, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """params made contiguous per tensor, plus a contiguous W^T ("name:T") of every per-model matrix
    the forward multiplies from the right.

    For repeated forwards of the same population (evaluation over many input tiles): the views
    `layout.unflatten` returns are strided across models, so stacking a layer's weights to
    [N * out, in] would copy them on every call, and a transposed weight view makes each bmm ~1.5x
    slower on CPU. Here the copies are paid once per cohort. Not for training (they would be stale
    after an optimizer step).
    """
    out = {name: t.contiguous() for name, t in params.items()}
    for e in layout.entries:
        if len(e.shape) == 2 and e.name.endswith(".weight") and not e.name.startswith("layers.0."):
            out[e.name + ":T"] = out[e.name].transpose(1, 2).contiguous()
    return out


def population_forward(layout: ParamLayout, params: Mapping[str, torch.Tensor], x: torch.Tensor, *,
                       shared_input: bool = True, train: bool = False, dropout_masks: MaskSource = None,
                       features: bool = False, generic: bool = False, batch_last: bool = False) -> torch.Tensor:
    """Forward N models of `layout` at once. Returns [N, B, out] (or [N, B, H] with features=True).

    params: name -> [N, *shape]. x: [B, *in] with shared_input=True (one batch for
    every model), else [N, B, *in] (each model its own batch). train=True applies
    dropout with the caller's masks (module docstring); no BatchNorm exists, so
    without dropout train and eval agree. generic=True forces the vmap fallback
    (for testing and for comparison). batch_last=True returns the logits as
    [N, out, B] (contiguous): the layout the fused evaluator's loss reads fastest.
    """
    cfg = full_config(layout)
    n = _population_size(layout, params)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError("input x must be a floating-point tensor", "convert the inputs with .float()")
    check_input(layout, x, n, shared_input)
    fwd = None if generic else _FORWARDS.get(cfg["name"])
    if fwd is None:
        fwd = _generic
    return fwd(layout, cfg, params, x, shared_input, train, dropout_masks, features, batch_last and not features)
