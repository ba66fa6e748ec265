"""No silent wrong answers: verified reads, --skip-damaged, the repair path, concurrent trainers, Ctrl-C.

Damage is made the way a disk makes it: bytes flipped in place inside a part file.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from store import UserError, ZooStore
from store.verified_read import Damaged
from test_store import LAYOUT, ckpt_row, fill

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
name = "integrity"
dataset = "digits"
epochs = 3
batch_size = 128
seeds = 2

[architecture]
name = "mlp"
width = 8

[optimizer]
name = "sgd"
lr = {lr}
momentum = 0.9
"""


def _column_chunk(path: Path, column: str, row_group: int = 0) -> tuple[int, int]:
    md = pq.read_metadata(path)
    cc = md.row_group(row_group).column(md.schema.names.index(column))
    start = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
    return start, cc.total_compressed_size


def flip(path: Path, column: str = "weights", at: float = 0.99) -> None:
    """Flip one byte in place, `at` of the way into the column chunk (0.99 of weights: inside the last cell)."""
    start, size = _column_chunk(path, column)
    off = start + int(size * at)
    with open(path, "r+b") as fh:
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0xFF]))


def rows_of(store: ZooStore) -> dict:
    """Every row of the tables training writes, weights as sha256 + the bytes themselves."""
    out = {t: store.sql(f"SELECT * EXCLUDE (weights) FROM {t} ORDER BY checkpoint_id")
           for t in ("checkpoints", "optimizer_states")}
    out["models"] = store.sql("SELECT * FROM models ORDER BY model_id")
    out["weights"], _ = store.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id")
    return out


def same_rows(a: dict, b: dict) -> bool:
    return all(a[t].equals(b[t]) for t in ("checkpoints", "optimizer_states", "models")) and \
        torch.equal(a["weights"], b["weights"])


# ----- verified reads ---------------------------------------------------------------------------------
@pytest.fixture
def damaged(tmp_path):
    """18 checkpoints in one part and 2 in another; a flipped byte in the first part's last weight cells."""
    s = ZooStore(tmp_path / "s", create=True)
    w = fill(s)
    s.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), [ckpt_row(9, e) for e in range(2)], LAYOUT)
    bad = s.part_files("checkpoints")[0]
    flip(bad)
    return ZooStore(tmp_path / "s"), bad, w


def test_a_flipped_byte_makes_weights_raise_naming_the_part_and_the_fix(damaged):
    s, bad, _ = damaged
    with pytest.raises(UserError) as e:
        s.weights("SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id")
    msg = str(e.value)
    assert str(bad) in msg and "m5-e0002" in msg and "checksum" in msg
    assert "wsl store check --quarantine" in msg and "wsl zoo train" in msg and "--skip-damaged" in msg
    with pytest.raises(UserError, match="checksum"):
        list(s.iter_weights("SELECT checkpoint_id FROM checkpoints", batch_size=4))
    from wsl.loader import WeightLoader

    with pytest.raises(UserError, match="checksum"):
        list(WeightLoader(s, "SELECT checkpoint_id FROM checkpoints", batch_size=5))
    # rows that the damage does not touch read as usual
    w, meta = s.weights(["m0-e0000", "m9-e0001"])
    assert meta.checkpoint_id.tolist() == ["m0-e0000", "m9-e0001"]


def test_skip_damaged_returns_the_other_rows_and_reports_the_skipped(damaged):
    s, bad, w = damaged
    ids = [ckpt_row(m, e)["checkpoint_id"] for e in range(3) for m in range(6)]  # fill()'s order: w's rows
    with pytest.warns(UserWarning, match="skipped 1 damaged"):
        got, meta = s.weights(ids, skip_damaged=True)
    assert meta.checkpoint_id.tolist() == [i for i in ids if i != "m5-e0002"]
    keep = torch.tensor([i != "m5-e0002" for i in ids])
    assert torch.equal(got, w[keep])  # the intact rows, bit for bit, in the order asked
    assert s.skipped_rows == [Damaged("checkpoints", "m5-e0002", str(bad), s.skipped_rows[0].why)]
    from wsl.loader import WeightLoader

    with pytest.warns(UserWarning, match="skipped 1 damaged"):
        batches = list(s.iter_weights(ids, batch_size=6, skip_damaged=True))
        loader = list(WeightLoader(s, ids, batch_size=6, skip_damaged=True))
    assert sum(len(m) for _, m in batches) == 17 == sum(len(m) for _, m in loader)


