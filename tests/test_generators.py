"""Weight generators: the shared interface and latent diffusion, on tiny nets with a few training steps."""
import json

import pytest
import torch

from generators import LatentDiffusion, WeightGenerator, load_generator
from generators.conditions import Condition
from generators.components.mean_model import RidgeMean, dataset_statistics
from generators.components.symmetry import align_groups
from store.errors import UserError
from wsl import ParamLayout
from wsl.evaluate import evaluate
from zoo import config_for, load_dataset, pair_tasks

TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2"]
TINY = dict(latent_dim=4, ae_hidden=16, ae_steps=20, steps=20, denoiser_hidden=16, denoiser_depth=1, set_hidden=8,
            cond_dim=8, batch_size=8, max_per_class=8, sample_steps=5)


@pytest.fixture(scope="module")
def tiny():
    """A layout (mlp 64-4-2, 270 parameters) and 12 models: 3 pair tasks x 4 seeds, a few SGD steps each."""
    arch = config_for(load_dataset(TASKS[0]), {"name": "mlp", "width": 4, "depth": 1})
    layout = ParamLayout.from_config(arch)
    rows, conds, groups = [], [], []
    for seed in range(4):
        for t in TASKS:
            torch.manual_seed(seed)
            m = layout.build_module()
            ds = load_dataset(t)
            opt = torch.optim.SGD(m.parameters(), lr=0.5)
            for _ in range(5):
                loss = torch.nn.functional.cross_entropy(m(ds.x_train), ds.y_train)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rows.append(layout.flatten(m))
            conds.append(t)
            groups.append(seed)
    return layout, torch.stack(rows), conds, groups


@pytest.fixture(scope="module")
def fitted(tiny):
    layout, w, conds, groups = tiny
    acc = torch.linspace(0.5, 1.0, len(w))
    return LatentDiffusion(**TINY).fit_tensors(w, layout, conds, metrics={"test_acc": acc}, groups=groups)


def test_fit_sample_shapes_and_layout(fitted, tiny):
    layout = tiny[0]
    w, lay = fitted.sample(7, "digits-pair:0-1", seed=0)
    assert lay == layout and w.shape == (7, layout.num_params) and torch.isfinite(w).all()
    assert fitted.fit_info["num_train"] == 12 and set(fitted.fit_info["conditions"]) == set(TASKS)
    assert fitted.fit_info["aligned_groups"] == 4
    res = evaluate(w, lay, load_dataset("digits-pair:0-1"))  # generated weights are models of the layout
    assert res.accuracy.shape == (7,)


def test_same_seed_same_samples_other_seed_differs(fitted):
    a, _ = fitted.sample(5, "digits-pair:0-2", seed=3)
    b, _ = fitted.sample(5, "digits-pair:0-2", seed=3)
    c, _ = fitted.sample(5, "digits-pair:0-2", seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_different_datasets_give_different_samples(fitted):
    a, _ = fitted.sample(4, "digits-pair:0-1", seed=0)
    b, _ = fitted.sample(4, "digits-pair:1-2", seed=0)
    unseen, _ = fitted.sample(4, "digits-pair:5-9", seed=0)  # a dataset it never saw works the same way
    assert not torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, unseen, atol=1e-4)
    assert "digits-pair:5-9" not in fitted.fit_info["conditions"]


