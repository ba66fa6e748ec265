import pytest
import torch

from wsl import ParamLayout, UserError
from zoo import build, config_for, load_dataset
from zoo.architectures import REGISTRY


def test_every_architecture_is_registered_and_found_by_layouts():
    from store.layout import architecture_names

    assert set(REGISTRY) <= set(architecture_names())


@pytest.mark.parametrize("name", ["mlp", "cnn2d", "transformer"])
def test_width_is_the_load_axis(name):
    ds = load_dataset("digits")
    small = ParamLayout.from_config(config_for(ds, {"name": name, "width": 8}))
    big = ParamLayout.from_config(config_for(ds, {"name": name, "width": 16}))
    assert big.num_params > small.num_params


def test_default_configs_have_no_buffers():
    """BatchNorm is opt-in for these families: their default layouts (and stored layout_ids) stay buffer-free."""
    for ds_name, names in [("digits", ["mlp", "cnn2d", "transformer"]), ("mnist1d", ["cnn1d"]), ("sciml:sine", ["siren"])]:
        ds = load_dataset(ds_name)
        for n in names:
            m = build(config_for(ds, {"name": n}))
            assert list(m.buffers()) == [], n


def test_features_is_the_last_hidden_layer():
    ds = load_dataset("digits")
    m = build(config_for(ds, {"name": "mlp", "width": 12, "depth": 2})).eval()
    h = m.features(ds.x_test[:4])
    assert h.shape == (4, 12)
    assert torch.allclose(m.layers[-1](h), m(ds.x_test[:4]))


def test_dropout_and_init_are_config_knobs():
    torch.manual_seed(0)
    cfg = {"name": "mlp", "in_features": 8, "out_features": 2, "width": 64, "dropout": 0.5, "init": "xavier_normal"}
    m = build(cfg)
    assert all(float(m.layers[i].bias.detach().abs().sum()) == 0 for i in range(len(m.layers)))
    x = torch.randn(64, 8)
    m.train()
    assert not torch.equal(m(x), m(x))  # dropout active in train mode
    m.eval()
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("cfg,match", [
    ({"name": "cnn2d", "image_size": 8, "out_features": 2, "pooling": "median"}, "pooling"),
    ({"name": "transformer", "seq_len": 8, "token_dim": 8, "out_features": 2, "width": 10, "heads": 3}, "divisible"),
    ({"name": "mlp", "in_features": 8, "out_features": 2, "activation": "swish9"}, "unknown activation"),
    ({"name": "mlp", "in_features": 8, "out_features": 2, "dropout": 1.5}, "dropout"),
    ({"name": "cnn1d", "length": 4, "out_features": 2, "depth": 4}, "shrinks length"),
])
def test_bad_architecture_configs(cfg, match):
    with pytest.raises(UserError, match=match):
        build(cfg)


def test_cnn2d_refuses_sequences():
    with pytest.raises(UserError, match="cnn2d needs square images"):
        config_for(load_dataset("mnist1d"), {"name": "cnn2d"})