def test_damaged_metadata_pages_are_a_user_error_too(tmp_path):
    s = ZooStore(tmp_path / "s", create=True)
    fill(s)
    s.append_weights("checkpoints", torch.randn(2, LAYOUT.num_params), [ckpt_row(9, e) for e in range(2)], LAYOUT)
    bad = s.part_files("checkpoints")[0]
    flip(bad, "test_acc", at=0.5)  # a zstd page of metrics: only its page CRC can tell
    s = ZooStore(tmp_path / "s")
    with pytest.raises(UserError, match=f"damaged part {bad}.*page checksums"):
        s.weights(["m9-e0000"])
    with pytest.warns(UserWarning):
        w, meta = s.weights(["m0-e0000", "m9-e0000", "m9-e0001"], skip_damaged=True)
    assert meta.checkpoint_id.tolist() == ["m9-e0000", "m9-e0001"] and [d.key for d in s.skipped_rows] == ["m0-e0000"]


def test_parts_without_xxh3_are_verified_by_sha256_and_compaction_gives_them_one(tmp_path):
    s = ZooStore(tmp_path / "s", create=True)
    w = fill(s)
    part = s.part_files("checkpoints")[0]
    old = pq.read_table(part).drop_columns(["xxh3"])  # as written before the column existed
    pq.write_table(old, part)
    s = ZooStore(tmp_path / "s")
    assert s.check().ok  # a missing later column is not damage
    got, _ = s.weights("SELECT checkpoint_id FROM checkpoints ORDER BY epoch, checkpoint_id")
    assert torch.equal(got, w)
    s.append_weights("checkpoints", torch.randn(1, LAYOUT.num_params), [ckpt_row(9, 0)], LAYOUT)
    assert s.append_weights("checkpoints", w[:1], [ckpt_row(0, 0)], LAYOUT) == 0  # idempotent across the versions
    s.compact()
    s = ZooStore(tmp_path / "s")
    assert s.sql("SELECT count(*) AS n FROM checkpoints WHERE xxh3 IS NULL").n[0] == 0
    assert s.check().ok


def test_a_missing_store_is_an_error_unless_create(tmp_path):
    with pytest.raises(UserError, match="no zoo store at"):
        ZooStore(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    assert ZooStore(tmp_path / "new", create=True).count("models") == 0


# ----- commands: no results from damaged data ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_zoo(tmp_path_factory):
    import zoo

    root = tmp_path_factory.mktemp("integrity")
    spec = root / "spec.toml"
    spec.write_text(SPEC.format(lr="[0.1, 0.03]"))
    zoo.train(spec, root / "zoo")
    return root / "zoo", spec


@pytest.fixture
def damaged_zoo(trained_zoo, tmp_path):
    """A copy of a real (tiny) trained zoo, its checkpoints compacted into one part with a flipped byte in it."""
    import shutil

    src, spec = trained_zoo
    store = tmp_path / "zoo"
    shutil.copytree(src, store)
    s = ZooStore(store)
    before = rows_of(s)
    s.compact("checkpoints")
    (part,) = ZooStore(store).part_files("checkpoints")
    flip(part)
    return store, spec, part, before


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in (".lock", ".claims")}


