"""WeightLoader streams SQL-selected weights in order, one batch ahead; DevicePrefetcher hands errors over."""
from __future__ import annotations

import pytest
import torch

from store import ZooStore
from wsl import ParamLayout, UserError
from wsl.loader import DevicePrefetcher, WeightLoader

LAYOUT = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 2, "width": 3, "depth": 1})
WIDE = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 2, "width": 5, "depth": 1})


def rows(prefix, n):
    return [dict(checkpoint_id=f"{prefix}-{i:03d}", model_id=f"{prefix}-{i:03d}", epoch=i % 3, step=i,
                 train_loss=0.0, train_acc=0.0, test_loss=0.0, test_acc=0.0) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = ZooStore(tmp_path / "s", create=True)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(23, LAYOUT.num_params, generator=g)
    s.append_weights("checkpoints", w, rows("a", 23), LAYOUT)
    s.append_weights("checkpoints", torch.randn(4, WIDE.num_params, generator=g), rows("b", 4), WIDE)
    s.w = w
    return s


def test_streams_in_query_order_with_layout(store):
    q = "SELECT checkpoint_id FROM checkpoints WHERE checkpoint_id LIKE 'a-%' ORDER BY checkpoint_id DESC"
    loader = WeightLoader(store, q, batch_size=5)
    assert len(loader) == 5 and loader.num_rows == 23
    assert loader.layout == LAYOUT
    got, ids = [], []
    for w, meta in loader:
        assert w.shape[1] == LAYOUT.num_params and w.device.type == "cpu"
        got.append(w)
        ids += meta.checkpoint_id.tolist()
    assert ids == [f"a-{i:03d}" for i in reversed(range(23))]
    assert torch.equal(torch.cat(got), store.w.flip(0))


def test_ids_dtype_cast_and_early_stop(store):
    loader = WeightLoader(store, ["a-004", "a-001"], batch_size=1, dtype=torch.float64)
    assert loader.layout == LAYOUT
    first = next(iter(loader))
    assert first[0].dtype == torch.float64 and torch.equal(first[0][0].float(), store.w[4])
    for i, _ in enumerate(WeightLoader(store, "SELECT checkpoint_id FROM checkpoints WHERE epoch = 0", batch_size=2)):
        if i == 1:
            break  # the prefetch thread must stop, not hang


def test_mixed_layouts_and_bad_input(store):
    loader = WeightLoader(store, "SELECT checkpoint_id FROM checkpoints")
    with pytest.raises(UserError, match="2 layouts"):
        loader.layout
    with pytest.raises(UserError, match="SQL error|must return"):
        WeightLoader(store, "SELECT nope FROM checkpoints")
    with pytest.raises(UserError, match="batch_size"):
        WeightLoader(store, ["a-000"], batch_size=0)
    with pytest.raises(UserError, match="not in checkpoints"):
        list(WeightLoader(store, ["a-000", "zzz"]))
    with pytest.raises(UserError, match="unknown device|CUDA"):
        WeightLoader(store, ["a-000"], device="tpu" if torch.cuda.is_available() else "cuda")


def test_prefetcher_passes_items_and_errors():
    items = [(torch.full((2,), float(i)), i) for i in range(5)]
    assert [(t.tolist(), i) for t, i in DevicePrefetcher(items, "cpu")] == [([float(i)] * 2, i) for i in range(5)]

    def broken():
        yield torch.zeros(1)
        raise UserError("boom", "fix it")

    with pytest.raises(UserError, match="boom"):
        list(DevicePrefetcher(broken()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_double_buffered(store):
    loader = WeightLoader(store, "SELECT checkpoint_id FROM checkpoints WHERE checkpoint_id LIKE 'a-%' "
                                 "ORDER BY checkpoint_id", batch_size=4, device="cuda")
    got = torch.cat([w.cpu() for w, _ in loader])
    assert torch.equal(got, store.w)


def test_from_where_composes_a_filter_with_bound_conditions(store):
    loader = WeightLoader.from_where(store, "epoch = 1", "checkpoints.checkpoint_id LIKE $p", params={"p": "a-%"},
                                     batch_size=4)
    assert loader.layout == LAYOUT and loader.num_rows == len([i for i in range(23) if i % 3 == 1])
    with pytest.raises(UserError, match="'epoch = 7' selects no checkpoints"):
        WeightLoader.from_where(store, "epoch = 7")


def test_id_lists_are_bound_not_quoted(store, tmp_path):
    s = ZooStore(tmp_path / "q", create=True)
    s.append_weights("checkpoints", torch.zeros(2, LAYOUT.num_params), rows("it's", 2), LAYOUT)
    loader = WeightLoader(s, ["it's-001", "it's-000"])
    assert loader.layout == LAYOUT and [m for _, m in loader][0].checkpoint_id.tolist() == ["it's-001", "it's-000"]
