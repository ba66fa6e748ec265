"""Weights <-> bytes: the one place that knows how a [N, P] tensor becomes BLOB cells.

A stored weight vector is its raw little-endian bytes (float32, float16 or
bfloat16), plus two digests of exactly those bytes: `sha256` (hex; the
content's identity, what a published zoo is checked against) and `xxh3`
(hex XXH3-64; the fast checksum every read verifies, see store/verified_read.py:
XXH3 runs at memory speed, sha256 is an order of magnitude slower and would
cost most of the read throughput; BENCHMARKS.md, store_read). Encoding builds the
Arrow `large_binary` column straight from one contiguous buffer (no per-row
Python bytes); decoding reads the Arrow data buffer with `numpy.frombuffer`,
so a column whose rows all have the same size becomes an [N, P] view without
copying.
"""
from __future__ import annotations

import hashlib
import sys
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
import xxhash

from store.errors import UserError

STORED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
# numpy has no bfloat16: its bytes are read as uint16 and viewed in torch.
_NP_READ = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("store.codec assumes a little-endian machine")


def check_dtype(dtype: str) -> str:
    if dtype not in STORED_DTYPES:
        raise UserError(f"unsupported weights dtype {dtype!r}", f"use one of: {', '.join(STORED_DTYPES)}")
    return dtype


def encode(weights: torch.Tensor, dtype: str, what: str = "weights") -> tuple[pa.LargeBinaryArray, list[str], list[str]]:
    """[N, P] floating tensor -> (large_binary Arrow array of N cells, N hex sha256, N hex xxh3).

    Refuses NaN/inf both before and after the cast (float16 overflows to inf).
    """
    check_dtype(dtype)
    if not isinstance(weights, torch.Tensor):
        raise UserError(f"{what} is a {type(weights).__name__}, not a torch.Tensor", "pass an [N, P] tensor")
    if weights.dim() != 2:
        raise UserError(f"{what} has shape {tuple(weights.shape)}", "pass an [N, P] tensor (one row per model)")
    if not weights.is_floating_point():
        raise UserError(f"{what} has dtype {weights.dtype}", "pass float32, float16 or bfloat16 weights")
    w = weights.detach()
    _check_finite(w, what, "")
    stored = w.to(device="cpu", dtype=STORED_DTYPES[dtype]).contiguous()
    if stored.dtype != w.dtype:
        _check_finite(stored, what, f" after casting to {dtype} (values too large for {dtype})")
    n, p = stored.shape
    raw = stored.view(torch.uint8).numpy().reshape(n, p * ITEMSIZE[dtype]) if n * p else np.zeros((n, 0), np.uint8)
    row_bytes = p * ITEMSIZE[dtype]
    offsets = np.arange(n + 1, dtype=np.int64) * row_bytes
    data = pa.py_buffer(np.ascontiguousarray(raw).reshape(-1))
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), data])
    hashes = [hashlib.sha256(raw[i]).hexdigest() for i in range(n)]
    return arr, hashes, [xxh3(raw[i]) for i in range(n)]


def xxh3(cell) -> str:
    """Hex XXH3-64 of one cell's bytes (any buffer)."""
    return xxhash.xxh3_64_hexdigest(cell)


def _check_finite(w: torch.Tensor, what: str, suffix: str) -> None:
    # fast path: a row sum (in float64, so finite values cannot overflow) is finite iff every value is
    if w.numel() == 0 or bool(torch.isfinite(w.sum(dim=1, dtype=torch.float64)).all()):
        return
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        bad = (~finite).any(1).nonzero().flatten().tolist()
        raise UserError(f"{what} contain NaN or inf{suffix} (rows {bad[:10]})", "drop or repair those models before appending")


