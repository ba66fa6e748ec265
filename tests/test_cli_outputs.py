"""Outputs that are what they say, and tables people can read at 80 columns.

`-o FILE` writes the format its extension names (read back here with pandas / pyarrow);
a clash with --format or an unknown extension is exit 2 with nothing written. Tables fit
the terminal, say what they left out, print NULL as NULL and floats to 4 significant digits.
"""
from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

import torch

from store import ParamLayout, ZooStore

LAYOUT = ParamLayout([("fc.weight", (4, 3)), ("fc.bias", (4,))], arch={"name": "toy", "width": 4})


def fill(store: ZooStore, models: int = 6, epochs: int = 3) -> None:
    """models x epochs checkpoints of a toy layout; lr cycles 0.01, 0.1, 1.0."""
    store.append("models", [dict(model_id=f"m{i}", zoo="toyzoo", architecture="toy", arch_config="{}",
                                 layout_id=LAYOUT.layout_id, dataset="digits", dataset_id="digits-0",
                                 task="classification", width=4, depth=1, optimizer="sgd",
                                 lr=[0.01, 0.1, 1.0][i % 3], momentum=0.9, weight_decay=0.0, batch_size=32,
                                 epochs=3, schedule="constant", seed=i, status="done",
                                 hparams=json.dumps({"lr": [0.01, 0.1, 1.0][i % 3]})) for i in range(models)])
    rows = [dict(checkpoint_id=f"m{m}-e{e:04d}", model_id=f"m{m}", epoch=e, step=10 * e, train_loss=1.0 / (e + 1),
                 train_acc=0.5 + 0.1 * e, test_loss=1.1 / (e + 1), test_acc=0.45 + 0.1 * e)
            for e in range(epochs) for m in range(models)]
    w = torch.randn(len(rows), LAYOUT.num_params, generator=torch.Generator().manual_seed(0))
    store.append_weights("checkpoints", w, rows, LAYOUT)

NULLS = ("SELECT model_id, lr, NULL::VARCHAR AS note, NULL::DOUBLE AS missing, 'nan'::DOUBLE AS nan_value, "
         "1/3 AS third, width FROM models ORDER BY model_id")


@pytest.fixture
def store(tmp_path):
    s = ZooStore(tmp_path / "store", create=True)
    fill(s)
    return s


def listing(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["r.parquet", "r.csv", "r.json", "r.jsonl", "r.txt", "r.table"])
def test_each_extension_writes_its_format(run_cli, store, tmp_path, name):
    out = tmp_path / name
    code, stdout, err = run_cli("query", NULLS, "--store", store.path, "-o", out)
    assert code == 0, err
    assert f"wrote 6 rows to {out}" in stdout
    expected = store.sql(NULLS)
    if name.endswith(".parquet"):
        got = pq.read_table(out).to_pandas()
    elif name.endswith(".csv"):
        got = pd.read_csv(out)
    elif name.endswith(".jsonl"):
        got = pd.read_json(out, lines=True, precise_float=True)
    elif name.endswith(".json"):
        got = pd.read_json(out, precise_float=True)
        assert json.loads(out.read_text())[0]["note"] is None  # NULL is JSON null
    else:
        got = pd.read_fwf(out)
        assert "NULL" in out.read_text() and "0.3333" in out.read_text()
    assert list(got.model_id) == list(expected.model_id) and list(got.width) == list(expected.width)
    if not name.endswith((".txt", ".table")):  # full precision everywhere but in tables
        assert list(got.lr) == list(expected.lr) and got.third.iloc[0] == 1 / 3
        assert got.note.isna().all() and got.missing.isna().all()


def test_parquet_keeps_the_weight_bytes_and_csv_names_them(run_cli, store, tmp_path):
    q = "SELECT checkpoint_id, weights FROM checkpoints ORDER BY 1 LIMIT 2"
    code, _, err = run_cli("query", q, "--store", store.path, "-o", tmp_path / "w.parquet")
    assert code == 0, err
    assert len(pq.read_table(tmp_path / "w.parquet").column("weights")[0].as_py()) == LAYOUT.num_params * 4
    code, _, _ = run_cli("query", q, "--store", store.path, "-o", tmp_path / "w.csv")
    assert code == 0 and pd.read_csv(tmp_path / "w.csv").weights[0] == f"<{LAYOUT.num_params * 4} bytes>"


