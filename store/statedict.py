"""Checkpoint files -> named tensors, read as data, many files in parallel.

Existing zoos ship one file per checkpoint. We read them as data, never as
code: `.safetensors` through safetensors, `torch.save` zip files through
store/torchzip.py (a closed list of globals, numpy views), and whatever that
reader does not handle through `torch.load(weights_only=True)`, which refuses
pickled objects other than tensors and plain containers. A file that needs
arbitrary unpickling is an error naming the file, not a risk. Common wrappers
(`{"state_dict": ...}`, `{"model": ...}`) are unwrapped.

Every tensor of the state dict is kept, parameters and buffers alike
(BatchNorm's `running_mean` / `running_var` / `num_batches_tracked`), so a
layout that names buffers maps them like any parameter (store/names.py).

Why our own process pool: parsing is CPU-bound and single-threaded (torch's
weights-only unpickler costs about 1 ms of Python per small file, torchzip
about a quarter of that); worker processes (fork, like torch's DataLoader)
parse files side by side and send back one contiguous buffer per file (no
tensor pickling between processes). For small files shipping the values back
costs about as much as parsing them, so by default the first files are parsed
in this process and timed, and the pool starts only when they are expensive.
"""
from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from store.errors import UserError

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "params", "weights", "net")
# below this many files a pool costs more than it saves
_MIN_FILES_FOR_POOL = 48
# by default the first files are parsed here, timed: a pool starts only when they cost more than this each
_PROBE_FILES = 24
_POOL_MIN_SECONDS_PER_FILE = 2e-3


def load_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """A checkpoint file -> {name: tensor} in the file's order, without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e})", "re-export it or remove it from the folder") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{path} does not exist", "check the path (or the sidecar row that names it)") from None
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError for zip damage, EOFError...
            raise UserError(f"{path} cannot be read as plain tensors with torch.load(weights_only=True) "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'})",
                            "save the model's state_dict() (not the pickled module or a pickled dict of objects), "
                            "or convert it to safetensors") from None
    sd = unwrap(obj)
    if sd is None:
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors",
                        "save model.state_dict() (a dict of name -> tensor)")
    return sd


def unwrap(obj: Any, tensor_type: type = torch.Tensor) -> "OrderedDict[str, Any] | None":
    """The state dict inside `obj`: itself, or under one of the usual wrapper keys; None if there is none.

    `tensor_type`: torch.Tensor, or store.torchzip.Tensor for what that reader returns.
    """
    def floating(v) -> bool:
        f = v.is_floating_point
        return f() if callable(f) else f

    if isinstance(obj, Mapping):
        tensors = OrderedDict((str(k), v) for k, v in obj.items() if isinstance(v, tensor_type))
        if tensors and any(floating(v) for v in tensors.values()):
            return tensors
        for key in _WRAPPERS:
            if key in obj:
                inner = unwrap(obj[key], tensor_type)
                if inner is not None:
                    return inner
    return None


def natural_key(name: str) -> tuple:
    """Sort key giving module order for usual names: layers by number, weight before bias."""
    parts = name.split(".")
    key = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts[:-1]]
    last = {"weight": (0, 0, ""), "bias": (0, 1, "")}.get(parts[-1], (1, 0, parts[-1]))
    return (*key, last)


@dataclass
class FileTensors:
    """One checkpoint file's tensors: names in module order, shapes, and all values in one float32 buffer.

    `floating[i]` is False for integer tensors (num_batches_tracked): their
    values are in the buffer too (cast), a layout may name them or not.
    `dtype` is the files' floating dtype when it is one (float16 / bfloat16
    / float32 / float64), "mixed" otherwise.
    """

    path: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    floating: tuple[bool, ...]
    dtype: str
    values: np.ndarray  # float32 [sum of numels], tensors in `names` order
    meta: dict[str, str] | None = None  # safetensors header metadata (our exports put the layout there)

    @property
    def signature(self) -> tuple:
        return tuple(zip(self.names, self.shapes, self.floating))

    def offsets(self) -> list[int]:
        out, o = [], 0
        for s in self.shapes:
            out.append(o)
            o += int(np.prod(s, dtype=np.int64)) if s else 1
        out.append(o)
        return out


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def read_tensors(path: str | os.PathLike) -> FileTensors:
    """Read one file into a FileTensors (UserError naming the file when it cannot be read as data).

    A torch.save zip file is read by store/torchzip.py (a closed list of globals, numpy
    views; about 5x cheaper than torch.load for small files); whatever that reader does
    not handle goes through `load_state_dict` (safetensors or torch.load(weights_only=True)).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        fast = _read_zip_tensors(path)
        if fast is not None:
            return fast
    sd = load_state_dict(path)
    items = list(sd.items())
    if path.suffix == ".safetensors":  # safetensors sorts names alphabetically: put them back in module order
        items.sort(key=lambda kv: natural_key(kv[0]))
    meta = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or None
    for name, t in items:
        if t.is_complex():
            raise UserError(f"{path}: tensor {name!r} is complex", "store real-valued parameters only")
    arrays = [(name, t.detach().to(torch.float32).numpy() if t.dtype != torch.float32 else t.detach().numpy(),
               bool(t.is_floating_point()), _DTYPE_NAMES.get(t.dtype)) for name, t in items]
    return _file_tensors(path, arrays, meta)


