"""ParamLayout: how a flat weight vector maps onto a model's named tensors.

Every package uses this one type to turn a model into a row of a [N, P] tensor
and back. It holds the parameter names, shapes and offsets, the dtype, and the
architecture config that rebuilds the module. `layout_id` is a content hash of
all of that, so two checkpoints with the same `layout_id` can be stacked.

Buffers. A model's state can hold more than its parameters: BatchNorm keeps
running mean / var and `num_batches_tracked`. Those persistent buffers (the
ones `state_dict()` holds) live in the same flat vector, AFTER all parameters:

    flat = [ parameters (num_trainable values) | buffers (num_buffers values) ]

so `flat[..., :layout.num_trainable]` is what an optimizer updates and
`layout.trainable` is the [P] mask of it. `num_params` stays the length of the
whole vector (the store's `num_params` column, every consumer's P). A buffer
is stored in the layout's float dtype; an integer or bool buffer
(`num_batches_tracked`) records its own dtype, is exact only while it fits the
float's mantissa (2**24 in float32; flatten refuses larger values), and is
rounded back to its dtype when loaded into a module. A layout without buffers
writes exactly the JSON it always did (the "buffers" key appears only when
there are some), so stored `layout_id`s do not change.

It is defined in `store` (the bottom package) so that `ZooStore.layout()` can
return it; `wsl.ParamLayout` is the same class. Modules are rebuilt through the
architecture registry (store/architectures.py: the `wsl.architectures`
entry-point group, where the `zoo` package registers its architectures, plus
`register_architecture`), which keeps the import direction one way.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from store.architectures import architecture_names, build_architecture, register_architecture  # noqa: F401 (re-exported)
from store.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# dtypes a non-float buffer may have (stored as exact integers in the layout's float dtype)
BUFFER_DTYPES: dict[str, torch.dtype] = {
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
# largest integer every smaller integer of which a float dtype represents exactly: 2**(mantissa bits + 1)
EXACT_INT = {"float32": 2 ** 24, "float64": 2 ** 53, "float16": 2 ** 11, "bfloat16": 2 ** 8}

def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unsupported dtype {name!r}", f"use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ParamEntry:
    """One named tensor of the flat vector. `buffer`: not trained (BatchNorm statistics); `dtype`: a
    non-float buffer's own dtype ("int64" for num_batches_tracked), None when it is the layout's."""

    name: str
    shape: tuple[int, ...]
    offset: int
    buffer: bool = False
    dtype: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ParamLayout:
    """Names, shapes, offsets and dtype of a model's parameters (and buffers), plus its architecture config.

    entries: (name, shape) of the parameters, in order. buffers: (name, shape) or
    (name, shape, dtype name) of the persistent buffers; they follow the parameters.
    """

    def __init__(self, entries: Iterable[tuple[str, Iterable[int]]], dtype: str = "float32",
                 arch: Mapping[str, Any] | None = None, buffers: Iterable[tuple] = ()):
        dtype_from_name(dtype)
        built: list[ParamEntry] = []
        offset = 0
        seen = set()
        items = [(e[0], e[1], False, None) for e in entries]
        for b in buffers:
            bdtype = b[2] if len(b) > 2 else None
            if bdtype is not None and bdtype not in BUFFER_DTYPES:
                raise UserError(f"buffer {b[0]!r} has dtype {bdtype!r}",
                                f"non-float buffers may be one of: {', '.join(BUFFER_DTYPES)}")
            items.append((b[0], b[1], True, bdtype))
        for name, shape, is_buffer, bdtype in items:
            if name in seen:
                raise UserError(f"tensor name {name!r} appears twice in the layout", "give each parameter or buffer once")
            seen.add(name)
            shape = tuple(int(s) for s in shape)
            built.append(ParamEntry(name, shape, offset, is_buffer, bdtype))
            offset += math.prod(shape)
        self.entries: tuple[ParamEntry, ...] = tuple(built)
        self.param_entries: tuple[ParamEntry, ...] = tuple(e for e in built if not e.buffer)
        self.buffer_entries: tuple[ParamEntry, ...] = tuple(e for e in built if e.buffer)
        self.dtype = dtype
        self.arch = dict(arch) if arch is not None else None
        self.num_params = offset  # values per model: parameters AND buffers (the flat vector's length)
        self.num_trainable = sum(e.numel for e in self.param_entries)
        self.num_buffers = offset - self.num_trainable
        self._index = {e.name: e for e in self.entries}
        self.layout_id = hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()[:16]

    # ----- construction -------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module, arch: Mapping[str, Any] | None = None) -> "ParamLayout":
        """Layout of `module`'s parameters in `named_parameters()` order, then its persistent buffers
        in `named_buffers()` order (the ones `state_dict()` holds)."""
        params = list(module.named_parameters())
        if not params:
            raise UserError(f"module {type(module).__name__} has no parameters", "pass a module with parameters")
        dtypes = {p.dtype for _, p in params}
        if len(dtypes) != 1:
            raise UserError(f"module mixes parameter dtypes {sorted(map(str, dtypes))}", "cast it to one dtype")
        if any(not p.is_floating_point() for _, p in params) or next(iter(dtypes)) not in DTYPE_NAMES:
            raise UserError(f"module has parameters of dtype {next(iter(dtypes))}", f"use one of: {', '.join(DTYPES)}")
        dtype = params[0][1].dtype
        buffers = []
        for n, b in persistent_buffers(module):
            if b.is_floating_point():
                if b.dtype != dtype:
                    raise UserError(f"buffer {n!r} is {b.dtype} but the parameters are {dtype}",
                                    "cast the module to one dtype (module.to(dtype))")
                buffers.append((n, b.shape))
            elif b.dtype in BUFFER_DTYPES.values():
                buffers.append((n, b.shape, {v: k for k, v in BUFFER_DTYPES.items()}[b.dtype]))
            else:
                raise UserError(f"buffer {n!r} has dtype {b.dtype}", "buffers must be float, integer or bool tensors")
        arch = arch if arch is not None else getattr(module, "arch_config", None)
        return cls([(n, p.shape) for n, p in params], DTYPE_NAMES[dtype], arch, buffers)

    @classmethod
    def from_config(cls, arch: Mapping[str, Any]) -> "ParamLayout":
        """Layout of the module an architecture config builds."""
        return cls.from_module(build_architecture(arch), arch)

    # ----- JSON -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "params": [[e.name, list(e.shape)] for e in self.param_entries],
            "dtype": self.dtype,
            "arch": self.arch,
        }
        if self.buffer_entries:  # only when there are some: layouts without buffers keep their JSON and id
            d["buffers"] = [[e.name, list(e.shape)] + ([e.dtype] if e.dtype else []) for e in self.buffer_entries]
        return d

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParamLayout":
        try:
            return cls([(n, s) for n, s in d["params"]], d.get("dtype", "float32"), d.get("arch"),
                       [tuple(b) for b in d.get("buffers", [])])
        except (KeyError, TypeError, ValueError, IndexError) as e:
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
    def trainable_names(self) -> list[str]:
        return [e.name for e in self.param_entries]

    @property
    def buffer_names(self) -> list[str]:
        return [e.name for e in self.buffer_entries]

    @property
    def trainable(self) -> torch.Tensor:
        """[P] bool: True for parameter values, False for buffer values (a contiguous tail)."""
        m = torch.zeros(self.num_params, dtype=torch.bool)
        m[:self.num_trainable] = True
        return m

    def trainable_layout(self) -> "ParamLayout":
        """The parameters alone, as a layout of `num_trainable` values (this layout when it has no buffers).

        It has no architecture config (its module would hold buffers it lacks): it is for code that works on
        the trainable slice `flat[..., :num_trainable]` by name, such as Hessians over the parameters.
        """
        if not self.buffer_entries:
            return self
        return ParamLayout([(e.name, e.shape) for e in self.param_entries], self.dtype, None)

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
        extra = f", buffers={self.num_buffers}" if self.buffer_entries else ""
        return (f"ParamLayout(id={self.layout_id}, arch={arch}, tensors={len(self)}, params={self.num_params}{extra}, "
                f"dtype={self.dtype})")

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
            tensors = {**dict(item.named_parameters()), **dict(persistent_buffers(item))}
        elif isinstance(item, Mapping):
            tensors = dict(item)
        else:
            raise UserError(f"cannot flatten a {type(item).__name__}", "pass an nn.Module or a state dict")
        unknown = sorted(set(tensors) - set(self._index))
        missing = [n for n in self.names if n not in tensors]
        if unknown or missing:
            raise UserError(
                f"parameter names do not match layout {self.layout_id}: unknown {unknown[:5]}, missing {missing[:5]}",
                "flatten a model of the layout's architecture" + (
                    " (its buffers too: a state dict, or the module itself)" if any(
                        n in self.buffer_names for n in missing) else ""),
            )
        parts = []
        for e in self.entries:
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise UserError(f"{'buffer' if e.buffer else 'parameter'} {e.name!r} has shape {tuple(t.shape)}, "
                                f"layout expects {e.shape}", "use a model of the same width as the layout")
            if e.dtype is not None:
                t = self._exact_integers(e, t)
            elif not t.is_floating_point():
                raise UserError(f"{'buffer' if e.buffer else 'parameter'} {e.name!r} has dtype {t.dtype}",
                                "parameters and float buffers must be floating point")
            parts.append(t.detach().reshape(-1).to(self.torch_dtype))
        flat = torch.cat(parts)
        if not allow_nonfinite:
            self.check_flat(flat)
        return flat

    def _exact_integers(self, e: ParamEntry, t: torch.Tensor) -> torch.Tensor:
        """An integer buffer's values, checked to survive the layout's float dtype exactly."""
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise UserError(f"buffer {e.name!r} should hold integers ({e.dtype}) but has fractional values",
                                "flatten the module's own state dict")
            t = t.round()
        limit = EXACT_INT[self.dtype]
        if t.numel() and int(t.detach().abs().max()) > limit:
            raise UserError(f"buffer {e.name!r} = {int(t.detach().abs().max())} is not exact in {self.dtype} "
                            f"(integers up to {limit})", "store this model in float32 or float64")
        return t

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

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """One model's [P] vector as a state dict `module.load_state_dict` takes: parameters and float
        buffers in the layout's dtype, integer buffers rounded back to their own dtype (copies)."""
        if flat.dim() != 1:
            raise UserError(f"state_dict takes one model's [P] vector, got shape {tuple(flat.shape)}",
                            "index one row of the [N, P] tensor")
        out = {}
        for name, t in self.unflatten(flat).items():
            e = self._index[name]
            out[name] = t.round().to(BUFFER_DTYPES[e.dtype]) if e.dtype else t.clone()
        return out

    # ----- modules -------------------------------------------------------
    def build_module(self) -> nn.Module:
        """A fresh module of this layout's architecture (randomly initialised)."""
        if self.arch is None:
            raise UserError(f"layout {self.layout_id} has no architecture config",
                            "build the layout with ParamLayout.from_config or pass arch=")
        module = build_architecture(self.arch)
        got = ParamLayout.from_module(module, self.arch)
        if got.names != self.names or got.shapes != self.shapes:
            raise UserError(f"architecture config of layout {self.layout_id} builds a module with different parameters"
                            f"{self._buffer_diff(got)}",
                            "the layout was written by another version of the architecture; rebuild it")
        return module.to(self.torch_dtype)

    def _buffer_diff(self, got: "ParamLayout") -> str:
        if got.buffer_names == self.buffer_names:
            return ""
        return f" or buffers (module: {got.buffer_names[:4]}, layout: {self.buffer_names[:4]})"

    def load_into(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy a [P] vector into `module`'s parameters and buffers in place; returns the module.

        Integer buffers (num_batches_tracked) are rounded to the nearest integer: an average or a
        generated vector may hold a fraction there, and the counter has no other meaning."""
        if flat.dim() != 1:
            raise UserError(f"load_into takes one model's [P] vector, got shape {tuple(flat.shape)}",
                            "index one row of the [N, P] tensor")
        params = dict(module.named_parameters())
        buffers = dict(persistent_buffers(module))
        if set(params) != set(self.trainable_names):
            raise UserError(f"module {type(module).__name__} does not have the parameters of layout {self.layout_id}",
                            "build the module with layout.build_module()")
        if set(buffers) != set(self.buffer_names):
            raise UserError(f"module {type(module).__name__} has buffers {sorted(buffers)[:4]} but layout "
                            f"{self.layout_id} has {self.buffer_names[:4]}",
                            "build the module with layout.build_module(), or a layout from this module "
                            "(ParamLayout.from_module)")
        tensors = self.unflatten(flat)
        with torch.no_grad():
            for name, t in tensors.items():
                target = params[name] if name in params else buffers[name]
                if target.shape != t.shape:
                    raise UserError(f"{'buffer' if name in buffers else 'parameter'} {name!r} has shape "
                                    f"{tuple(target.shape)}, layout expects {tuple(t.shape)}",
                                    "use a module of the same width as the layout")
                target.copy_(t.round() if self._index[name].dtype else t)
        return module


def persistent_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the buffers `module.state_dict()` holds, in `named_buffers()` order."""
    out = []
    for mod_name, mod in module.named_modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        for n, b in mod.named_buffers(recurse=False):
            if b is not None and n not in skip:
                out.append((f"{mod_name}.{n}" if mod_name else n, b))
    return out
