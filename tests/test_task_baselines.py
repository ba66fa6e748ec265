"""The task baselines (majority, retrieval-select / -nearest, shuffled condition) and gap closed, from known numbers."""
import math

import pytest
import torch

from generators.evaluation import task_baselines as tb
from store.errors import UserError
from wsl.data import Dataset
from zoo.datasets import load_dataset


def _ds(y_train, y_test, name="toy"):
    x_tr = torch.randn(len(y_train), 4, generator=torch.Generator().manual_seed(0))
    x_te = torch.randn(len(y_test), 4, generator=torch.Generator().manual_seed(1))
    return Dataset(name=name, x_train=x_tr, y_train=torch.tensor(y_train), x_test=x_te, y_test=torch.tensor(y_test),
                   num_classes=2)


def test_majority_is_the_train_splits_larger_class_scored_on_test():
    ds = _ds([1, 1, 1, 0], [1, 0, 0, 0, 1])
    assert tb.majority_class(ds) == 1 and tb.majority_accuracy(ds) == pytest.approx(0.4)
    assert tb.majority_class(_ds([0, 1], [0])) == 0  # ties: the lower class
    sub = load_dataset("digits-subset:1")  # only digit 0 is positive: ~10% positives
    assert tb.majority_class(sub) == 0 and 0.85 < tb.majority_accuracy(sub) < 0.95


def test_gap_closed_from_known_numbers():
    assert tb.gap_closed(0.95, 0.60, 1.00) == pytest.approx(0.875)
    assert tb.gap_closed(0.60, 0.60, 0.99) == 0.0 and tb.gap_closed(0.99, 0.60, 0.99) == pytest.approx(1.0)
    assert tb.gap_closed(0.50, 0.60, 0.90) == pytest.approx(-1 / 3)  # worse than always answering the majority
    assert math.isnan(tb.gap_closed(0.9, 0.9, 0.9)) and math.isnan(tb.gap_closed(float("nan"), 0.5, 0.9))


def test_shuffled_task_is_another_task_and_seeded():
    tasks = [f"t{i}" for i in range(10)]
    picks = {tb.shuffled_task("t3", tasks, seed=0) for _ in range(3)}
    assert len(picks) == 1 and picks != {"t3"}
    assert tb.shuffled_task("t3", list(reversed(tasks)), seed=0) == picks.pop()  # order of the list does not matter
    with pytest.raises(UserError, match="no other task"):
        tb.shuffled_task("t3", ["t3"])


@pytest.fixture(scope="module")
def pool():
    from zoo.architectures import build, config_for
    from store.layout import ParamLayout

    tasks = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-7"]
    ds = load_dataset(tasks[0])
    module = build(config_for(ds, {"name": "mlp", "width": 4, "depth": 1}))
    layout = ParamLayout.from_module(module, module.arch_config)
    w = torch.randn(6, layout.num_params, generator=torch.Generator().manual_seed(3))
    return tb.Pool(w, layout, [tasks[0], tasks[0], tasks[1], tasks[1], tasks[2], tasks[2]])


def test_retrieval_select_keeps_the_best_by_train_loss(pool):
    from wsl.evaluate import evaluate

    ds = load_dataset("digits-pair:3-5")
    best = pool.retrieval_select(ds, 2)
    loss = evaluate(pool.weights, pool.layout, ds, split="train").loss
    order = torch.argsort(loss)[:2]
    assert torch.equal(best, pool.weights[order])  # the fused logits cache gives the evaluator's ranking
    assert torch.allclose(pool.train_losses(ds, torch.arange(6)), loss, atol=1e-5)
    assert pool.retrieval_select(ds, 50).shape == (6, pool.layout.num_params)  # all of them when fewer
    assert pool.retrieval_select(load_dataset("digits-pair:0-1"), 50, exclude="digits-pair:0-1").shape[0] == 4
    assert torch.equal(pool.retrieval_select(ds, 3), pool.retrieval_select(ds, 3))  # deterministic


def test_retrieval_nearest_takes_every_checkpoint_of_the_nearest_task(pool):
    ds = load_dataset("digits-pair:0-3")
    w, task = pool.retrieval_nearest(ds)
    emb = tb.dataset_embedding(ds)
    dist = {t: float((tb.dataset_embedding(load_dataset(t)) - emb).norm()) for t in set(pool.tasks)}
    assert task == min(dist, key=dist.get) and w.shape[0] == 2
    w2, task2 = pool.retrieval_nearest(load_dataset(task), exclude=task)
    assert task2 != task and w2.shape[0] == 2
    with pytest.raises(UserError):
        tb.Pool(pool.weights[:2], pool.layout, ["a", "a"]).retrieval_select(ds, 1, exclude="a")
