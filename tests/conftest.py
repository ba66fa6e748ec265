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


@pytest.fixture(scope="session")
def model_zoos_src(tmp_path_factory):
    """A Model Zoos-style Ray Tune experiment (3 MLPs x 4 epochs on digits), written once: (folder, truth)."""
    from _zoo_fixtures import write_model_zoos

    root = tmp_path_factory.mktemp("model-zoos")
    truth = write_model_zoos(root / "src")
    return root / "src", truth


@pytest.fixture
def model_zoos(model_zoos_src, tmp_path):
    """A private copy of the Model Zoos-style folder (tests may damage it): (folder, truth)."""
    import shutil

    src, truth = model_zoos_src
    dst = tmp_path / "zoo-src"
    shutil.copytree(src, dst)
    return dst, truth
