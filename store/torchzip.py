"""A `torch.save` zip checkpoint -> {name: numpy array}, read as data with a closed list of globals.

Why our own reader beside `torch.load(weights_only=True)`: importing a zoo means
parsing thousands of small files, and for a state dict of a few kB torch's
weights-only unpickler costs about 1 ms of fixed Python overhead per file
(storage objects, device dispatch, per-tensor checks), five to ten times the
cost of reading the zip. This reader does only what a plain state dict needs:

- the zip's `<prefix>/data.pkl` is unpickled by `pickle.Unpickler` with
  `find_class` restricted to a closed table (`_GLOBALS`): an ordered dict, the
  tensor / parameter rebuild functions and the typed-storage markers. The
  callables in that table are ours (they build numpy views); nothing named by
  the file is ever imported or called. Any other global stops the parse
  (`Unsupported`), and the caller falls back to `torch.load(weights_only=True)`,
  which applies torch's own allowlist (and refuses what it refuses).
- storages are the zip members `<prefix>/data/<key>`, read as bytes and viewed
  as numpy arrays of the storage dtype; tensors are strided views into them
  (shared storages stay shared, offsets and strides as torch wrote them).

A file this reader does not understand (legacy non-zip format, a big-endian
byte order, a dtype numpy has no view for, an unknown global) raises
`Unsupported`; it never returns a partial or reinterpreted result.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np


class Unsupported(Exception):
    """The file is outside what this reader handles: use torch.load(weights_only=True) instead."""


class _Storage:
    """A typed-storage marker from the pickle: which numpy dtype its bytes hold."""

    def __init__(self, name: str, dtype: Any):
        self.name, self.dtype = name, dtype


_BF16 = "bfloat16"  # numpy has no bfloat16: its bytes are read as uint16 and widened to float32
_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _BF16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class Tensor:
    """A tensor rebuilt as data: its values (numpy; bfloat16 widened to float32) and torch's dtype name."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray, dtype: str):
        self.array, self.dtype = array, dtype

    @property
    def is_floating_point(self) -> bool:
        return self.dtype in ("float32", "float64", "float16", _BF16)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None) -> Tensor:
    buf, dtype = storage
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise Unsupported("tensor geometry is not plain integers")
    if any(s < 0 for s in stride) or offset < 0:
        raise Unsupported("negative stride or offset")
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if needed > buf.size:
        raise Unsupported("tensor reaches past its storage")
    item = buf.itemsize
    view = np.lib.stride_tricks.as_strided(buf[offset:] if buf.size else buf, shape=tuple(size),
                                           strides=tuple(s * item for s in stride), writeable=False)
    if dtype == _BF16:
        view = (np.ascontiguousarray(view).astype(np.uint32) << 16).view(np.float32)
        return Tensor(view, _BF16)
    return Tensor(view, np.dtype(dtype).name if dtype is not np.bool_ else "bool")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> Tensor:
    if not isinstance(data, Tensor):
        raise Unsupported("a parameter around something that is not a tensor")
    return data


def _ordered_dict(*args) -> OrderedDict:
    return OrderedDict(*args)


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _Storage(name, dt) for name, dt in _STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._zip, self._prefix, self._storages = archive, prefix, {}

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise Unsupported(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise Unsupported(f"persistent id {type(pid).__name__}")
        kind, key = pid[1], str(pid[2])
        if key not in self._storages:
            try:
                raw = self._zip.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise Unsupported(f"storage {key} missing from the archive") from None
            np_dtype = np.uint16 if kind.dtype == _BF16 else kind.dtype
            if len(raw) % np.dtype(np_dtype).itemsize:
                raise Unsupported(f"storage {key} is not a whole number of elements")
            self._storages[key] = (np.frombuffer(raw, dtype=np_dtype), kind.dtype)
        return self._storages[key]


def read_zip_checkpoint(path) -> Any:
    """The unpickled object of a torch.save zip file, with every tensor a `Tensor` (numpy values).

    Raises Unsupported for anything outside the closed list above (the caller then
    uses torch.load(weights_only=True)); OSError for a file that cannot be opened.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise Unsupported("not a zip archive (legacy torch.save format?)") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise Unsupported("no single <prefix>/data.pkl in the archive")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            order = archive.read(prefix + "byteorder").decode().strip()
        except KeyError:
            order = "little"  # files written before torch recorded it are little-endian
        if order != "little" or np.little_endian is False:
            raise Unsupported(f"byte order {order!r}")
        try:
            return _Unpickler(archive.read(pkl[0]), archive, prefix).load()
        except Unsupported:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                zipfile.BadZipFile, KeyError) as e:
            raise Unsupported(f"{type(e).__name__}: {e}") from None
