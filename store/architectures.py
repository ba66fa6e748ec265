"""The architecture registry: config dict {"name": ..., ...} -> nn.Module.

`ParamLayout.build_module()` rebuilds a model from the config its layout
stores, through this registry. It is filled from the `wsl.architectures`
entry-point group on first use (the `zoo` package registers its built-in
architectures there, which keeps the import direction one way: store never
imports zoo) and by `register_architecture(name, builder)` at run time, which
is how a user's own module class becomes a zoo architecture.

A builder is user code: whatever it raises or returns is checked here, so a
builder that fails or does not return an `nn.Module` is a `UserError` that
names the architecture, never a traceback from deep inside a command.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from store.errors import UserError

# name -> builder(config) -> nn.Module
_ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {}
_ENTRY_POINTS_LOADED = False


def register_architecture(name: str, builder: Callable[[dict], nn.Module]) -> None:
    """Make `build_module` (and specs) able to build configs whose "name" is `name`.

    builder(config) gets the whole config dict (its "name" included) and returns an nn.Module.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"architecture name {name!r} is not a non-empty string", "register it under a name")
    if not callable(builder):
        raise UserError(f"builder for architecture {name!r} is a {type(builder).__name__}, not callable",
                        "pass a function config -> nn.Module")
    _load_entry_points()
    _ARCHITECTURES[name] = builder


def architecture_names() -> list[str]:
    _load_entry_points()
    return sorted(_ARCHITECTURES)


def is_registered(name: str) -> bool:
    _load_entry_points()
    return name in _ARCHITECTURES


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    from importlib.metadata import entry_points

    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="wsl.architectures"):
        registry = ep.load()
        for name, builder in registry.items():
            _ARCHITECTURES.setdefault(name, builder)


def build_architecture(config: Mapping[str, Any]) -> nn.Module:
    """Build a module from an architecture config dict ({"name": ..., ...})."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise UserError(
            f"architecture config {config!r} has no 'name'",
            f"give one of: {', '.join(architecture_names())}",
        )
    _load_entry_points()
    name = config["name"]
    if name not in _ARCHITECTURES:
        raise UserError(
            f"unknown architecture {name!r}",
            f"use one of: {', '.join(sorted(_ARCHITECTURES))}, or register it with "
            "wsl.register_architecture(name, builder)",
        )
    try:
        module = _ARCHITECTURES[name](dict(config))
    except UserError:
        raise
    except Exception as e:  # a user's builder: report it as bad input, with what it raised
        raise UserError(f"architecture {name!r} failed to build from {dict(config)!r} ({type(e).__name__}: {e})",
                        "fix the architecture's keys (or its builder)") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"architecture {name!r} returned a {type(module).__name__}, not a torch.nn.Module",
                        "make the builder return an nn.Module")
    return module


# ----- code named by a config: trusted only when the user says so -----------------------------------------
# An architecture config may name code to import ({"name": "module", "path": "pkg.mod:build"}). A spec the
# user passes is code they chose to run (zoo.spec trusts its path); a config read from a store (a pulled,
# published zoo) imports nothing until the user trusts it: `wsl --trust-code ...` or wsl.trust_code().
_TRUSTED_PATHS: set[str] = set()
_TRUST_ALL = False


def trust_code(paths: str | list[str] | None = None) -> None:
    """Allow architecture configs to import code: every path (None, what --trust-code does) or these paths."""
    global _TRUST_ALL
    if paths is None:
        _TRUST_ALL = True
        return
    for p in [paths] if isinstance(paths, str) else list(paths):
        _TRUSTED_PATHS.add(str(p))


def untrust_code() -> None:
    """Back to the default: no config imports code until trusted (for tests and long-lived processes)."""
    global _TRUST_ALL
    _TRUST_ALL = False
    _TRUSTED_PATHS.clear()


def is_trusted(path: str) -> bool:
    return _TRUST_ALL or str(path) in _TRUSTED_PATHS


def check_trusted(config: Mapping[str, Any]) -> None:
    """UserError unless the code an architecture config names (a 'module' config's path) is trusted.

    Checked on every build and on every reuse of a cached module, so an invocation that did not trust
    the code cannot run it through a module another one built."""
    if not isinstance(config, Mapping) or config.get("name") != "module":
        return
    path = config.get("path")
    if not is_trusted(path):
        raise UserError(f"the architecture imports code from {path!r}, which this process has not been told to trust "
                        "(it came from a store or a published zoo, not from a spec you passed)",
                        "pass --trust-code (wsl --trust-code ...) or call wsl.trust_code() if you trust that code")