def test_eval_refuses_damaged_weights_and_writes_nothing(run_cli, damaged_zoo):
    store, _, part, _ = damaged_zoo
    before = snapshot(store)
    code, out, err = run_cli("eval", "--store", store, "--dataset", "digits", "--where", "epoch = 3")
    assert code == 2 and str(part) in err and "--quarantine" in err and "--skip-damaged" in err, err
    assert snapshot(store) == before  # no evaluations from a read that raised
    code, out, err = run_cli("eval", "--store", store, "--dataset", "digits", "--where", "epoch = 3",
                             "--skip-damaged", "--format", "json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    scored = set(ZooStore(store).sql("SELECT checkpoint_id FROM evaluations").checkpoint_id)
    assert summary["skipped_damaged"] == 1 and summary["written"] == 3 == len(scored)
    assert "skipped 1 damaged" in err and str(part) in err
    s = ZooStore(store)
    with pytest.warns(UserWarning):
        _, meta = s.weights("SELECT checkpoint_id FROM checkpoints WHERE epoch = 3", skip_damaged=True)
    (bad,) = [d.key for d in s.skipped_rows]
    code, _, err = run_cli("store", "export", bad, store.parent / "x.safetensors", "--store", store)
    assert code == 2 and "checksum" in err and not (store.parent / "x.safetensors").exists()
    from generators.training_set import select

    with pytest.raises(UserError, match="checksum"):
        select(ZooStore(store), "epoch = 3")
    with pytest.warns(UserWarning):
        w, _, rows = select(ZooStore(store), "epoch = 3", skip_damaged=True).single()
    assert len(w) == len(rows) == 3 and bad not in set(rows.checkpoint_id)
    for cmd in (["average", "--mode", "last-k", "--k", "2"], ["prune", "--sparsity", "0.5"]):
        code, _, err = run_cli(*cmd, "--store", store, "--dataset", "digits")
        assert code == 2 and "--skip-damaged" in err, (cmd, err)
        code, out, err = run_cli(*cmd, "--store", store, "--dataset", "digits", "--skip-damaged", "--format", "json")
        assert code == 0 and json.loads(out)["summary"]["skipped_damaged"] == 1, (cmd, err)


# ----- repair ------------------------------------------------------------------------------------------------
def test_quarantine_then_rerun_restores_every_missing_checkpoint_bit_identically(run_cli, damaged_zoo, tmp_path):
    store, spec, part, before = damaged_zoo
    code, _, err = run_cli("store", "check", "--store", store)
    assert code == 1 and f"DAMAGED {part}" in err and "--quarantine" in err and "wsl zoo train" in err
    code, _, err = run_cli("store", "check", "--store", store, "--quarantine")
    assert code == 1 and "repair: checkpoints: 1 part(s) set aside, 16 rows of 4 models (zoo 'integrity')" in err
    assert "re-run the same `wsl zoo train SPEC`" in err
    code, _, _ = run_cli("store", "check", "--store", store)
    assert code == 0 and ZooStore(store).count("checkpoints") == 0
    code, out, err = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["repaired"], summary["checkpoints_written"], summary["trained"]) == (4, 16, 0)
    assert same_rows(rows_of(ZooStore(store)), before)
    # one epoch's part set aside: the repair continues from the last intact epoch (1) with the recorded cohort
    s = ZooStore(store)
    (victim,) = [p for p in s.part_files("checkpoints") if set(pq.read_table(p, columns=["epoch"]).column(0).to_pylist()) == {2}]
    flip(victim)
    assert run_cli("store", "check", "--store", store, "--quarantine")[0] == 1
    code, out, err = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    summary = json.loads(out)
    assert code == 0 and (summary["repaired"], summary["checkpoints_written"]) == (4, 4), err
    assert same_rows(rows_of(ZooStore(store)), before)
    # and every optimizer state set aside (the record of the cohort with them): the fresh-run grouping
    s = ZooStore(store)
    s.compact("optimizer_states")
    flip(ZooStore(store).part_files("optimizer_states")[0])
    assert run_cli("store", "check", "--store", store, "--quarantine")[0] == 1
    code, out, err = run_cli("zoo", "train", spec, "--store", store, "--format", "json")
    assert code == 0 and json.loads(out)["repaired"] == 4, err
    assert same_rows(rows_of(ZooStore(store)), before)
    assert ZooStore(store).count("optimizer_states") == 16
    assert run_cli("store", "check", "--store", store)[0] == 0


