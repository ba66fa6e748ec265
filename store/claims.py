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
_FDS: dict[str, int] = {}  # lock file -> descriptor, open for the life of the process
_HELD: dict[str, set[int]] = {}  # lock file -> offsets held by some thread of this process
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _offset(model_id: str) -> int:
    return int.from_bytes(hashlib.sha256(str(model_id).encode()).digest()[:7], "little")


class Claims:
    """The models one trainer holds in one store; `with Claims(path) as c:` releases them all at the end."""

    def __init__(self, store_path: str | os.PathLike):
        self.path = str(Path(store_path) / CLAIMS_FILE)
        self.mine: set[int] = set()

    def _fd(self) -> int:
        with _COND:
            if self.path not in _FDS:
                _FDS[self.path] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                _HELD[self.path] = set()
            return _FDS[self.path]

    def try_claim(self, model_ids: Iterable[str]) -> bool:
        """Claim every one of the models now, or none of them (False: another trainer holds one)."""
        fd = self._fd()
        offsets = sorted({_offset(m) for m in model_ids} - self.mine)
        with _COND:
            held = _HELD[self.path]
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
        fd = self._fd()
        for o in sorted({_offset(m) for m in model_ids} - self.mine):
            with _COND:
                held = _HELD[self.path]
                while o in held:
                    _COND.wait()
                held.add(o)  # reserved against the other threads of this process
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, o)  # waits for other processes
            except OSError as e:
                if e.errno not in _UNSUPPORTED:  # pragma: no cover
                    self._drop([o])
                    raise
            except BaseException:
                self._drop([o])
                raise
            self.mine.add(o)

    def holds(self, model_ids: Iterable[str]) -> bool:
        """Whether this trainer has claimed every one of the models."""
        return {_offset(m) for m in model_ids} <= self.mine

    def release(self, model_ids: Iterable[str] | None = None) -> None:
        offsets = set(self.mine) if model_ids is None else {_offset(m) for m in model_ids} & self.mine
        if offsets:
            fd = self._fd()
            for o in offsets:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, o)
                except OSError:  # pragma: no cover
                    pass
            self.mine -= offsets
            self._drop(offsets)

    def _drop(self, offsets) -> None:
        with _COND:
            _HELD[self.path].difference_update(offsets)
            _COND.notify_all()

    def __enter__(self) -> "Claims":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
