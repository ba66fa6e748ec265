"""Stream weights from a zoo store into device memory, one batch ahead of the consumer.

    loader = WeightLoader(store, "SELECT checkpoint_id FROM checkpoints WHERE epoch = 20",
                          batch_size=1024, device="cuda")
    for weights, meta in loader:          # weights [b, P] on the device, meta a DataFrame
        ...
    loader = WeightLoader.from_where(store, "width = 32 AND epoch = epochs")   # a --where, as the CLI takes it

Reading a batch (DuckDB scan + Arrow -> torch) and moving it to the device
overlap with the consumer's work on the previous batch:

- CPU: a background thread reads the next `prefetch` batches while the caller
  computes (DuckDB and the copies release the GIL).
- CUDA: double-buffered. The thread reads a batch, copies it into one of two
  pinned host buffers, and issues the host->device copy with non_blocking=True
  on a side stream; the consumer's stream waits on that copy's event only when
  it takes the batch. A pinned buffer is refilled only after its previous copy
  finished, so at most two batches are in flight.

`DevicePrefetcher` is the same machinery for any iterable of CPU tensors
(wsl.evaluate feeds model cohorts through it).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

import torch

from store.errors import UserError
from store.layout import ParamLayout

__all__ = ["WeightLoader", "DevicePrefetcher", "to_device"]

_DONE = object()


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device {device!r} ({e})", "use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    return dev


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Synchronous move (pinned + non_blocking on CUDA); the caller's stream orders the use."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory() if not t.is_pinned() else t
        t = t.to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t if dtype is None else t.to(dtype)


class DevicePrefetcher:
    """Iterate `source` (items: a tensor, or a tuple whose first element is a tensor) with the
    tensor already on `device`, produced `prefetch` items ahead in a background thread.

    On CUDA the host->device copies go through two reusable pinned buffers on a side stream
    (see the module docstring); `dtype` casts on the device (e.g. float16 storage -> float32).
    """

    def __init__(self, source: Iterable[Any], device: str | torch.device = "cpu", prefetch: int = 2,
                 dtype: torch.dtype | None = None):
        self.source = source
        self.device = _device(device)
        self.prefetch = max(1, int(prefetch))
        self.dtype = dtype

    def __iter__(self) -> Iterator[Any]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(device=self.device) if cuda else None
        pinned: list[torch.Tensor | None] = [None, None]
        events: list[Any] = [None, None]

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def move(t: torch.Tensor, slot: int):
            if not cuda:
                return t.to(self.device) if t.device != self.device else t, None
            if t.device.type == "cuda":
                return t, None
            if events[slot] is not None:
                events[slot].synchronize()  # the buffer's previous copy has landed
            buf = pinned[slot]
            if buf is None or buf.numel() < t.numel() or buf.dtype != t.dtype:
                buf = torch.empty(t.numel(), dtype=t.dtype).pin_memory()
                pinned[slot] = buf
            host = buf[:t.numel()].view(t.shape)
            host.copy_(t)
            with torch.cuda.stream(stream):
                dev = host.to(self.device, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(stream)
            events[slot] = ev
            return dev, ev

        def produce():
            slot = 0
            try:
                for item in self.source:
                    if stop.is_set():
                        return
                    tensor, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, None)
                    if not isinstance(tensor, torch.Tensor):
                        raise UserError(f"prefetcher items must be tensors, got {type(tensor).__name__}",
                                        "yield a tensor or a (tensor, ...) tuple")
                    dev, ev = move(tensor, slot)
                    slot ^= 1
                    if not put((dev, ev, rest, isinstance(item, tuple))):
                        return
            except BaseException as e:  # hand the error to the consumer
                put(("__error__", e, None, None))
                return
            put(_DONE)

        thread = threading.Thread(target=produce, name="wsl-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                got = q.get()
                if got is _DONE:
                    break
                dev, ev, rest, was_tuple = got
                if isinstance(dev, str) and dev == "__error__":
                    raise ev
                if ev is not None:
                    cur = torch.cuda.current_stream(self.device)
                    cur.wait_event(ev)
                    dev.record_stream(cur)  # the allocator must not reuse it before our stream is done
                if self.dtype is not None and dev.dtype != self.dtype:
                    dev = dev.to(self.dtype)
                yield (dev, *rest) if was_tuple else dev
        finally:
            stop.set()
            thread.join(timeout=5)


class WeightLoader:
    """Batches of stored weights ([b, P] on `device`) and their metadata, read by SQL, prefetched.

    query_or_ids: a SELECT returning the table's key column (checkpoint_id for
    `checkpoints`), or a list of keys; rows come in that order. All rows must
    share one layout (`loader.layout`): filter on layout_id, architecture or
    width, or make one loader per layout. dtype: cast on the device (float16
    storage -> float32 for training); default keeps the stored dtype.
    Reads are verified (ZooStore.weights): a damaged row raises, unless
    skip_damaged=True, which leaves it out (batches may then be shorter; the
    store lists what was skipped in `store.skipped_rows`).
    """

    def __init__(self, store, query_or_ids, batch_size: int = 1024, device: str | torch.device = "cpu",
                 prefetch: int = 2, table: str = "checkpoints", dtype: torch.dtype | None = None,
                 verify: bool | str = True, skip_damaged: bool = False):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch_size")
        self.store = store
        self.table = table
        self.batch_size = int(batch_size)
        self.device = _device(device)
        self.prefetch = prefetch
        self.dtype = dtype
        self.verify = verify
        self.skip_damaged = skip_damaged
        self.ids = store.keys(query_or_ids, table)  # validates the SQL, metadata only
        self._query = query_or_ids.strip().rstrip(";") if isinstance(query_or_ids, str) else None
        self._layout: ParamLayout | None = None

    @classmethod
    def from_where(cls, store, where: str | None = None, *conditions: str, params: dict[str, Any] | None = None,
                   **kwargs) -> "WeightLoader":
        """A loader over the checkpoints a `--where` filter selects, composed with our own conditions
        (`$name` placeholders, values in params) through store/filters.py: the one pool every command
        filters. An empty selection is a UserError naming the filter.

            WeightLoader.from_where(store, "width = 32", "checkpoints.epoch = $e", params={"e": 20})
        """
        from store.filters import select_checkpoints

        sel = select_checkpoints(store, where, *conditions, params=params)
        return cls(store, sel.checkpoint_id.tolist(), **kwargs)

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def layout(self) -> ParamLayout:
        """The one layout of the selected rows (a metadata query; never reads weights)."""
        if self._layout is None:
            if not self.ids:
                raise UserError("the query selected no rows", "check the WHERE clause with `wsl query`")
            key = self.store.spec(self.table).key[0]
            lids = self._layout_ids(key)
            if len(lids) != 1:
                shown = ", ".join(lids[:4]) + (f" and {len(lids) - 4} more" if len(lids) > 4 else "")
                raise UserError(f"the selected {self.table} rows have {len(lids)} layouts ({shown})",
                                "filter on one layout_id (or architecture/width), or make one loader per layout")
            self._layout = self.store.layout(lids[0])
        return self._layout

    def _layout_ids(self, key: str) -> list[str]:
        from store.filters import in_list

        k = '"' + key.replace('"', '""') + '"'
        params: dict[str, Any] = {}
        if self._query is not None:  # the caller's own SELECT, as given
            q = f"SELECT DISTINCT t.layout_id FROM {self.table} t WHERE t.{k} IN (SELECT {k} FROM ({self._query}))"
        else:  # our id list travels as one bound parameter
            q = f"SELECT DISTINCT layout_id FROM {self.table} WHERE {in_list(k, 'ids', self.ids, params)}"
        return sorted(str(v) for v in self.store.arrow(q, params or None).column(0).to_pylist())

    def _batches(self):
        for start in range(0, len(self.ids), self.batch_size):
            chunk = self.ids[start:start + self.batch_size]
            w, meta = self.store.weights(chunk, table=self.table, verify=self.verify, skip_damaged=self.skip_damaged)
            if len(meta) == 0:  # every row of this batch skipped as damaged
                continue
            if self._layout is not None and w.shape[1] != self._layout.num_params:
                raise UserError("the selected rows changed layout between batches",
                                "filter on one layout_id, or make one loader per layout")
            yield w, meta

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        yield from DevicePrefetcher(self._batches(), self.device, self.prefetch, self.dtype)
