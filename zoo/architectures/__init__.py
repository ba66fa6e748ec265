"""Architectures built from plain config dicts.

Every config is a dict with a "name" and the knobs of that family; `width` is
a parameter of every built-in family (it is the "load" axis of phase diagrams).

    build({"name": "mlp", "in_features": 64, "out_features": 10, "width": 32, "depth": 2})

`config_for(dataset, {"name": "cnn2d", "width": 8})` fills in the input and
output sizes from a dataset. `REGISTRY` is exposed through the
`wsl.architectures` entry point so `ParamLayout.build_module()` finds it.

Families (one module each): dense (mlp, siren), conv (cnn2d, cnn1d, with
optional BatchNorm), transformer, resnet (resnet, resnet1d: residual networks
with BatchNorm), module (any nn.Module named by an import path). Names
registered at run time with `wsl.register_architecture(name, builder)` build
too; their configs are passed through as given. docs/architectures.md lists
every family, its keys and its symmetries.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from store.architectures import build_architecture, is_registered
from store.errors import UserError
from wsl.data import Dataset
from zoo.architectures.common import INITS, WITH_BATCHNORM, apply_init, take as _take  # noqa: F401 (re-exported)
from zoo.architectures.conv import CNN1d, CNN2d, build_cnn1d, build_cnn2d
from zoo.architectures.dense import MLP, Siren, build_mlp, build_siren
from zoo.architectures.module import build_module_arch
from zoo.architectures.resnet import BasicBlock, ResNet, build_resnet, build_resnet1d
from zoo.architectures.transformer import EncoderBlock, Transformer, build_transformer

__all__ = ["REGISTRY", "build", "build_for", "config_for", "check_fits", "MLP", "Siren", "CNN2d", "CNN1d",
           "Transformer", "EncoderBlock", "ResNet", "BasicBlock", "apply_init", "INITS", "WITH_BATCHNORM"]

REGISTRY: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "mlp": build_mlp,
    "cnn2d": build_cnn2d,
    "cnn1d": build_cnn1d,
    "transformer": build_transformer,
    "siren": build_siren,
    "resnet": build_resnet,
    "resnet1d": build_resnet1d,
    "module": build_module_arch,
}


def is_builtin(name: Any) -> bool:
    """A family whose keys zoo knows (and fills from a dataset); 'module' and registered names are not."""
    return name in REGISTRY and name != "module"


def known(name: Any) -> bool:
    return isinstance(name, str) and (name in REGISTRY or is_registered(name))


def build(config: Mapping[str, Any]) -> nn.Module:
    """Build a module from its config (same as ParamLayout.from_config(config).build_module())."""
    name = config.get("name") if isinstance(config, Mapping) else None
    if name in REGISTRY:
        return REGISTRY[name](config)
    if known(name):
        return build_architecture(config)
    raise UserError(f"unknown architecture {name!r}",
                    f"use one of: {', '.join(REGISTRY)}, or register it with wsl.register_architecture(name, builder)")


def config_for(dataset: Dataset, arch: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in the input/output sizes an architecture needs from a dataset; returns the full config.

    'module' and registered architectures get nothing filled in: their builder takes exactly the keys
    given (use `check_fits` to see that the module takes the dataset's inputs).
    """
    c = dict(arch)
    name = c.get("name")
    if not is_builtin(name):
        if not known(name):
            raise UserError(f"unknown architecture {name!r}", f"use one of: {', '.join(REGISTRY)}")
        return c
    shape = dataset.input_shape
    numel = math.prod(shape)
    c.setdefault("out_features", dataset.output_dim)
    if name in ("mlp", "siren"):
        c.setdefault("in_features", numel)
    elif name in ("cnn2d", "resnet"):
        if len(shape) != 3 or (name == "cnn2d" and shape[1] != shape[2]):
            kind = "square images [C, H, W]" if name == "cnn2d" else "images [C, H, W]"
            raise UserError(f"{name} needs {kind}, dataset {dataset.name!r} has inputs {list(shape)}",
                            "use mlp, cnn1d, resnet1d or transformer for this dataset")
        c.setdefault("in_channels", shape[0])
        c.setdefault("image_size", shape[1] if shape[1] == shape[2] else [shape[1], shape[2]])
    elif name in ("cnn1d", "resnet1d"):
        if len(shape) not in (1, 2):
            raise UserError(f"{name} needs sequences [C, L], dataset {dataset.name!r} has inputs {list(shape)}",
                            "use cnn2d, resnet or mlp for images")
        c.setdefault("in_channels", 1 if len(shape) == 1 else shape[0])
        c.setdefault("length", shape[-1])
    elif name == "transformer":
        if len(shape) >= 2:
            seq, tok = math.prod(shape[:-1]), shape[-1]
            if len(shape) == 2 and shape[0] == 1:  # [1, L] sequences: patches of 4
                seq, tok = (shape[1] // 4, 4) if shape[1] % 4 == 0 else (shape[1], 1)
        else:
            seq, tok = shape[0], 1
        c.setdefault("seq_len", seq)
        c.setdefault("token_dim", tok)
    return c


def build_for(dataset: Dataset, arch: Mapping[str, Any]) -> nn.Module:
    return build(config_for(dataset, arch))


def check_fits(module: nn.Module, dataset: Dataset, what: str = "the architecture") -> None:
    """UserError unless `module` takes the dataset's inputs and gives enough outputs (one eval-mode forward
    of two training samples; the module's buffers are left as they were)."""
    x = dataset.x_train[:2]
    was = module.training
    state = {k: v.clone() for k, v in module.state_dict().items()}
    try:
        with torch.no_grad():
            out = module.eval()(x.to(next(module.parameters()).dtype))
    except Exception as e:
        raise UserError(f"{what} does not take dataset {dataset.name!r}'s inputs {list(dataset.input_shape)} "
                        f"({type(e).__name__}: {e})", "build it for this dataset's input shape") from None
    finally:
        module.load_state_dict(state)
        module.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{what} returns {shape} for a batch of {len(x)}, not [batch, outputs]",
                        "make forward() return one row of outputs per sample")
    need = dataset.num_classes if dataset.task == "classification" else dataset.output_dim
    if (dataset.task == "classification" and out.shape[1] < need) or (
            dataset.task != "classification" and out.shape[1] != need):
        raise UserError(f"{what} gives {out.shape[1]} outputs but dataset {dataset.name!r} needs {need}",
                        "set the module's number of outputs to the dataset's classes (or targets)")
