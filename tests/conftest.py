"""Shared test fixtures. Tests are small and deterministic; slow ones are marked."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (cli/__init__.py), before torch loads

import pytest
import torch

# Keep CPU test runs predictable on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_store_env(monkeypatch, tmp_path):
    """No test touches ./wsl-store or the user's $WSL_STORE by accident."""
    monkeypatch.setenv("WSL_STORE", str(tmp_path / "default-store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from cli import common

    common.set_global_store(None)
    yield


@pytest.fixture
def run_cli(capsys):
    """Run `wsl ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