def _file_tensors(path: Path, arrays: list[tuple[str, np.ndarray, bool, str | None]],
                  meta: dict[str, str] | None) -> FileTensors:
    """(name, values, is floating, floating dtype name) per tensor -> one FileTensors with a float32 buffer."""
    floats = {d for _, _, f, d in arrays if f}
    dtype = (next(iter(floats)) or "mixed") if len(floats) == 1 else "mixed"
    parts = [np.asarray(a, dtype=np.float32).reshape(-1) for _, a, _, _ in arrays]
    values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return FileTensors(str(path), tuple(n for n, _, _, _ in arrays), tuple(tuple(int(s) for s in a.shape) for _, a, _, _ in arrays),
                       tuple(f for _, _, f, _ in arrays), dtype, values, meta)


def _read_zip_tensors(path: Path) -> FileTensors | None:
    """The fast path: a plain state dict in a torch.save zip, or None when torchzip does not handle the file."""
    from store import torchzip

    try:
        obj = torchzip.read_zip_checkpoint(path)
    except (torchzip.Unsupported, OSError):
        return None  # the torch.load path reads it, or names the file in its error
    sd = unwrap(obj, tensor_type=torchzip.Tensor)
    if sd is None:
        return None
    return _file_tensors(path, [(k, t.array, t.is_floating_point, t.dtype if t.is_floating_point else None)
                                for k, t in sd.items()], None)


def _read_or_error(path: str):
    """Worker side: ('ok', FileTensors) or ('error', message, fix): exceptions do not cross processes intact."""
    try:
        return ("ok", read_tensors(path))
    except UserError as e:
        return ("error", e.message, e.fix)


def _init_worker() -> None:
    torch.set_num_threads(1)


def default_workers(n_files: int) -> int:
    """Worker processes for n files: the CPUs this process may use (at most 8), 1 below the pool threshold."""
    if n_files < _MIN_FILES_FOR_POOL or sys.platform != "linux":  # fork is only safe enough on Linux
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def iter_read(paths: Sequence[str | os.PathLike], workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> Iterator[FileTensors]:
    """Every file's FileTensors, in `paths` order, parsed in worker processes when there are many.

    Results arrive in order while later files are still being parsed, so the
    caller's work on them overlaps the parsing. The first unreadable file (in
    `paths` order, whatever the scheduling) is a UserError naming it.
    """
    paths = [str(p) for p in paths]
    n_workers = default_workers(len(paths)) if workers is None else max(1, int(workers))
    start = 0
    if workers is None and n_workers > 1:
        # A pool pays for itself only when parsing costs more than shipping the values back:
        # time the first files here and stay in this process when they are cheap.
        t0 = time.perf_counter()
        start = min(_PROBE_FILES, len(paths))
        for p in paths[:start]:
            ft = read_tensors(p)
            if progress is not None:
                progress(1)
            yield ft
        if (time.perf_counter() - t0) / max(start, 1) < _POOL_MIN_SECONDS_PER_FILE:
            n_workers = 1
    rest = paths[start:]
    if n_workers <= 1 or len(rest) < 2:
        for p in rest:
            ft = read_tensors(p)
            if progress is not None:
                progress(1)
            yield ft
        return
    import multiprocessing as mp

    chunk = max(1, min(64, len(rest) // (n_workers * 8) or 1))
    with mp.get_context("fork").Pool(n_workers, initializer=_init_worker) as pool:
        for r in pool.imap(_read_or_error, rest, chunksize=chunk):
            if r[0] == "error":
                raise UserError(r[1], r[2])
            if progress is not None:
                progress(1)
            yield r[1]


def read_many(paths: Sequence[str | os.PathLike], workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> list[FileTensors]:
    """`iter_read` as a list."""
    return list(iter_read(paths, workers, progress))


def files_under(folder: Path, suffixes: Iterable[str] = SUFFIXES) -> list[Path]:
    """Checkpoint files under `folder` (recursively, hidden files and folders skipped), sorted by path."""
    suffixes = tuple(suffixes)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and p.suffix in suffixes:
            out.append(p)
    return sorted(out)
