"""Any `nn.Module` as a zoo architecture: `{"name": "module", "path": "pkg.mod:build", ...}`.

    [architecture]                      # in a spec
    name = "module"
    path = "mypkg.nets:SmallNet"        # a class or a function returning an nn.Module
    width = [16, 32]                    # every other key is passed as a keyword argument (and can be swept)
    symmetry = "resnet"                 # optional: the permutation rule wsl.align may use (see docs/architectures.md)

The config is kept as given (nothing is filled in from the dataset: the
builder gets exactly the keys the spec names, except name, path and
symmetry). The layout stores the config, so `layout.build_module()` rebuilds
the module by importing the path again; training, evaluation and landscape
metrics run through the generic `torch.func` path of `wsl.functional`.

Security: importing a path runs its code. A spec the user passes trusts its own
path (zoo.spec); a layout read from a store — a zoo someone published — imports
nothing unless the user passes `--trust-code` (or calls `wsl.trust_code()`).
Otherwise building it is a UserError naming the path.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from torch import nn

from store.architectures import check_trusted
from store.errors import UserError

RESERVED = ("name", "path", "symmetry")
SYMMETRIES = ("none", "resnet")


def _resolve(path: Any):
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise UserError(f"architecture 'module' has path={path!r}",
                        "give path = \"package.module:builder\" (a class or a function returning an nn.Module)")
    mod_name, attr = path.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise UserError(f"module path {path!r} does not import ({type(e).__name__}: {e})",
                        "check the package is installed or on PYTHONPATH, and the spelling of the path") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module path {path!r}: {mod_name} has no attribute {attr!r}",
                            "name a class or function defined in that module")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"module path {path!r} names a {type(obj).__name__}, not a class or function",
                        "name a class or a function that returns an nn.Module")
    return obj


def build_module_arch(config: Mapping[str, Any]) -> nn.Module:
    """Import config["path"] (if trusted) and call it with the other keys; checks it returns an nn.Module."""
    if "path" not in config:
        raise UserError("architecture 'module' has no path", "give path = \"package.module:builder\"")
    path = config["path"]
    symmetry = config.get("symmetry", "none")
    if symmetry not in SYMMETRIES:
        raise UserError(f"architecture 'module' has symmetry={symmetry!r}", f"use one of: {', '.join(SYMMETRIES)}")
    check_trusted(config)
    builder = _resolve(path)
    kwargs = {k: v for k, v in config.items() if k not in RESERVED}
    try:
        module = builder(**kwargs)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"module path {path!r} failed to build with {kwargs} ({type(e).__name__}: {e})",
                        "pass the keyword arguments its builder takes") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"module path {path!r} returned a {type(module).__name__}, not a torch.nn.Module",
                        "name a class or function that returns an nn.Module")
    module.arch_config = dict(config)
    return module
