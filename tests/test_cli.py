"""The `wsl` command's contract: help, version, store resolution, one-line errors with exit 2."""
import json
import subprocess
import sys
from pathlib import Path

from cli import common


def test_help_and_version(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "demo" in out and "--store" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("wsl 0.")


def test_unknown_command_and_option_exit_2(run_cli):
    code, _, err = run_cli("frobnicate")
    assert code == 2 and "frobnicate" in err
    code, _, err = run_cli("datasets", "--bogus")
    assert code == 2 and "--bogus" in err


def test_unknown_dataset_is_one_line_with_the_fix(run_cli):
    code, out, err = run_cli("datasets", "imagenet")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown dataset 'imagenet'") and "Fix: use one of: digits" in lines[0]
    assert "Traceback" not in err


def test_unknown_architecture_and_malformed_config(run_cli):
    code, _, err = run_cli("layout", '{"name": "resnet9000"}')
    assert code == 2 and "unknown architecture 'resnet9000'" in err
    code, _, err = run_cli("layout", "{name: mlp")
    assert code == 2 and "is not valid JSON" in err
    code, _, err = run_cli("layout", '{"name": "mlp"}', "--dataset", "digits-pair:4-4")
    assert code == 2 and "out of range" in err


def test_debug_shows_the_traceback():
    r = subprocess.run([sys.executable, "-m", "cli.main", "--debug", "datasets", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_describe_dataset_and_layout_as_json(run_cli):
    code, out, _ = run_cli("datasets", "digits-pair:3-5", "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["num_classes"] == 2 and json.loads(d["input_shape"]) == [1, 8, 8]
    code, out, _ = run_cli("layout", '{"name": "mlp", "width": 4, "depth": 1}', "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["num_params"] == 64 * 4 + 4 + 4 * 10 + 10 and len(d["layout_id"]) == 16


def test_store_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("WSL_STORE", str(tmp_path / "env"))
    assert common.store_path(None) == tmp_path / "env"
    common.set_global_store(str(tmp_path / "global"))
    assert common.store_path(None) == tmp_path / "global"
    assert common.store_path(tmp_path / "cmd") == tmp_path / "cmd"
    common.set_global_store(None)
    monkeypatch.delenv("WSL_STORE")
    assert common.store_path(None) == Path("./wsl-store")


def test_a_failed_check_prints_one_line_and_no_progress_bar(run_cli, tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: the point is a device that is not there")
    code, out, err = run_cli("zoo", "train", "demo", "--device", "cuda", "--store", tmp_path / "s")
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("error: device 'cuda' is not available")
    assert not (tmp_path / "s").exists()
