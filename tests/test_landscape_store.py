"""The end-to-end store path: a tiny trained zoo -> `landscape` rows -> phase diagrams."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from store.store import ZooStore
from wsl import UserError
from zoo.landscape import Recipe, Thresholds, compute_landscape, landscape_recipe_id, relabel
from zoo.landscape.plot import cells, phase_table, plot_phases
from zoo.landscape.run import model_seed, seed_pairs

TINY_SPEC = {
    "name": "tiny-phases", "dataset": "digits", "epochs": 2, "batch_size": 128, "seeds": 3,
    "architecture": {"name": "mlp", "width": [4, 8], "depth": 1},
    "optimizer": {"name": "sgd", "lr": [0.05, 0.2], "momentum": 0.9},
}
# a recipe small enough for a test, with every knob away from its default
FAST = Recipe(batches=2, batch_size=64, probes=4, iterations=5, deflation=3, curve_epochs=1, curve_points=5, curve_batch_size=256)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from zoo import train

    path = tmp_path_factory.mktemp("zoo") / "store"
    summary = train(TINY_SPEC, path)
    assert summary.trained == 12
    return path


@pytest.fixture
def store_dir(trained, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(trained, dst)
    return dst


def test_landscape_rows_carry_metrics_recipe_and_thresholds(store_dir):
    th = Thresholds(loss=0.5)
    s = compute_landscape(store_dir, recipe=FAST, thresholds=th)
    assert (s.selected, s.computed, s.already_stored) == (12, 12, 0)
    assert s.pairs == 4 * 3  # 4 configurations x 3 seed pairs
    store = ZooStore(store_dir)
    rows = store.sql("SELECT * FROM landscape")
    assert len(rows) == 12 and set(rows["recipe_id"]) == {landscape_recipe_id(FAST, th)} == {s.recipe_id}
    assert (rows["epoch"] == 2).all() and (rows["num_pairs"] == 2).all()
    for col in ("hessian_top_eig", "hessian_trace", "mode_connectivity", "cka_logits", "cka_hidden", "train_loss", "train_acc"):
        assert rows[col].notna().all(), col
    assert (rows["hessian_top_eig"] > 0).all() and (rows["cka_logits"] <= 1 + 1e-9).all()
    recipe = json.loads(rows["recipe"].iloc[0])
    assert recipe["probes"] == 4 and recipe["iterations"] == 5 and recipe["batch_size"] == 64 and recipe["split"] == "train"
    assert recipe["curve_epochs"] == 1 and "curve_lr" in recipe and "hessian_seed" in recipe and "curve_seed" in recipe
    assert json.loads(rows["thresholds"].iloc[0])["loss"] == 0.5
    assert set(rows["phase"]) <= {"I", "II", "III", "IV-A", "IV-B"}
    # the two seeds of a pair see the same pair value; each model's value is the mean over its two pairs
    by_cfg = store.sql("SELECT m.width, m.lr, l.mode_connectivity FROM landscape l JOIN models m USING (model_id)")
    assert by_cfg.groupby(["width", "lr"]).size().eq(3).all()


def test_rows_store_probe_seeds_and_errors_that_reproduce_the_values(store_dir):
    from zoo.datasets import load_dataset
    from zoo.landscape.hessian import hessian_metrics

    recipe = FAST.replace(hessian_seed=3)
    compute_landscape(store_dir, where="width = 8", recipe=recipe)
    store = ZooStore(store_dir)
    rows = store.sql("SELECT * FROM landscape ORDER BY model_id")
    assert (rows["hessian_probe_seed"] == [model_seed(m, 3) for m in rows["model_id"]]).all()
    assert rows["hessian_probe_seed"].dtype == "int64"
    assert ((rows["hessian_lanczos_steps"] >= 3) & (rows["hessian_lanczos_steps"] <= 5)).all()
    assert (rows["hessian_hvps"] == rows["hessian_lanczos_steps"] + 4).all()
    assert (rows["hessian_trace_se"] > 0).all() and (rows["hessian_top_eig_tol"] >= 0).all()
    assert rows["phase_uncertain"].notna().all() and rows["phase_uncertain"].dtype == bool
    # the stored seed and recipe recompute the stored values, one model alone
    r0 = rows.iloc[0]
    W, _ = store.weights([r0["checkpoint_id"]])
    layout = store.layout(store.sql("SELECT layout_id FROM checkpoints WHERE checkpoint_id = $c",
                                    {"c": r0["checkpoint_id"]})["layout_id"].iloc[0])
    stored = Recipe.from_dict(json.loads(r0["recipe"]))
    assert stored == recipe
    hm = hessian_metrics(layout, W.float(), stored.eval_batches(load_dataset("digits")), iterations=stored.iterations,
                         tol=stored.eig_tol, deflation=stored.deflation, probes=stored.probes,
                         seeds=[int(r0["hessian_probe_seed"])])
    for col in ("hessian_top_eig", "hessian_trace", "hessian_trace_se", "hessian_top_eig_tol"):
        assert float(hm[col][0]) == pytest.approx(float(r0[col]), rel=1e-4), col
    assert int(hm["hessian_lanczos_steps"][0]) == int(r0["hessian_lanczos_steps"])


def test_phase_uncertain_rows_and_relabel(store_dir):
    compute_landscape(store_dir, recipe=FAST, thresholds=Thresholds(loss=0.0))  # all "poorly trained": mc or trace decide
    rows = ZooStore(store_dir).sql("SELECT * FROM landscape")
    for _, r in rows.iterrows():
        assert r["phase_uncertain"] == (pd.notna(r["phase_margin"]) and abs(r["phase_margin"]) <= 2.0)
    # put the trace threshold on one model's trace: its label becomes uncertain, relabel says so
    pick = rows.iloc[0]
    th = Thresholds(loss=0.0, mc_tol=100.0, hessian_trace=float(pick["hessian_trace"]) + 0.5 * float(pick["hessian_trace_se"]))
    relabel(store_dir, th)
    new = ZooStore(store_dir).sql(f"SELECT * FROM landscape WHERE recipe_id = '{landscape_recipe_id(FAST, th)}'")
    assert len(new) == 12 and new["phase_margin"].notna().all()  # mc_tol 100: the trace decides every label
    mine = new.set_index("model_id").loc[pick["model_id"]]
    assert mine["phase_margin"] == pytest.approx(-0.5) and bool(mine["phase_uncertain"]) is True
    assert (new["phase_uncertain"] == (new["phase_margin"].abs() <= 2.0)).all()


def test_rerun_is_a_no_op_and_where_selects_models(store_dir):
    s1 = compute_landscape(store_dir, where="width = 4", recipe=FAST)
    assert (s1.selected, s1.computed) == (6, 6)
    s2 = compute_landscape(store_dir, where="width = 4", recipe=FAST)
    assert (s2.computed, s2.already_stored) == (0, 6)
    s3 = compute_landscape(store_dir, recipe=FAST)  # only the width-8 models are missing
    assert (s3.computed, s3.already_stored) == (6, 6)
    assert ZooStore(store_dir).count("landscape") == 12


def test_values_do_not_depend_on_which_models_were_selected(store_dir, tmp_path):
    compute_landscape(store_dir, where="width = 8 AND lr = 0.05", recipe=FAST)
    other = tmp_path / "other"
    shutil.copytree(store_dir, other)
    a = ZooStore(store_dir).sql("SELECT * FROM landscape ORDER BY model_id")
    # one model of the configuration alone: its pairs still use the other seeds of the store
    mid = a["model_id"].iloc[0]
    b_store = ZooStore(other)
    compute_landscape(other, where=f"width = 8 AND lr = 0.05 AND model_id <> '{mid}'", recipe=FAST.replace(probes=5))
    compute_landscape(other, where=f"model_id = '{mid}'", recipe=FAST.replace(probes=5))
    b = b_store.sql("SELECT * FROM landscape WHERE recipe::JSON->>'probes' = '5' ORDER BY model_id")
    assert list(a["model_id"]) == list(b["model_id"])
    for col in ("mode_connectivity", "cka_logits", "cka_hidden", "train_loss", "hessian_top_eig"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-4, abs=1e-6), col


def test_relabel_changes_labels_not_metrics(store_dir):
    compute_landscape(store_dir, recipe=FAST, thresholds=Thresholds(loss=10.0))
    n = relabel(store_dir, Thresholds(loss=0.0))
    assert n == 12
    rows = ZooStore(store_dir).sql("SELECT * FROM landscape")
    assert rows["recipe_id"].nunique() == 2 and rows["metrics_recipe_id"].nunique() == 1
    strict = rows[rows["thresholds"].str.contains('"loss":0.0')]
    loose = rows[~rows["thresholds"].str.contains('"loss":0.0')]
    assert set(strict["phase"]) <= {"I", "II"} and set(loose["phase"]) <= {"III", "IV-A", "IV-B"}
    m = strict.set_index("model_id")["hessian_trace"].sort_index()
    assert m.tolist() == pytest.approx(loose.set_index("model_id")["hessian_trace"].sort_index().tolist())


def test_phase_plots_from_the_store(store_dir, tmp_path):
    compute_landscape(store_dir, recipe=FAST)
    df = phase_table(ZooStore(store_dir))
    assert len(df) == 12 and {"load", "temperature", "phase"} <= set(df.columns)
    c = cells(df)
    assert len(c) == 4 and (c["models"] == 3).all()
    paths = plot_phases(ZooStore(store_dir), tmp_path / "plots", load="width", temperature="lr / batch_size")
    names = {p.name for p in paths}
    assert {"phase_map.png", "phase_diagram.png", "hessian_trace.png", "mode_connectivity.png", "cka_logits.png",
            "cells.csv"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "plots" / "cells.csv").read_text().splitlines()) == 5
    with pytest.raises(UserError, match=r"--where 'width = 1000' selects no models"):
        phase_table(ZooStore(store_dir), where="width = 1000")
    with pytest.raises(UserError, match=r"--where 'width = 4 AND epoch = 0' selects 6 models, none with landscape"):
        phase_table(ZooStore(store_dir), where="width = 4 AND epoch = 0", epoch=0)


def test_bad_input_is_a_user_error_and_writes_nothing(store_dir, tmp_path):
    with pytest.raises(UserError, match="--where"):
        compute_landscape(store_dir, where="no_such_column = 1", recipe=FAST)
    with pytest.raises(UserError, match="no zoo store"):
        compute_landscape(tmp_path / "nowhere", recipe=FAST)
    with pytest.raises(UserError, match="no landscape rows"):
        phase_table(ZooStore(store_dir))
    with pytest.raises(UserError, match=r"--where 'width = 1000' selects no finished models"):
        compute_landscape(store_dir, where="width = 1000", recipe=FAST)
    with pytest.raises(UserError, match="none with a checkpoint at epoch 7"):
        compute_landscape(store_dir, epoch=7, recipe=FAST)
    assert ZooStore(store_dir).count("landscape") == 0


def test_seed_pairs_and_model_seeds():
    assert seed_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    ring = seed_pairs(6, partners=1)
    assert len(ring) == 6 and all(sum(i in p for p in ring) == 2 for i in range(6))
    assert seed_pairs(4, partners=5) == seed_pairs(4)
    assert model_seed("abc") == model_seed("abc") != model_seed("abd")


def test_builtin_phase_spec_is_a_width_by_temperature_grid_with_seed_pairs():
    from zoo import expand, load_spec

    rows = expand(load_spec("phases"))
    assert len(rows) == 75
    cells = {(r["width"], r["lr"] / r["batch_size"]) for r in rows}
    assert len(cells) == 25 and all(sum((r["width"], r["lr"] / r["batch_size"]) == c for r in rows) == 3 for c in cells)


def test_plot_texts_are_not_clipped_even_with_long_titles_and_axis_expressions(store_dir):
    import matplotlib.pyplot as plt

    from zoo.landscape.plot import clipped_texts, phase_figures

    compute_landscape(store_dir, recipe=FAST)
    df = phase_table(ZooStore(store_dir))
    long_title = "zoo tiny-phases with a deliberately long title that would run off the figure: " * 3
    long_load = "width * depth + 0 * (lr / batch_size) + a long expression for the load axis"
    figs = phase_figures(cells(df), load_label=long_load, temp_label="lr / batch size " * 6, title=long_title)
    try:
        assert {"phase_map", "phase_diagram", "hessian_trace"} <= set(figs)
        for name, fig in figs.items():
            assert clipped_texts(fig) == [], name
        # the check itself fails on a figure whose title runs off it
        bad, ax = plt.subplots(figsize=(3, 2))
        ax.set_title(long_title)
        assert clipped_texts(bad)
        plt.close(bad)
    finally:
        for fig in figs.values():
            plt.close(fig)
