"""The sampling-time head fit (generators/components/head_fit.py) and the report's `retrieval-*+head` baselines."""
import json

import pytest
import torch

from generators import LatentDiffusion, load_generator
from generators.components.head_fit import final_linear, fit_head
from generators.evaluation.harness import head_targets, targets
from generators.evaluation.task_baselines import Pool
from store.errors import UserError
from wsl import ParamLayout
from wsl.data import Dataset
from wsl.evaluate import evaluate
from wsl.functional import population_forward
from zoo import config_for, load_dataset


def _layout(classes: int = 3, width: int = 8) -> ParamLayout:
    ds = Dataset("toy", torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), torch.zeros(4, 5),
                 torch.zeros(4, dtype=torch.long), num_classes=classes)
    return ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": width, "depth": 1}))


def _planted(layout: ParamLayout, bodies: torch.Tensor, classes: int = 3, n: int = 400) -> Dataset:
    """A dataset whose labels are a linear function of the first body's penultimate features."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * n, 5, generator=g)
    feats = population_forward(layout, layout.unflatten(bodies[:1]), x, features=True)[0]
    w = torch.randn(feats.shape[1], classes, generator=g)
    y = (feats @ w).argmax(1)
    return Dataset("planted", x[:n], y[:n], x[n:], y[n:], num_classes=classes)


def test_final_linear_finds_the_head_only_when_it_fits():
    layout = _layout()
    assert final_linear(layout, 3) == ("layers.1.weight", "layers.1.bias")
    assert final_linear(layout, 2) is None and final_linear(layout, 0) is None


def test_lsq_head_recovers_a_linear_labelling_and_keeps_the_body():
    layout = _layout()
    bodies = torch.randn(4, layout.num_params, generator=torch.Generator().manual_seed(0))
    ds = _planted(layout, bodies)
    before = evaluate(bodies, layout, ds, split="train").accuracy
    out = fit_head(bodies, layout, ds)
    after = evaluate(out, layout, ds, split="train").accuracy
    # the planted labelling is linear in model 0's features: least squares on +-1 targets finds most of it
    assert after[0] >= 0.9 and float(after[0]) > float(before[0])
    head = layout["layers.1.weight"]
    body = slice(0, head.offset)
    assert torch.equal(out[:, body], bodies[:, body])  # everything before the head is untouched
    assert not torch.equal(out[:, head.offset:], bodies[:, head.offset:])
    assert torch.equal(fit_head(bodies, layout, ds), out)  # deterministic
    # the new head keeps the norm of the one it replaces
    span = slice(head.offset, head.offset + head.numel)
    assert torch.allclose(out[:, span].norm(dim=1), bodies[:, span].norm(dim=1), rtol=1e-4)


def test_regression_head_is_the_least_squares_fit():
    layout = ParamLayout.from_config(config_for(
        Dataset("r", torch.zeros(4, 3), torch.zeros(4, 1), torch.zeros(4, 3), torch.zeros(4, 1), task="regression"),
        {"name": "mlp", "width": 6, "depth": 1}))
    bodies = torch.randn(2, layout.num_params, generator=torch.Generator().manual_seed(2))
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(3))
    feats = population_forward(layout, layout.unflatten(bodies[:1]), x, features=True)[0]
    y = feats @ torch.randn(feats.shape[1], 1, generator=torch.Generator().manual_seed(4)) + 0.5
    ds = Dataset("r", x[:200], y[:200], x[200:], y[200:], task="regression")
    out = fit_head(bodies, layout, ds)
    pred = population_forward(layout, layout.unflatten(out[:1]), ds.x_test)[0]
    assert float((pred - ds.y_test).pow(2).mean()) < 1e-3 * float(ds.y_test.var())


def test_modes_and_bad_input():
    layout = _layout()
    bodies = torch.randn(2, layout.num_params)
    ds = _planted(layout, bodies)
    assert torch.equal(fit_head(bodies, layout, ds, "none"), bodies)
    two = _planted(layout, bodies, classes=2)  # the layout's head has 3 outputs, the task 2 classes
    assert torch.equal(fit_head(bodies, layout, two, "auto"), bodies)
    with pytest.raises(UserError, match="does not end in a Linear layer with 2 outputs"):
        fit_head(bodies, layout, two, "lsq")
    with pytest.raises(UserError, match="head_fit 'best'"):
        LatentDiffusion(head_fit="best")


def _tiny_diffusion() -> LatentDiffusion:
    tasks = ["digits-pair:0-1", "digits-pair:2-3"]
    layout = ParamLayout.from_config(config_for(load_dataset(tasks[0]), {"name": "mlp", "width": 4, "depth": 1}))
    w = torch.randn(6, layout.num_params, generator=torch.Generator().manual_seed(0)) * 0.3
    tiny = dict(latent_dim=2, ae_hidden=8, ae_steps=5, steps=5, denoiser_hidden=8, denoiser_depth=1, set_hidden=4,
                cond_dim=4, batch_size=4, max_per_class=4, sample_steps=3, mean_model="none")
    return LatentDiffusion(**tiny).fit_tensors(w, layout, tasks * 3)


def test_diffusion_samples_with_and_without_head_and_legacy_configs_load_without(tmp_path):
    gen = _tiny_diffusion()
    layout = gen.layout
    assert gen.config.head_fit == "auto"
    fitted, _ = gen.sample(5, "digits-pair:4-5", seed=0)
    gen.config.head_fit = "none"
    raw, _ = gen.sample(5, "digits-pair:4-5", seed=0)
    head = layout.param_entries[-2]
    assert torch.equal(fitted[:, :head.offset], raw[:, :head.offset])  # same bodies, different heads
    ds = load_dataset("digits-pair:4-5")
    assert float(evaluate(fitted, layout, ds).accuracy.mean()) > float(evaluate(raw, layout, ds).accuracy.mean())
    gen.config.head_fit = "auto"
    d = gen.save_pretrained(tmp_path / "g")
    assert load_generator(d).config.head_fit == "auto"
    cfg = json.loads((d / "config.json").read_text())
    del cfg["config"]["head_fit"]  # as written before the option existed
    (d / "config.json").write_text(json.dumps(cfg))
    old = load_generator(d)
    assert old.config.head_fit == "none" and torch.equal(old.sample(5, "digits-pair:4-5", seed=0)[0], raw)


def test_retrieval_select_with_a_transform_scores_the_transformed_candidates():
    layout = _layout()
    bodies = torch.randn(6, layout.num_params, generator=torch.Generator().manual_seed(5))
    ds = _planted(layout, bodies)
    pool = Pool(bodies, layout, ["a", "a", "b", "b", "c", "c"])
    plain = pool.retrieval_select(ds, 2)
    headed = pool.retrieval_select(ds, 2, transform=lambda w: fit_head(w, layout, ds))
    assert torch.allclose(headed[0], fit_head(bodies[:1], layout, ds)[0], atol=1e-5)  # model 0's features define the labels
    assert evaluate(headed, layout, ds, split="train").loss.mean() < evaluate(plain, layout, ds, split="train").loss.mean()


def test_head_targets_only_when_the_head_baselines_exist():
    line = {"heldout_select4_acc": 0.9, "heldout_raw_acc": 0.8, "heldout_retrieval_select_head_acc": 0.85,
            "heldout_retrieval_nearest_head_acc": 0.82}
    assert head_targets(line) == {"select4_beats_retrieval_select_head": True, "raw_beats_retrieval_nearest_head": False}
    line["heldout_random_init_head_acc"] = 0.7
    assert head_targets(line)["raw_beats_random_init_head"] is True
    assert head_targets({"heldout_raw_acc": 0.8, "heldout_retrieval_nearest_head_acc": None}) == {}
    assert "raw_beats_retrieval_nearest_head" not in targets({"heldout_raw_acc": 0.8})


def test_report_without_a_zoo_still_has_the_random_init_head_baseline():
    from generators.evaluation.report import evaluate_condition

    gen = _tiny_diffusion()
    cr = evaluate_condition(gen, "digits-pair:4-5", n=3, finetune_steps=(0,))
    assert cr.accuracy["random-init+head"]["n"] == 3 and "retrieval-select+head" not in cr.accuracy
    assert "retrieval_pool" not in cr.extra  # no pool without a store: no lookup baselines