def test_select_keeps_the_lowest_training_loss_candidates(fitted):
    ds = load_dataset("digits-pair:0-2")
    pool, _ = fitted.sample(12, ds, seed=5)  # select=3 with n=4 draws these 12 candidates
    best, _ = fitted.sample(4, ds, seed=5, select=3)
    loss = evaluate(pool, fitted.layout, ds, split="train").loss
    order = torch.sort(loss, stable=True).indices[:4]
    assert torch.equal(best, pool[order])  # the 4 best of 12, best first; the test split is never used
    assert evaluate(best, fitted.layout, ds, split="train").loss.max() <= loss.median()
    assert torch.equal(best, fitted.sample(4, ds, seed=5, select=3)[0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="select"):
            fitted.sample(4, ds, select=bad)


def test_dataset_object_and_target_metric(fitted):
    ds = load_dataset("digits-pair:0-1")
    a, _ = fitted.sample(3, ds, seed=1)
    b, _ = fitted.sample(3, "digits-pair:0-1", seed=1)
    assert torch.equal(a, b)  # a name and the object it names are the same condition
    hi, _ = fitted.sample(3, Condition("digits-pair:0-1", {"test_acc": 1.0}), seed=1)
    lo, _ = fitted.sample(3, "digits-pair:0-1", seed=1, target={"test_acc": 0.5})
    assert not torch.allclose(hi, lo) and not torch.allclose(hi, a)


def test_save_load_round_trip(fitted, tmp_path):
    d = fitted.save_pretrained(tmp_path / "gen")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "scheduler", "training_set.json"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["method"] == "diffusion" and cfg["layout_id"] == fitted.layout.layout_id
    assert json.loads((d / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"
    back = load_generator(d)
    assert isinstance(back, LatentDiffusion) and back.generator_id == fitted.generator_id
    assert back.config == fitted.config and back.layout == fitted.layout
    for cond in ("digits-pair:0-1", "digits-pair:3-5"):
        a, _ = fitted.sample(6, cond, seed=2, target={"test_acc": 0.9})
        b, _ = back.sample(6, cond, seed=2, target={"test_acc": 0.9})
        assert torch.equal(a, b)
    assert LatentDiffusion.from_pretrained(d).generator_id == fitted.generator_id
    # saving again into the same directory replaces it
    fitted.save_pretrained(d)
    assert load_generator(d).generator_id == fitted.generator_id


def test_bad_input_is_a_user_error(fitted, tiny, tmp_path):
    layout, w, conds, _ = tiny
    with pytest.raises(UserError, match="n >= 1"):
        fitted.sample(0, "digits-pair:0-1")
    with pytest.raises(UserError, match="10 classes"):
        fitted.sample(2, "digits")
    with pytest.raises(UserError, match="inputs of shape"):
        fitted.sample(2, "mnist1d-pair:0-1")
    with pytest.raises(UserError, match="unknown dataset"):
        fitted.sample(2, "nope")
    with pytest.raises(UserError, match="were not a condition"):
        fitted.sample(2, "digits-pair:0-1", target={"test_loss": 0.1})
    with pytest.raises(UserError, match="values per model"):
        LatentDiffusion(**TINY).fit_tensors(w[:, :-1], layout, conds)
    with pytest.raises(UserError, match="conditions"):
        LatentDiffusion(**TINY).fit_tensors(w, layout, conds[:-1])
    with pytest.raises(UserError, match="no option"):
        LatentDiffusion(latent_size=3)
    with pytest.raises(UserError, match="not fit"):
        LatentDiffusion().sample(2, "digits-pair:0-1")
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "missing")


def test_generator_dir_checks(fitted, tmp_path):
    d = fitted.save_pretrained(tmp_path / "gen")
    cfg = json.loads((d / "config.json").read_text())
    # a config whose layout was edited (another width) no longer matches its recorded id or its tensors
    cfg["layout"]["params"][0][1] = [8, 64]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="layout"):
        load_generator(d)
    cfg.pop("layout_id")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match its config"):
        load_generator(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_generator(d)
    (d / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a generator config"):
        load_generator(d)


def test_align_groups_preserves_function(tiny):
    layout, w, conds, groups = tiny
    aligned = align_groups(w, layout, groups)
    assert not torch.equal(aligned, w)
    ds = load_dataset("digits-pair:0-1")
    a = evaluate(w, layout, ds, return_predictions=True)
    b = evaluate(aligned, layout, ds, return_predictions=True)
    assert torch.equal(a.predictions, b.predictions) and torch.allclose(a.loss, b.loss, atol=1e-5)
    assert torch.equal(align_groups(w, layout, [0] * len(w)), w)  # one group: nothing to align


def test_ridge_mean_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 5, generator=g)
    coef = torch.randn(5, 7, generator=g)
    targets = feats @ coef + 0.5
    ridge = RidgeMean(30, 5, 7)
    info = ridge.fit(feats, targets)
    assert info["ridge_loo_explained"] > 0.99
    assert torch.allclose(ridge(feats[:3]), targets[:3].float(), atol=1e-2)


def test_dataset_statistics_are_class_means():
    ds = load_dataset("digits-pair:3-5")
    s = dataset_statistics(ds.x_train, ds.y_train, 2)
    assert s.shape == (256,)  # [class 0: mean, std | class 1: mean, std] of the 64 inputs
    x0 = ds.x_train[ds.y_train == 0].flatten(1)
    assert torch.allclose(s[:64].float(), x0.mean(0), atol=1e-6)
    assert torch.allclose(s[64:128].float(), x0.std(0, unbiased=False), atol=1e-5)


def test_base_class_dispatch(fitted, tmp_path):
    d = fitted.save_pretrained(tmp_path / "g")
    assert type(WeightGenerator.from_pretrained(d)) is LatentDiffusion
