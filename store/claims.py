"""Claims on models: one trainer at a time per model, across the processes writing one store.

Why: two `wsl zoo train` runs on overlapping specs (one zoo name, some models in
common) would otherwise both train the shared models. Their checkpoints would
agree bit for bit only if their cohorts agreed (a batched evaluation makes a
checkpoint's metrics depend, in the last bits, on which models share the
batch), so the second writer would meet a key already stored with other values
and stop. With a claim the second run waits for those models, then finds them
finished (or, if the first run died, resumes them).

How: POSIX record locks (`fcntl.lockf`) on one byte per model of STORE/.claims,
at an offset taken from the model_id's sha256 (56 bits: a collision only makes
two models share a lock). The kernel drops a process's record locks when it
exits, killed or not, so a crashed trainer leaves no stale claim. Record locks
belong to the process, not to the descriptor, so (a) within one process a
registry of held offsets keeps threads apart, and (b) the lock file stays open
for the life of the process: closing any descriptor of it would drop every lock
the process holds on it. Append-only parts and their table locks
(store/parts.py) stay as they are: a claim only decides who trains, never who
may write.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Iterable

CLAIMS_FILE = ".claims"

_COND = threading.Condition()
_FDS: dict[tuple[str, int], int] = {}  # (lock file, inode) -> descriptor, open for the life of the process
_HELD: dict[tuple[str, int], set[int]] = {}  # (lock file, inode) -> offsets held by some thread of this process
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _open(path: str) -> tuple[int, tuple[str, int]]:
    """The process's descriptor of the lock file now at `path` (a store removed and made again gets a new one)."""
    with _COND:
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            ino = None
        if ino is not None and (path, ino) in _FDS:
            return _FDS[(path, ino)], (path, ino)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        key = (path, os.fstat(fd).st_ino)
        if key in _FDS:  # raced with another thread: keep the first descriptor (closing one drops locks)
            return _FDS[key], key
        _FDS[key] = fd
        _HELD[key] = set()
        return fd, key


def _offset(model_id: str) -> int:
    return int.from_bytes(hashlib.sha256(str(model_id).encode()).digest()[:7], "little")


class Claims:
    """The models one trainer holds in one store; `with Claims(path) as c:` releases them all at the end."""

    def __init__(self, store_path: str | os.PathLike):
        self.path = str(Path(store_path) / CLAIMS_FILE)
        self.mine: set[int] = set()
        self._file: tuple[int, tuple[str, int]] | None = None  # the lock file this object's claims are on

    def _fd(self) -> tuple[int, set[int]]:
        if self._file is None or not self.mine:
            self._file = _open(self.path)
        fd, key = self._file
        return fd, _HELD[key]

    def try_claim(self, model_ids: Iterable[str]) -> bool:
        """Claim every one of the models now, or none of them (False: another trainer holds one)."""
        fd, held = self._fd()
        offsets = sorted({_offset(m) for m in model_ids} - self.mine)
        with _COND:
            if any(o in held for o in offsets):
                return False
            got = []
            for o in offsets:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, o)
                except OSError as e:
                    if e.errno in _UNSUPPORTED:  # pragma: no cover - e.g. some network file systems: no exclusion
                        continue
                    for g in got:
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, g)
                    if e.errno in (errno.EACCES, errno.EAGAIN):
                        return False
                    raise
                got.append(o)
            held.update(offsets)
            self.mine.update(offsets)
        return True

    def claim(self, model_ids: Iterable[str]) -> None:
        """Claim the models, waiting for other trainers (in offset order, so two waiters cannot deadlock)."""
        fd, held = self._fd()
        for o in sorted({_offset(m) for m in model_ids} - self.mine):
            with _COND:
                while o in held:
                    _COND.wait()
                held.add(o)  # reserved against the other threads of this process
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, o)  # waits for other processes
            except OSError as e:
                if e.errno not in _UNSUPPORTED:  # pragma: no cover
                    self._drop(held, [o])
                    raise
            except BaseException:
                self._drop(held, [o])
                raise
            self.mine.add(o)

    def holds(self, model_ids: Iterable[str]) -> bool:
        """Whether this trainer has claimed every one of the models."""
        return {_offset(m) for m in model_ids} <= self.mine

    def release(self, model_ids: Iterable[str] | None = None) -> None:
        offsets = set(self.mine) if model_ids is None else {_offset(m) for m in model_ids} & self.mine
        if offsets:
            fd, held = self._fd()
            for o in offsets:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, o)
                except OSError:  # pragma: no cover
                    pass
            self.mine -= offsets
            self._drop(held, offsets)

    @staticmethod
    def _drop(held: set[int], offsets) -> None:
        with _COND:
            held.difference_update(offsets)
            _COND.notify_all()

    def __enter__(self) -> "Claims":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