@pytest.mark.parametrize("args,message", [
    (["-o", "{tmp}/y.parquet", "--format", "json"], "clashes with the output file"),
    (["-o", "{tmp}/y.csv", "--format", "parquet"], "clashes with the output file"),
    (["-o", "{tmp}/y.txt", "--format", "csv"], "clashes with the output file"),
    (["-o", "{tmp}/y.xlsx"], "names no format"),
    (["-o", "{tmp}/y"], "no extension"),
    (["-o", "{tmp}/no-such-folder/y.csv"], "does not exist"),
    (["--format", "parquet"], "--out"),
    (["--format", "xml"], "unknown --format"),
])
def test_a_file_name_that_disagrees_is_refused_and_nothing_written(run_cli, store, tmp_path, args, message):
    before_store, before_tmp = listing(store.path), sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli("query", "SELECT * FROM models", "--store", store.path,
                             *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in err and "Fix:" in err, (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before_tmp  # no file, no temp file
    assert listing(store.path) == before_store


def test_json_with_a_jsonl_file_writes_json_lines(run_cli, store, tmp_path):
    code, _, err = run_cli("query", "SELECT model_id FROM models", "--store", store.path, "-f", "json",
                           "-o", tmp_path / "m.jsonl")
    assert code == 0, err
    assert [json.loads(line)["model_id"] for line in (tmp_path / "m.jsonl").read_text().splitlines()][:2] == ["m0", "m1"]


def test_query_may_return_no_rows(run_cli, store):
    code, out, err = run_cli("query", "SELECT * FROM models WHERE width = 999", "--store", store.path, "-f", "json")
    assert code == 0 and json.loads(out) == [], err


def test_wide_table_fits_80_columns_and_says_what_it_left_out(run_cli, store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli("query", "SELECT * FROM models LIMIT 5", "--store", store.path)
    assert code == 0, err
    lines = out.splitlines()
    grid = [ln for ln in lines if ln[:1] in "┏┃┡│└"]
    assert grid and max(len(ln) for ln in grid) <= 80
    assert "model_id" in lines[1] and sum("m0" in ln for ln in grid) == 1  # cells readable, not folded
    note = next(ln for ln in lines if "not shown" in ln)
    n_cols = len(store.schema("models"))
    shown = lines[1].count("┃") - 1
    assert note.startswith(f"{n_cols - shown} more columns not shown") and "hparams" in note
    assert "--format csv" in out and "--format json" in out


def test_null_is_null_and_floats_have_4_significant_digits(run_cli, store):
    code, out, err = run_cli("query", NULLS + " LIMIT 2", "--store", store.path)
    assert code == 0, err
    row = next(ln for ln in out.splitlines() if "m0" in ln)
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells == ["m0", "0.01", "NULL", "NULL", "NaN", "0.3333", "4"]
    assert " nan " not in out and "0.333333" not in out


def test_summary_tables_wrap_long_values_instead_of_dropping_them(monkeypatch, capsys):
    from cli import common

    monkeypatch.setenv("COLUMNS", "60")
    common.print_summary({"note": "x" * 150, "count": 3}, "s")
    out = capsys.readouterr().out
    assert out.count("x") == 150 and max(len(ln) for ln in out.splitlines()) <= 60


def test_progress_bar_keeps_count_and_eta_at_80_columns():
    import time

    from rich.console import Console

    from cli.common import make_progress

    console = Console(file=io.StringIO(), width=80)
    p, task = make_progress("eval on digits-pair:3-8/test", 1200, "model-epochs", console=console)
    p.update(task, advance=300, info="models 100/400 | cohort 1/2 | epoch 3/10 | 12,345 samples/s")
    time.sleep(0.05)
    p.update(task, advance=300)
    console.print(p.get_renderable())
    line = console.file.getvalue().rstrip("\n")
    assert len(line) <= 80 and "\n" not in line
    assert "600/1200" in line and "ETA 0:00:" in line and "model-epochs" in line