def sha256_cells(col: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Hex sha256 of every cell of a binary column (None for null cells)."""
    return _digest_cells(col, lambda b: hashlib.sha256(b).hexdigest())


def xxh3_cells(col: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Hex XXH3-64 of every cell of a binary column (None for null cells)."""
    return _digest_cells(col, xxh3)


def _digest_cells(col: pa.Array | pa.ChunkedArray, digest) -> list[str | None]:
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out: list[str | None] = []
    for ch in chunks:
        offsets, data = _offsets_and_data(ch)
        valid = ch.is_valid().to_numpy(zero_copy_only=False) if ch.null_count else None
        for i in range(len(ch)):
            if valid is not None and not valid[i]:
                out.append(None)
            else:
                out.append(digest(data[offsets[i]:offsets[i + 1]]))
    return out


def _offsets_and_data(arr: pa.Array) -> tuple[np.ndarray, memoryview]:
    """Offsets (absolute, into `data`) and the data buffer of a binary / large_binary array."""
    if pa.types.is_binary(arr.type):
        off_dtype = np.int32
    elif pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    else:
        raise TypeError(f"not a binary array: {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=len(arr) + 1, offset=arr.offset * np.dtype(off_dtype).itemsize)
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    return offsets.astype(np.int64, copy=False), data


def rows_view(arr: pa.Array, dtype: str, num_params: int) -> np.ndarray | None:
    """A zero-copy [n, P] numpy view of a binary column whose n rows all hold P values; None if they don't.

    The view is read-only (it points into Arrow's buffer) and in numpy's
    stand-in dtype (uint16 for bfloat16).
    """
    n = len(arr)
    row_bytes = num_params * ITEMSIZE[dtype]
    if arr.null_count:
        return None
    offsets, data = _offsets_and_data(arr)
    start = int(offsets[0]) if n else 0
    if n and not (offsets[-1] - start == n * row_bytes and np.all(np.diff(offsets) == row_bytes)):
        return None
    if n == 0 or row_bytes == 0:
        return np.zeros((n, num_params), dtype=_NP_READ[dtype])
    return np.frombuffer(data, dtype=_NP_READ[dtype], count=n * num_params, offset=start).reshape(n, num_params)


def row_sizes(arr: pa.Array) -> np.ndarray:
    offsets, _ = _offsets_and_data(arr)
    return np.diff(offsets)


def numpy_to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    """numpy [n, P] (stand-in dtype) -> torch tensor of the stored dtype, sharing memory."""
    import warnings

    with warnings.catch_warnings():
        # views of Arrow buffers are read-only for numpy; the memory is ours alone
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t


def torch_empty(n: int, p: int, dtype: str) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised [n, P] tensor of the stored dtype and a numpy view of the same memory."""
    t = torch.empty((n, p), dtype=STORED_DTYPES[dtype])
    view = t.view(torch.int16).numpy().view(_NP_READ[dtype]) if dtype == "bfloat16" else t.numpy()
    return t, view


def sha256_rows(t: torch.Tensor) -> list[str]:
    """Hex sha256 of each row of a CPU [N, P] tensor's bytes."""
    raw = t.contiguous().view(torch.uint8).numpy().reshape(t.shape[0], -1)
    return [hashlib.sha256(raw[i]).hexdigest() for i in range(t.shape[0])]


def chunk_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 numpy view of the data buffer, absolute int64 offsets) of a binary array; no copy."""
    offsets, data = _offsets_and_data(arr)
    return np.frombuffer(data, dtype=np.uint8), offsets


def bytes_to_torch(cell, dtype: str, num_params: int) -> torch.Tensor:
    """One cell's bytes -> a [P] tensor of the stored dtype (a copy)."""
    a = np.frombuffer(cell, dtype=_NP_READ[dtype], count=num_params).copy()
    return numpy_to_torch(a, dtype)


def decode_cells(cells: Sequence[bytes], dtype: str, num_params: int) -> torch.Tensor:
    """Slow path for odd inputs: a list of bytes -> [n, P]."""
    t, view = torch_empty(len(cells), num_params, dtype)
    for i, c in enumerate(cells):
        view[i] = np.frombuffer(c, dtype=_NP_READ[dtype], count=num_params)
    return t