# ----- Ctrl-C --------------------------------------------------------------------------------------------------
def test_ctrl_c_says_where_it_stopped_and_exits_130(run_cli, tmp_path, monkeypatch):
    from zoo.population import CohortTrainer

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(lr="[0.1, 0.03]"))
    real = CohortTrainer.train_epoch

    def interrupted(self, epoch, max_steps=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch, max_steps)

    monkeypatch.setattr(CohortTrainer, "train_epoch", interrupted)
    code, out, err = run_cli("zoo", "train", spec, "--store", tmp_path / "s", "--cohort-size", "2")
    assert code == 130 and "interrupted at epoch 2 of cohort 1: run the same command to resume" in err, err
    assert "Traceback" not in err and out == ""
    monkeypatch.setattr(CohortTrainer, "train_epoch", real)
    code, out, err = run_cli("zoo", "train", spec, "--store", tmp_path / "s", "--cohort-size", "2", "--format", "json")
    assert code == 0 and json.loads(out)["resumed"] == 2 and json.loads(out)["trained"] == 4, err


def _wsl(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_a_real_sigint_during_training(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(lr="[0.1, 0.03]").replace("epochs = 3", "epochs = 400"))
    store = tmp_path / "s"
    proc = _wsl("zoo", "train", spec, "--store", store)
    deadline = time.time() + 120
    while not list((store / "checkpoints").glob("part-*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at epoch " in err and "of cohort 1: run the same command to resume" in err
    assert ZooStore(store).check().ok  # nothing half-written


# ----- concurrent trainers ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_trainers_on_overlapping_specs_write_every_checkpoint_once(tmp_path):
    store = tmp_path / "s"
    specs = []
    for name, lr in (("a", "[0.1, 0.03]"), ("b", "[0.03, 0.01]")):  # one zoo name: the lr=0.03 models are shared
        p = tmp_path / f"{name}.toml"
        p.write_text(SPEC.format(lr=lr).replace("epochs = 3", "epochs = 6"))
        specs.append(p)
    ZooStore(store, create=True)
    procs = [_wsl("zoo", "train", p, "--store", store, "--format", "json") for p in specs]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outs]
    s = ZooStore(store)
    ck = s.sql("SELECT checkpoint_id, count(*) AS n FROM checkpoints GROUP BY ALL")
    assert len(ck) == 6 * 7 and set(ck.n) == {1}  # 6 distinct models x epochs 0..6, each exactly once
    assert s.sql("SELECT count(*) AS n FROM optimizer_states").n[0] == 6 * 7
    models = s.sql("SELECT status FROM models")
    assert len(models) == 6 and set(models.status) == {"done"}
    assert sum(x["trained"] for x in summaries) == 6  # each model trained by one of them
    assert s.check().ok


def test_claims_are_all_or_nothing_and_wait_for_each_other(tmp_path):
    import threading

    from store.claims import Claims

    a, b = Claims(tmp_path), Claims(tmp_path)
    assert a.try_claim(["m1", "m2"]) and a.holds(["m1"])
    assert not b.try_claim(["m3", "m2"]) and not b.holds(["m3"])  # all or none
    assert b.try_claim(["m3"])
    threading.Timer(0.2, a.release).start()
    b.claim(["m1", "m2"])  # waits for `a` to let go
    assert b.holds(["m1", "m2", "m3"]) and not a.mine
    b.release()
    assert a.try_claim(["m1", "m2", "m3"])
    a.release()
