"""store/torchzip.py: the fast reader of torch.save zip files gives what torch.load gives, and runs nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from store import statedict, torchzip
from store.errors import UserError


def _via_torch_load(path: Path, monkeypatch) -> statedict.FileTensors:
    with monkeypatch.context() as m:
        m.setattr(statedict, "_read_zip_tensors", lambda p: None)
        return statedict.read_tensors(path)


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 3))


CASES = {
    "state_dict": lambda: _module().state_dict(),
    "wrapped": lambda: {"state_dict": _module().state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}},
    "float16": lambda: {k: v.half() if v.is_floating_point() else v for k, v in _module().state_dict().items()},
    "bfloat16": lambda: {k: v.bfloat16() if v.is_floating_point() else v for k, v in _module().state_dict().items()},
    "float64": lambda: {k: v.double() for k, v in _module().state_dict().items()},
    "strided views": lambda: {"w": torch.arange(15.0).reshape(5, 3).t(), "b": torch.arange(7.0)[2:5]},
    "shared storage": lambda: (lambda w: {"a": w, "b": w, "c": w[1:]})(torch.randn(4, 4)),
    "parameters": lambda: {"p": torch.nn.Parameter(torch.randn(3, 2)), "q": torch.nn.Parameter(torch.randn(2))},
    "scalar and empty": lambda: {"s": torch.tensor(2.5), "e": torch.zeros(0, 3), "w": torch.randn(2)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_reader_equals_torch_load(tmp_path, monkeypatch, case):
    path = tmp_path / "ck.pt"
    torch.save(CASES[case](), path)
    assert statedict._read_zip_tensors(path) is not None, "the fast path should handle a plain state dict"
    fast, slow = statedict.read_tensors(path), _via_torch_load(path, monkeypatch)
    assert fast.names == slow.names and fast.shapes == slow.shapes
    assert fast.floating == slow.floating and fast.dtype == slow.dtype
    np.testing.assert_array_equal(fast.values, slow.values)


def test_legacy_format_falls_back_to_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pt"
    torch.save(_module().state_dict(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(torchzip.Unsupported):
        torchzip.read_zip_checkpoint(path)
    got = statedict.read_tensors(path)
    np.testing.assert_array_equal(got.values, _via_torch_load(path, monkeypatch).values)
    assert "0.weight" in got.names


def test_pickled_module_is_refused_not_built(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(_module(), path)
    with pytest.raises(torchzip.Unsupported, match="Sequential"):
        torchzip.read_zip_checkpoint(path)


class _Payload:
    """Unpickling this would run a command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(2), "x": _Payload(marker)}, path)
    with pytest.raises(torchzip.Unsupported, match="system"):
        torchzip.read_zip_checkpoint(path)
    with pytest.raises(UserError, match="weights_only"):  # the fallback refuses it too, naming the file
        statedict.read_tensors(path)
    assert not marker.exists()


def test_damaged_archive_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(_module().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt"):
        statedict.read_tensors(path)


@pytest.mark.parametrize("threshold", [0.0, float("inf")])  # pool after the probe / stay in this process
def test_default_reading_gives_every_file_in_order_either_way(tmp_path, monkeypatch, threshold):
    paths = []
    for i in range(statedict._MIN_FILES_FOR_POOL + 4):
        p = tmp_path / f"{i:03d}.pt"
        torch.save({"w": torch.full((3,), float(i))}, p)
        paths.append(p)
    monkeypatch.setattr(statedict, "default_workers", lambda n: 2)
    monkeypatch.setattr(statedict, "_POOL_MIN_SECONDS_PER_FILE", threshold)
    ticks = []
    got = list(statedict.iter_read(paths, progress=ticks.append))
    assert [ft.path for ft in got] == [str(p) for p in paths]
    assert [float(ft.values[0]) for ft in got] == [float(i) for i in range(len(paths))]
    assert sum(ticks) == len(paths)
