"""Generators on a store: fit from SQL, the report (accuracy, novelty, baselines, fine-tuning), the samples table."""
import json
import math

import pytest
import torch

from generators import LatentDiffusion
from generators.evaluation.baselines import baselines
from generators.evaluation.novelty import iou_matrix, iou_stats, nearest_l2
from generators.evaluation.records import record
from generators.evaluation.report import evaluate_generator
from store.errors import UserError
from store.store import ZooStore

TINY = dict(latent_dim=4, ae_hidden=16, ae_steps=20, steps=20, denoiser_hidden=16, denoiser_depth=1, set_hidden=8,
            cond_dim=8, batch_size=8, max_per_class=8, sample_steps=5)
TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2", "digits-pair:3-5"]
TINY_ZOO = {"name": "tiny-pairs", "dataset": TASKS, "epochs": 3, "batch_size": 64, "seeds": 2,
            "architecture": {"name": "mlp", "width": 4, "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01},
            "checkpoints": {"epochs": [3]}}


@pytest.fixture(scope="module")
def zoo_store(tmp_path_factory):
    import zoo

    path = tmp_path_factory.mktemp("gen") / "store"
    zoo.train(TINY_ZOO, ZooStore(path, create=True))
    return path


def test_fit_from_store_with_sql(zoo_store):
    st = ZooStore(zoo_store, create=False)
    gen = LatentDiffusion.fit(st, "dataset <> 'digits-pair:3-5' AND checkpoints.epoch = 3", metric="test_acc", **TINY)
    assert gen.fit_info["num_train"] == 6 and gen.fit_info["aligned_groups"] == 2
    assert set(gen.fit_info["conditions"]) == set(TASKS[:3]) and gen.fit_info["metrics"] == ["test_acc"]
    assert gen.fit_info["where"].startswith("dataset <>")
    w, layout = gen.sample(3, "digits-pair:3-5")
    assert layout.layout_id == st.sql("SELECT DISTINCT layout_id FROM checkpoints")["layout_id"][0]
    with pytest.raises(UserError, match="matches no checkpoints"):
        LatentDiffusion.fit(st, "dataset = 'digits-pair:7-8'", **TINY)
    with pytest.raises(UserError, match="metric 'nope'"):
        LatentDiffusion.fit(st, None, metric="nope", **TINY)
    with pytest.raises(UserError):
        LatentDiffusion.fit(st, "no_such_column = 1", **TINY)


def test_report_and_samples_table(zoo_store, tmp_path):
    st = ZooStore(zoo_store)
    gen = LatentDiffusion.fit(st, "dataset <> 'digits-pair:3-5'", metric="test_acc", **TINY)
    gen.save_pretrained(tmp_path / "gen")
    rep = evaluate_generator(gen, ["digits-pair:0-1", "digits-pair:3-5"], store=st, n=6, seed=1,
                             target={"test_acc": 1.0}, finetune_n=2, finetune_steps=(0, 1, 2))
    seen, unseen = rep.conditions
    assert seen.seen and not unseen.seen and seen.condition == "digits-pair:0-1|test_acc=1"
    weighted = {"generated", "noise-0.06", "noise-0.12", "avg16", "gaussfit", "interp", "retrieval-select",
                "retrieval-nearest", "shuffled-condition",
                "retrieval-select+head", "retrieval-nearest+head", "random-init+head"}  # it fits its head (head_fit=auto)
    for c in rep.conditions:
        assert set(c.accuracy) == weighted | {"zoo", "majority"}
        g = c.accuracy["generated"]
        assert g["n"] == 6 and g["min"] <= g["median"] <= g["best"] and c.accuracy["zoo"]["n"] == 2
        assert set(c.novelty) == weighted
        assert c.novelty["generated"]["nn_l2_mean"] > 0
        assert c.novelty["generated"]["nn_l2_aligned_mean"] <= c.novelty["generated"]["nn_l2_mean"] + 1e-6
        assert set(c.gap_closed) == weighted
        assert c.finetune["steps"] == [0, 1, 2] and len(c.finetune["random_init"]["mean"]) == 3
    # retrieval: a seen task picks from the other tasks' checkpoints (4 of the 6), a held-out one from all 6
    assert seen.accuracy["retrieval-select"]["n"] == 4 and unseen.accuracy["retrieval-select"]["n"] == 6
    assert seen.accuracy["retrieval-nearest"]["n"] == 2 and seen.extra["retrieval_nearest_task"] != "digits-pair:0-1"
    assert seen.accuracy["retrieval-select+head"]["n"] == 4 and unseen.accuracy["retrieval-nearest+head"]["n"] == 2
    assert seen.extra["shuffled_task"] != "digits-pair:0-1" and unseen.extra["shuffled_task"] in TASKS[:3]
    s = rep.summary()
    assert set(s) == {"seen", "unseen"} and "generated_mean_acc" in s["unseen"] and "zoo_mean_acc" in s["seen"]
    out = rep.save(tmp_path / "report")
    assert {p.name for p in out.iterdir()} == {"report.json", "accuracy.png", "novelty.png", "finetune.png"}
    assert json.loads((out / "report.json").read_text())["summary"]["seen"]["conditions"] == 1

    written = record(st, gen, rep, tmp_path / "gen")
    # retrieval kinds twice (+head), random-init+head 6 per condition
    assert written == {"samples": 2 * 6 * 6 + 2 * (4 + 6 + 2 * 2) + 2 * 6 + 2 * 6, "generators": 1}
    df = st.sql("SELECT kind, count(*) AS n, avg(test_acc) AS acc FROM samples GROUP BY kind ORDER BY kind")
    assert dict(zip(df.kind, df.n)) == {"avg16": 12, "gaussfit": 12, "generated": 12, "interp": 12, "noise-0.06": 12,
                                      "noise-0.12": 12, "retrieval-select": 10, "retrieval-nearest": 4,
                                      "retrieval-select+head": 10, "retrieval-nearest+head": 4, "random-init+head": 12,
                                      "shuffled-condition": 12}
    row = st.sql("SELECT * FROM generators")
    assert row.generator_id[0] == gen.generator_id and json.loads(row.report[0])["n"] == 6
    w, meta = st.weights("SELECT sample_id FROM samples WHERE kind = 'generated' ORDER BY sample_id", table="samples")
    assert w.shape == (12, gen.layout.num_params)
    assert record(st, gen, rep, tmp_path / "gen") == {"samples": 0, "generators": 0}  # idempotent
    reports = st.sql("SELECT generator_id, conditions, report FROM generator_reports")
    assert len(reports) == 1 and reports.report[0] == row.report[0]  # recorded once, the same JSON


def test_iou_and_nearest_l2():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    m = iou_matrix(a, b)
    assert m[0, 0] == 0.5 and m[0, 1] == 0 and m[1, 0] == 0 and math.isnan(m[1, 1])
    s = iou_stats(a, b)
    assert s["iou_orig_gen"] == pytest.approx(1 / 6) and s["iou_pairs_defined"] == 0.75
    assert s["iou_max_orig_gen"] == 0.25  # per candidate: max(0.5, 0) and max(0, undefined), averaged
    # a reference without mistakes leaves nothing to copy: orig-gen is undefined, whatever the candidates do
    s = iou_stats(a, torch.zeros_like(b))
    assert math.isnan(s["iou_max_orig_gen"]) and math.isnan(s["iou_orig_gen"]) and s["iou_pairs_defined"] == 0
    assert s["iou_gen_gen"] == 0  # candidates among themselves: the pair (0, 1) is defined
    d = nearest_l2(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [3.0, 4.0]]))
    assert torch.allclose(d, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_baselines_are_seeded_and_scaled():
    from wsl import ParamLayout

    layout = ParamLayout([("w", (20, 19)), ("b", (20,))])
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 400, generator=g)
    a = baselines(ref, layout, 8, seed=3)
    b = baselines(ref, layout, 8, seed=3)
    assert set(a) == {"noise-0.06", "noise-0.12", "avg16", "gaussfit", "interp"}
    assert all(torch.equal(a[k], b[k]) and a[k].shape == (8, 400) for k in a)
    # relative amplitude: the 0.12 noise is about twice as far from its source checkpoint as the 0.06 noise
    d6 = nearest_l2(a["noise-0.06"], ref).mean()
    d12 = nearest_l2(a["noise-0.12"], ref).mean()
    assert 1.8 < float(d12 / d6) < 2.2 and 0.05 < float(d6 / ref.norm(dim=1).mean()) < 0.07
    with pytest.raises(UserError):
        baselines(torch.empty(0, 400), layout, 8)


