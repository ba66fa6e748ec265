"""Which generator class a method name means: built-ins, run-time registrations, entry points.

    from generators.registry import METHODS, get_method, method_names, register_method
    method_names()                  # ['diffusion', ...] (built-ins, registered, installed plugins)
    get_method("diffusion")         # generators.diffusion.LatentDiffusion, imported on first use
    register_method("mine", MyGen)  # a third-party method, for this process

A package can also add methods for every process through the entry-point group
`wsl.generators` (name = method, value = "module:Class"), as architectures do with
`wsl.architectures`:

    [project.entry-points."wsl.generators"]
    mine = "my_package.gen:MyGenerator"

Why a table of strings: the interface module (interface.py) must not import its
subclasses to find them (that was an import cycle), and listing the methods must not
import torch-heavy modules nobody asked for. A built-in is the string
"module:Class", resolved with importlib when it is first asked for. This module imports
nothing from `generators`: every other module may import it.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Iterator, Mapping

from store.errors import UserError

ENTRY_POINT_GROUP = "wsl.generators"

# method name -> "module:Class"; a new family adds one line here
BUILTIN: dict[str, str] = {
    "diffusion": "generators.diffusion:LatentDiffusion",
    "vqar": "generators.vqar:VQAutoregressive",
    "hyper": "generators.hyper:HyperNetwork",
}

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_registered: dict[str, Any] = {}  # name -> class or "module:Class"
_resolved: dict[str, type] = {}
_entry_points: dict[str, Any] | None = None  # name -> importlib.metadata.EntryPoint


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"generator method name {name!r} is not valid",
                        "use lower-case letters, digits, '-' or '_', starting with a letter (e.g. 'my-gen')")
    return name


def _check_class(name: str, cls: Any) -> type:
    """A class that can stand behind a method name: a WeightGenerator subclass whose `method` is `name`.

    Checked by what the class has (fit_tensors, sample, save_pretrained, from_pretrained),
    so this module needs no import of interface.py.
    """
    if not isinstance(cls, type):
        raise UserError(f"method {name!r}: {cls!r} is not a class", "register a subclass of generators.WeightGenerator")
    missing = [a for a in ("fit_tensors", "sample", "save_pretrained", "from_pretrained", "_sample", "_modules")
               if not hasattr(cls, a)]
    if missing:
        raise UserError(f"method {name!r}: class {cls.__module__}.{cls.__qualname__} lacks {missing}",
                        "register a subclass of generators.WeightGenerator")
    if getattr(cls, "method", None) != name:
        raise UserError(f"method {name!r}: class {cls.__qualname__} says method = {getattr(cls, 'method', None)!r}",
                        f"set `method = {name!r}` on the class (it is written into every saved config.json)")
    return cls


def register_method(name: str, cls: type | str) -> None:
    """Make `name` mean `cls` (a class, or "module:Class" imported on first use) in this process.

    A built-in name cannot be taken over; registering again replaces the earlier registration.
    """
    name = _check_name(name)
    if name in BUILTIN:
        raise UserError(f"generator method {name!r} is built in", "register your method under another name")
    if isinstance(cls, str):
        if ":" not in cls:
            raise UserError(f"method {name!r}: {cls!r} is not 'module:Class'", "give e.g. 'my_pkg.gen:MyGenerator'")
        _resolved.pop(name, None)
    else:
        _resolved[name] = _check_class(name, cls)
    _registered[name] = cls


def unregister_method(name: str) -> None:
    """Forget a run-time registration (tests use it); built-ins and entry points stay."""
    _registered.pop(name, None)
    _resolved.pop(name, None)


def _load_entry_points() -> dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        found: dict[str, Any] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep)
        _entry_points = found
    return _entry_points


def method_names() -> list[str]:
    """Every method this process can fit or load, sorted: built-ins, registrations, entry points."""
    return sorted(set(BUILTIN) | set(_registered) | set(_load_entry_points()))


def _import(name: str, target: str) -> type:
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UserError(f"generator method {name!r} points at {target}, which cannot be imported ({e})",
                        "install the package that provides it, or fix its registration") from None
    return obj


def get_method(name: str) -> type:
    """The class behind a method name; a UserError listing the known methods for an unknown one."""
    if name in _resolved:
        return _resolved[name]
    if name in _registered:
        target = _registered[name]
        cls = _import(name, target) if isinstance(target, str) else target
    elif name in BUILTIN:
        cls = _import(name, BUILTIN[name])
    elif isinstance(name, str) and name in _load_entry_points():
        try:
            cls = _load_entry_points()[name].load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is the user's input, named in the message
            raise UserError(f"generator method {name!r} (entry point {ENTRY_POINT_GROUP}) failed to load ({e})",
                            "reinstall or fix the package that provides it") from None
    else:
        raise UserError(f"unknown generator method {name!r}", f"use one of: {', '.join(method_names())}")
    _resolved[name] = _check_class(name, cls)
    return cls


class MethodTable(Mapping):
    """`METHODS`: the registry as a read-only mapping name -> class (classes are imported when looked up)."""

    def __getitem__(self, name: str) -> type:
        if name not in method_names():
            raise KeyError(name)
        return get_method(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in method_names()

    def __iter__(self) -> Iterator[str]:
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())

    def __repr__(self) -> str:
        return f"METHODS({', '.join(method_names())})"


METHODS = MethodTable()
