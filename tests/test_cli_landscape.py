"""`wsl zoo landscape` and `wsl plot phases` through the CLI."""
from __future__ import annotations

import json
import shutil

import pytest

from store.store import ZooStore

SPEC = """
name = "cli-phases"
dataset = "digits"
epochs = 1
batch_size = 256
seeds = 2

[architecture]
name = "mlp"
width = [4, 8]
depth = 1

[optimizer]
name = "sgd"
lr = 0.1
"""
FAST = ["--batches", "1", "--batch-size", "64", "--probes", "3", "--iterations", "3", "--deflation", "2", "--curve-epochs", "1",
        "--curve-points", "5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from zoo import train

    d = tmp_path_factory.mktemp("cli")
    spec = d / "spec.toml"
    spec.write_text(SPEC)
    train(str(spec), d / "store")
    return d / "store"


@pytest.fixture
def store_dir(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "store")
    return tmp_path / "store"


def test_zoo_landscape_then_plot_phases(run_cli, store_dir, tmp_path):
    code, out, err = run_cli("zoo", "landscape", "--store", store_dir, *FAST, "--thresholds", "loss=0.5",
                             "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["computed"] == 4 and summary["pairs"] == 2 and sum(summary["phases"].values()) == 4
    rows = ZooStore(store_dir).sql("SELECT * FROM landscape")
    assert len(rows) == 4 and json.loads(rows["thresholds"][0])["loss"] == 0.5
    assert json.loads(rows["recipe"][0])["probes"] == 3
    code, out, err = run_cli("plot", "phases", "--store", store_dir, "--out", tmp_path / "plots")
    assert code == 0, err
    assert (tmp_path / "plots" / "phase_map.png").stat().st_size > 1000
    assert "phase_diagram.png" in out


def test_global_store_where_and_table_output(run_cli, store_dir):
    code, out, err = run_cli("--store", store_dir, "zoo", "landscape", "--where", "width = 8", *FAST)
    assert code == 0, err
    assert "computed" in out and ZooStore(store_dir).count("landscape") == 2
    code, out, _ = run_cli("--store", store_dir, "zoo", "landscape", "--where", "width = 8", *FAST, "-f", "json")
    assert code == 0 and json.loads(out)["already_stored"] == 2


def test_errors_exit_2_and_write_nothing(run_cli, store_dir, tmp_path):
    code, out, err = run_cli("zoo", "landscape", "--store", store_dir, "--where", "nonsense ==", *FAST)
    assert code == 2 and err.startswith("error: --where") and "Traceback" not in err
    code, _, err = run_cli("zoo", "landscape", "--store", store_dir, "--thresholds", "loss=abc")
    assert code == 2 and "phase threshold" in err
    code, _, err = run_cli("zoo", "landscape", "--store", store_dir, "--curve-points", "3")
    assert code == 2 and "5 points" in err
    code, _, err = run_cli("zoo", "landscape", "--store", tmp_path / "missing")
    assert code == 2 and "no zoo store" in err
    code, _, err = run_cli("plot", "phases", "--store", store_dir, "--out", tmp_path / "p")
    assert code == 2 and "wsl zoo landscape" in err
    assert ZooStore(store_dir).count("landscape") == 0 and not (tmp_path / "p").exists()


def test_help_lists_the_commands(run_cli):
    code, out, _ = run_cli("zoo", "--help")
    assert code == 0 and "landscape" in out
    code, out, _ = run_cli("plot", "--help")
    assert code == 0 and "phases" in out


def _snapshot(store_dir):
    return sorted((str(p.relative_to(store_dir)), p.stat().st_size) for p in store_dir.rglob("*") if p.is_file())


def test_a_where_that_selects_nothing_is_refused_by_both_commands(run_cli, store_dir, tmp_path):
    before = _snapshot(store_dir)
    code, out, err = run_cli("zoo", "landscape", "--store", store_dir, "--where", "width = 1000", *FAST)
    assert code == 2 and "--where 'width = 1000' selects no finished models" in err and "Traceback" not in err
    assert _snapshot(store_dir) == before and ZooStore(store_dir).count("landscape") == 0
    code, _, err = run_cli("zoo", "landscape", "--store", store_dir, "--relabel", "--where", "width = 1000")
    assert code == 2 and ("width = 1000" in err or "no rows to relabel" in err)
    assert run_cli("zoo", "landscape", "--store", store_dir, *FAST)[0] == 0
    code, _, err = run_cli("plot", "phases", "--store", store_dir, "--where", "width = 1000", "--out", tmp_path / "p")
    assert code == 2 and "--where 'width = 1000' selects no models" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("fmt,magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_plot_format_names_the_files_and_their_contents(run_cli, store_dir, tmp_path, fmt, magic):
    assert run_cli("zoo", "landscape", "--store", store_dir, *FAST)[0] == 0
    out_dir = tmp_path / fmt
    code, out, err = run_cli("plot", "phases", "--store", store_dir, "--out", out_dir, "--plot-format", fmt,
                             "--title", "a long title " * 12)
    assert code == 0, err
    figures = sorted(p for p in out_dir.iterdir() if p.name != "cells.csv")
    assert {p.suffix for p in figures} == {"." + fmt} and len(figures) == 9
    assert all(p.read_bytes().startswith(magic) for p in figures)
    assert not list(out_dir.glob(".*"))  # no temporary files left
    code, _, err = run_cli("plot", "phases", "--store", store_dir, "--out", tmp_path / "jpg", "--plot-format", "jpg")
    assert code == 2 and "--plot-format 'jpg'" in err and not (tmp_path / "jpg").exists()
