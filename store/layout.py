"""ParamLayout: how a flat weight vector maps onto a model's named tensors.

Every package uses this one type to turn a model into a row of a [N, P] tensor
and back. It holds the parameter names, shapes and offsets, the dtype, and the
architecture config that rebuilds the module. `layout_id` is a content hash of
all of that, so two checkpoints with the same `layout_id` can be stacked.

It is defined in `store` (the bottom package) so that `ZooStore.layout()` can
return it; `wsl.ParamLayout` is the same class. Modules are rebuilt through the
`wsl.architectures` entry-point group (the `zoo` package registers its
architectures there), which keeps the import direction one way.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from store.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# name -> builder(config) -> nn.Module; filled from entry points on first use,
# and by `register_architecture` at run time.
_ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {}
_ENTRY_POINTS_LOADED = False


def register_architecture(name: str, builder: Callable[[dict], nn.Module]) -> None:
    """Make `build_module` able to rebuild configs whose "name" is `name`."""
    _ARCHITECTURES[name] = builder


def architecture_names() -> list[str]:
    _load_entry_points()
    return sorted(_ARCHITECTURES)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group="wsl.architectures"):
        registry = ep.load()
        for name, builder in registry.items():
            _ARCHITECTURES.setdefault(name, builder)
    _ENTRY_POINTS_LOADED = True


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
            f"use one of: {', '.join(sorted(_ARCHITECTURES))}",
        )
    return _ARCHITECTURES[name](dict(config))


def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unsupported dtype {name!r}", f"use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ParamLayout:
    """Names, shapes, offsets and dtype of a model's parameters, plus its architecture config."""

    def __init__(self, entries: Iterable[tuple[str, Iterable[int]]], dtype: str = "float32",
                 arch: Mapping[str, Any] | None = None):
        dtype_from_name(dtype)
        built: list[ParamEntry] = []
        offset = 0
        seen = set()
        for name, shape in entries:
            if name in seen:
                raise UserError(f"parameter name {name!r} appears twice in the layout", "give each parameter once")
            seen.add(name)
            shape = tuple(int(s) for s in shape)
            built.append(ParamEntry(name, shape, offset))
            offset += math.prod(shape)
        self.entries: tuple[ParamEntry, ...] = tuple(built)
        self.dtype = dtype
        self.arch = dict(arch) if arch is not None else None
        self.num_params = offset
        self._index = {e.name: e for e in self.entries}
        self.layout_id = hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()[:16]

    # ----- construction -------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module, arch: Mapping[str, Any] | None = None) -> "ParamLayout":
        """Layout of `module`'s parameters in `named_parameters()` order."""
        params = list(module.named_parameters())
        if not params:
            raise UserError(f"module {type(module).__name__} has no parameters", "pass a module with parameters")
        dtypes = {p.dtype for _, p in params}
        if len(dtypes) != 1:
            raise UserError(f"module mixes parameter dtypes {sorted(map(str, dtypes))}", "cast it to one dtype")
        arch = arch if arch is not None else getattr(module, "arch_config", None)
        return cls([(n, p.shape) for n, p in params], DTYPE_NAMES[params[0][1].dtype], arch)

    @classmethod
    def from_config(cls, arch: Mapping[str, Any]) -> "ParamLayout":
        """Layout of the module an architecture config builds."""
        return cls.from_module(build_architecture(arch), arch)

    # ----- JSON -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "params": [[e.name, list(e.shape)] for e in self.entries],
            "dtype": self.dtype,
            "arch": self.arch,
        }

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParamLayout":
        try:
            return cls([(n, s) for n, s in d["params"]], d.get("dtype", "float32"), d.get("arch"))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"malformed layout JSON ({e})", "pass JSON written by ParamLayout.to_json") from None

    @classmethod
    def from_json(cls, text: str) -> "ParamLayout":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"layout is not valid JSON ({e})", "pass JSON written by ParamLayout.to_json") from None
        return cls.from_dict(d)

    # ----- introspection --------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [e.shape for e in self.entries]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def __getitem__(self, name: str) -> ParamEntry:
        return self._index[name]

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamLayout) and other.layout_id == self.layout_id

    def __hash__(self) -> int:
        return hash(self.layout_id)

    def __repr__(self) -> str:
        arch = self.arch.get("name") if self.arch else None
        return f"ParamLayout(id={self.layout_id}, arch={arch}, tensors={len(self)}, params={self.num_params}, dtype={self.dtype})"

    # ----- checks ---------------------------------------------------------
    def check_flat(self, flat: torch.Tensor, what: str = "weights", allow_nonfinite: bool = False) -> torch.Tensor:
        """Validate a [P] or [N, P] tensor against this layout; returns it."""
        if not isinstance(flat, torch.Tensor):
            raise UserError(f"{what} is a {type(flat).__name__}, not a torch.Tensor", "pass a [P] or [N, P] tensor")
        if flat.dim() not in (1, 2):
            raise UserError(f"{what} has shape {tuple(flat.shape)}", f"pass [P] or [N, P] with P = {self.num_params}")
        if flat.shape[-1] != self.num_params:
            raise UserError(
                f"{what} has {flat.shape[-1]} values per model but layout {self.layout_id} has {self.num_params} parameters",
                "use weights of the same architecture and width as the layout",
            )
        if not flat.is_floating_point():
            raise UserError(f"{what} has dtype {flat.dtype}", "pass a floating-point tensor")
        if not allow_nonfinite and not bool(torch.isfinite(flat).all()):
            bad = (~torch.isfinite(flat)).reshape(-1, self.num_params).any(1).nonzero().flatten().tolist()
            raise UserError(f"{what} contain NaN or inf (model rows {bad[:10]})", "drop or repair those models")
        return flat

    # ----- flatten / unflatten --------------------------------------------
    def _flatten_one(self, item: nn.Module | Mapping[str, torch.Tensor], allow_nonfinite: bool) -> torch.Tensor:
        if isinstance(item, nn.Module):
            tensors = dict(item.named_parameters())
        elif isinstance(item, Mapping):
            tensors = dict(item)
        else:
            raise UserError(f"cannot flatten a {type(item).__name__}", "pass an nn.Module or a state dict")
        unknown = sorted(set(tensors) - set(self._index))
        missing = [n for n in self.names if n not in tensors]
        if unknown or missing:
            raise UserError(
                f"parameter names do not match layout {self.layout_id}: unknown {unknown[:5]}, missing {missing[:5]}",
                "flatten a model of the layout's architecture",
            )
        parts = []
        for e in self.entries:
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise UserError(f"parameter {e.name!r} has shape {tuple(t.shape)}, layout expects {e.shape}",
                                "use a model of the same width as the layout")
            if not t.is_floating_point():
                raise UserError(f"parameter {e.name!r} has dtype {t.dtype}", "parameters must be floating point")
            parts.append(t.detach().reshape(-1).to(self.torch_dtype))
        flat = torch.cat(parts)
        if not allow_nonfinite:
            self.check_flat(flat)
        return flat

    def flatten(self, items, allow_nonfinite: bool = False) -> torch.Tensor:
        """Module or state dict -> [P]; a list of them -> [N, P]."""
        if isinstance(items, (nn.Module, Mapping)):
            return self._flatten_one(items, allow_nonfinite)
        items = list(items)
        if not items:
            raise UserError("nothing to flatten", "pass at least one module or state dict")
        return torch.stack([self._flatten_one(i, allow_nonfinite) for i in items])

    def unflatten(self, flat: torch.Tensor, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
        """[P] -> {name: tensor of its shape}; [N, P] -> {name: [N, *shape]}. Views, no copies."""
        self.check_flat(flat, allow_nonfinite=allow_nonfinite)
        lead = tuple(flat.shape[:-1])
        return {e.name: flat[..., e.offset:e.offset + e.numel].reshape(lead + e.shape) for e in self.entries}

    # ----- modules -------------------------------------------------------
    def build_module(self) -> nn.Module:
        """A fresh module of this layout's architecture (randomly initialised)."""
        if self.arch is None:
            raise UserError(f"layout {self.layout_id} has no architecture config",
                            "build the layout with ParamLayout.from_config or pass arch=")
        module = build_architecture(self.arch)
        got = ParamLayout.from_module(module, self.arch)
        if got.names != self.names or got.shapes != self.shapes:
            raise UserError(f"architecture config of layout {self.layout_id} builds a module with different parameters",
                            "the layout was written by another version of the architecture; rebuild it")
        return module.to(self.torch_dtype)

    def load_into(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy a [P] vector into `module`'s parameters in place; returns the module."""
        if flat.dim() != 1:
            raise UserError(f"load_into takes one model's [P] vector, got shape {tuple(flat.shape)}",
                            "index one row of the [N, P] tensor")
        params = dict(module.named_parameters())
        if set(params) != set(self._index):
            raise UserError(f"module {type(module).__name__} does not have the parameters of layout {self.layout_id}",
                            "build the module with layout.build_module()")
        tensors = self.unflatten(flat)
        with torch.no_grad():
            for name, t in tensors.items():
                if params[name].shape != t.shape:
                    raise UserError(f"parameter {name!r} has shape {tuple(params[name].shape)}, layout expects {tuple(t.shape)}",
                                    "use a module of the same width as the layout")
                params[name].copy_(t)
        return module
