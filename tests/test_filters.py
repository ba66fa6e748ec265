"""store.filters: one pool for every --where, our literals bound as parameters."""
import pytest

from store import ZooStore
from store.errors import UserError
from store.filters import clean, compose, in_list, select_checkpoints, select_models

from _wsl_zoo import fill_store, mlp_zoo


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    zs = ZooStore(tmp_path_factory.mktemp("filters") / "s", create=True)
    fill_store(zs, mlp_zoo(n=4, epochs=2), epochs=[0, 2])
    # a model with no checkpoint: selected by model-level filters only
    from store.schema import TABLES

    row = {c: None for c in TABLES["models"].column_names}
    row.update(model_id="lonely", zoo="other", architecture="mlp", dataset="digits", status="running", width=16, seed=9)
    zs.append("models", [row])
    return zs


def test_clean_strips_where_and_semicolons():
    assert clean("  WHERE width = 32 ;; ") == "width = 32"
    assert clean("   ") is None and clean(None) is None


def test_compose_keeps_a_trailing_comment_from_swallowing_ours():
    body = compose("width = 16 -- only narrow", "status = 'done'")
    assert body.splitlines()[-1].strip().endswith("(status = 'done')")


def test_checkpoint_and_model_columns_bare_or_qualified(store):
    df = select_checkpoints(store, "width = 16 AND epoch = 2 AND models.seed >= 1")
    assert len(df) == 3 and set(df.epoch) == {2}
    assert list(df.columns) == ["checkpoint_id", "model_id", "layout_id", "epoch"]


def test_model_level_selection_includes_models_without_checkpoints(store):
    assert "lonely" in set(select_models(store, "width = 16").model_id)
    assert "lonely" not in set(select_checkpoints(store, "width = 16").model_id)


def test_a_select_filter_selects_the_models_it_returns(store):
    df = select_checkpoints(store, "SELECT model_id FROM models WHERE seed = 0", "epoch = 0")
    assert list(df.model_id) == ["digits-mlp-m000"]


def test_our_values_are_bound_not_spliced(store):
    params = {}
    cond = in_list("model_id", "ids", ["digits-mlp-m001", "x' OR '1'='1"], params)
    df = select_checkpoints(store, None, cond, params=params)
    assert set(df.model_id) == {"digits-mlp-m001"}


def test_empty_selection_is_an_error_naming_the_filter(store):
    with pytest.raises(UserError, match="width = 999"):
        select_checkpoints(store, "width = 999")
    assert select_models(store, "width = 999", allow_empty=True).empty


def test_checkpoints_without_a_models_row_are_in_the_pool_for_checkpoint_commands(tmp_path):
    import torch

    from wsl import ParamLayout

    zs = ZooStore(tmp_path / "o", create=True)
    layout = ParamLayout([("w", (2,))], arch={"name": "toy"})
    zs.append_weights("checkpoints", torch.zeros(2, 2), [dict(checkpoint_id=f"x{i}", model_id=f"x{i}", epoch=i, step=i,
                                                              train_loss=0.0, train_acc=0.0, test_loss=0.0,
                                                              test_acc=0.0) for i in range(2)], layout)
    assert list(select_checkpoints(zs, "epoch = 1").model_id) == ["x1"]
    assert select_models(zs, None, allow_empty=True).empty  # models are rows of `models`
