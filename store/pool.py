"""Reuse the memory of weight tensors the caller has dropped.

Why: touching freshly mapped memory costs more than the copy into it on
small VMs (page faults, zeroing, and on VMs whose host reclaims free guest
memory, a host fault per page). `ZooStore.weights` and `iter_weights` return
tensors over buffers taken from this pool; when every tensor and view over a
buffer is gone, the buffer comes back here instead of going to the OS, so a
loop over batches (or repeated queries) copies into memory that is already
mapped. Idle buffers are capped (WSL_STORE_POOL_BYTES, default 1 GiB; 0
turns the pool off) and `release()` frees them.
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np

_LOCK = threading.Lock()
_IDLE: list[np.ndarray] = []


def _cap() -> int:
    try:
        return int(os.environ.get("WSL_STORE_POOL_BYTES", 2**30))
    except ValueError:
        return 2**30


def take(nbytes: int) -> np.ndarray:
    """A 1-D uint8 buffer of at least nbytes (contents undefined)."""
    if nbytes >= 1 << 20 and _cap() > 0:
        with _LOCK:
            fits = [b for b in _IDLE if nbytes <= b.nbytes <= 2 * nbytes]
            if fits:
                buf = min(fits, key=lambda b: b.nbytes)
                del _IDLE[next(i for i, b in enumerate(_IDLE) if b is buf)]  # by identity: == compares arrays
                return buf
    return np.empty(max(nbytes, 1), dtype=np.uint8)


def give_back(buf: np.ndarray) -> None:
    cap = _cap()
    if buf.nbytes < 1 << 20 or buf.nbytes > cap:
        return
    with _LOCK:
        _IDLE.append(buf)
        while sum(b.nbytes for b in _IDLE) > cap:
            _IDLE.pop(0)  # the oldest goes back to the OS


def array(buf: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array over `buf` that returns `buf` to the pool once it (and everything viewing it) is gone."""
    arr = np.ndarray(shape, dtype=dtype, buffer=buf)
    if buf.nbytes >= 1 << 20:
        weakref.finalize(arr, give_back, buf)
    return arr


def release() -> int:
    """Free every idle buffer; returns the bytes released."""
    with _LOCK:
        n = sum(b.nbytes for b in _IDLE)
        _IDLE.clear()
    return n
