"""What every family's batched forward shares: configs, activations, input checks, dropout, BatchNorm state."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from store.errors import UserError
from store.architectures import check_trusted
from store.layout import ParamLayout, build_architecture

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}

# families with a hand-batched forward; any other architecture runs through generic.py (vmap(functional_call))
FAST_PATHS = ("mlp", "siren", "cnn2d", "cnn1d", "transformer", "resnet", "resnet1d")

MaskSource = Mapping[int, torch.Tensor] | Callable[[int, tuple], torch.Tensor] | None

_CONFIG_CACHE: dict[str, dict[str, Any]] = {}
_MODULE_CACHE: dict[str, torch.nn.Module] = {}
_PROBE_CACHE: dict[tuple, tuple[int, ...]] = {}


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
    check_trusted(layout.arch)
    cfg = _CONFIG_CACHE.get(layout.layout_id)
    if cfg is None:
        module = module_for(layout)
        cfg = dict(getattr(module, "arch_config", None) or layout.arch)
        cfg.setdefault("name", layout.arch.get("name"))
        _CONFIG_CACHE[layout.layout_id] = cfg
    return cfg


def module_for(layout: ParamLayout) -> torch.nn.Module:
    """One module of the layout's architecture, built once per layout (its values are never used)."""
    check_trusted(layout.arch)
    m = _MODULE_CACHE.get(layout.layout_id)
    if m is None:
        m = build_architecture(layout.arch)
        got = ParamLayout.from_module(m, layout.arch)
        if got.names != layout.names or got.shapes != layout.shapes:
            raise UserError(f"architecture config of layout {layout.layout_id} builds a module whose parameters or "
                            f"buffers differ from the layout's ({len(got)} tensors vs {len(layout)})",
                            "use the layout the weights were stored with (ZooStore.layout), or rebuild it")
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


def act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation; in place when autograd is off (callers only pass fresh tensors)."""
    fn = activation(name)
    if not torch.is_grad_enabled() and name in _INPLACE:
        return _INPLACE[name]
    return fn


# --------------------------------------------------------------------------- inputs
def population_size(layout: ParamLayout, params: Mapping[str, torch.Tensor]) -> int:
    if not isinstance(params, Mapping):
        raise UserError(f"params is a {type(params).__name__}",
                        "pass a dict name -> [N, *shape], e.g. layout.unflatten(weights)")
    missing = [n for n in layout.names if n not in params]
    if missing:
        buffers = [n for n in missing if n in set(layout.buffer_names)]
        raise UserError(f"params lack {missing[:5]} of layout {layout.layout_id}",
                        "pass every parameter of the layout (layout.unflatten(weights) gives them)" + (
                            "; BatchNorm statistics are buffers: pass them in params or as buffers=" if buffers else ""))
    n = None
    for e in layout.entries:
        t = params[e.name]
        if tuple(t.shape[1:]) != e.shape or t.dim() != len(e.shape) + 1:
            raise UserError(f"{'buffer' if e.buffer else 'parameter'} {e.name!r} has shape {tuple(t.shape)}, "
                            f"layout expects [N, *{list(e.shape)}]",
                            "stack the models' parameters along a leading population axis")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise UserError(f"parameter {e.name!r} has {t.shape[0]} models, others have {n}",
                            "give every parameter the same population size N")
    return int(n)


def _image_hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


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
    elif name in ("cnn2d", "resnet"):
        c, (h, w) = cfg.get("in_channels", 1), _image_hw(cfg["image_size"])
        if sample != (c, h, w):
            want = f"images [{c}, {h}, {w}]"
    elif name in ("cnn1d", "resnet1d"):
        c, L = cfg.get("in_channels", 1), cfg["length"]
        if sample != (c, L) and not (c == 1 and sample == (L,)):
            want = f"sequences [{c}, {L}]"
    elif name == "transformer":
        if numel != cfg["seq_len"] * cfg["token_dim"]:
            want = f"{cfg['seq_len']} x {cfg['token_dim']} = {cfg['seq_len'] * cfg['token_dim']} values"
    else:
        probe_output(layout, sample, x.dtype)
    if want is not None:
        raise UserError(f"inputs of shape {list(sample)} do not fit {name} layout {layout.layout_id}, which takes {want}",
                        "evaluate on the dataset the models were built for (or build the layout for this dataset)")


def probe_output(layout: ParamLayout, sample: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[int, ...]:
    """Per-sample output shape of a generic architecture on inputs of shape `sample` (one cached eval-mode
    forward of the layout's module on zeros); UserError when the module does not take such inputs."""
    key = (layout.layout_id, tuple(sample))
    if key not in _PROBE_CACHE:
        module = module_for(layout)
        was = module.training
        try:
            with torch.no_grad():
                out = module.eval()(torch.zeros((2, *sample), dtype=layout.torch_dtype))
        except Exception as e:
            raise UserError(f"inputs of shape {list(sample)} do not fit {layout.arch.get('name')} layout "
                            f"{layout.layout_id} ({type(e).__name__}: {e})",
                            "evaluate on the dataset the models were built for") from None
        finally:
            module.train(was)
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 2:
            raise UserError(f"the module of layout {layout.layout_id} does not return one output row per sample",
                            "make forward() return a [batch, outputs] tensor")
        _PROBE_CACHE[key] = tuple(out.shape[1:])
    return _PROBE_CACHE[key]


# --------------------------------------------------------------------------- dropout
def dropout_sites(layout: ParamLayout, batch: int, n_models: int = 1) -> list[tuple[int, tuple[int, ...]]]:
    """[(site, mask shape)] of the dropout sites the forward uses (see the package docstring)."""
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


class Dropout:
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


class Call:
    """Everything one population_forward call hands a family's forward."""

    def __init__(self, layout: ParamLayout, cfg: dict, params: Mapping[str, torch.Tensor], shared: bool, train: bool,
                 masks: MaskSource, features: bool, batch_last: bool, bn_momentum: float | None):
        self.layout, self.cfg, self.params = layout, cfg, params
        self.shared, self.train, self.masks = shared, bool(train), masks
        self.features, self.batch_last = features, batch_last
        self.bn_momentum = bn_momentum
        self.new_buffers: dict[str, torch.Tensor] = {}  # train mode: running statistics after this batch