def test_interp_baseline_mixes_aligned_pairs():
    from generators.evaluation.baselines import interpolate
    from wsl import ParamLayout
    from wsl.align import random_permutation

    layout = ParamLayout.from_config({"name": "mlp", "in_features": 6, "out_features": 3, "width": 5, "depth": 2})
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, layout.num_params, generator=g)
    # two references that are the same function with their hidden units permuted: aligned, they coincide
    ref = torch.cat([base, random_permutation(base, layout, torch.Generator().manual_seed(1))])
    assert not torch.allclose(ref[0], ref[1])
    out = interpolate(ref, layout, 6, torch.Generator().manual_seed(2))
    assert out.shape == (6, layout.num_params)
    for row in out:  # every mix of the pair is one of the two stored orderings of the same network
        assert min(float((row - r).abs().max()) for r in ref) < 1e-5
    again = interpolate(ref, layout, 6, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    # a layout without a known symmetry is mixed as stored: a proper interpolation, away from both ends
    flat = ParamLayout([("w", (3, 4))])
    mixed = interpolate(torch.stack([torch.zeros(12), torch.ones(12)]), flat, 20, torch.Generator().manual_seed(0))
    assert bool(((mixed > 0.24) & (mixed < 0.76)).all()) and float(mixed.std()) > 0.05


def test_a_selection_mixing_layouts_names_every_layout(tmp_path):
    from wsl import ParamLayout

    st = ZooStore(tmp_path / "mixed", create=True)
    layouts = [ParamLayout.from_config({"name": "mlp", "in_features": 64, "out_features": 2, "width": w, "depth": 1})
               for w in (2, 3, 4, 5, 6)]
    g = torch.Generator().manual_seed(0)
    for i, lay in enumerate(layouts):
        st.append("models", [{"model_id": f"m{i}", "zoo": "mixed", "architecture": "mlp", "arch_config": "{}",
                              "layout_id": lay.layout_id, "dataset": "digits-pair:0-1", "dataset_id": "d", "task":
                              "classification", "width": lay.arch["width"], "depth": 1, "optimizer": "sgd", "lr": 0.1,
                              "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8, "epochs": 1, "schedule": "constant",
                              "seed": i, "status": "done", "hparams": "{}"}])
        st.append_weights("checkpoints", torch.randn(1, lay.num_params, generator=g),
                          [{"checkpoint_id": f"m{i}-e0001", "model_id": f"m{i}", "epoch": 1, "step": 1, "train_loss": 0.1,
                            "train_acc": 1.0, "test_loss": 0.1, "test_acc": 1.0}], lay)
    with pytest.raises(UserError, match="mixes 5 layouts") as e:
        LatentDiffusion.fit(st, None, **TINY)
    for lay in layouts:  # the count and the list agree
        assert lay.layout_id in str(e.value)
    # our values are bound parameters: a quote in a dataset name is a name, not SQL
    from generators.evaluation.references import zoo_checkpoints

    assert zoo_checkpoints(st, "digits-pair:0-1", layouts[0].layout_id)[1] == ["m0-e0001"]
    assert zoo_checkpoints(st, "x' OR '1'='1", layouts[0].layout_id)[1] == []
