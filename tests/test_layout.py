import json
import subprocess
import sys

import pytest
import torch

from wsl import ParamLayout, UserError
from zoo import config_for, load_dataset

ARCHS = [
    ("digits", {"name": "mlp", "width": 16, "depth": 2}),
    ("digits", {"name": "cnn2d", "width": 4}),
    ("digits", {"name": "transformer", "width": 16, "depth": 1, "heads": 2}),
    ("mnist1d", {"name": "cnn1d", "width": 8}),
    ("mnist1d", {"name": "mlp", "width": 8, "depth": 1, "activation": "tanh"}),
    ("sciml:gauss2d", {"name": "siren", "width": 16, "depth": 2}),
]


@pytest.mark.parametrize("dataset,arch", ARCHS, ids=[f"{d}-{a['name']}" for d, a in ARCHS])
def test_flatten_unflatten_gives_identical_outputs(dataset, arch):
    ds = load_dataset(dataset)
    layout = ParamLayout.from_config(config_for(ds, arch))
    torch.manual_seed(0)
    a = layout.build_module().eval()
    flat = layout.flatten(a)
    assert flat.shape == (layout.num_params,)
    b = layout.load_into(layout.build_module().eval(), flat)
    x = ds.x_test[:16]
    assert torch.equal(a(x), b(x))
    # the state dict route and the [N, P] route agree
    many = layout.flatten([a, a.state_dict()])
    assert many.shape == (2, layout.num_params) and torch.equal(many[0], many[1])
    parts = layout.unflatten(many)
    for name, p in a.named_parameters():
        assert parts[name].shape == (2, *p.shape)
        assert torch.equal(parts[name][1], p.detach())
    assert layout.unflatten(flat)[layout.names[0]].shape == layout.shapes[0]


def test_json_round_trip_keeps_id_and_rebuilds():
    ds = load_dataset("digits")
    layout = ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": 8}))
    again = ParamLayout.from_json(layout.to_json())
    assert again == layout and again.layout_id == layout.layout_id
    assert again.build_module()(ds.x_test[:2]).shape == (2, 10)
    other = ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": 8, "activation": "tanh"}))
    assert other.layout_id != layout.layout_id  # same shapes, different function


def test_layout_id_stable_across_processes():
    code = ("from wsl import ParamLayout; from zoo import config_for, load_dataset; "
            "print(ParamLayout.from_config(config_for(load_dataset('digits'), {'name': 'cnn2d', 'width': 4})).layout_id)")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
           for _ in range(2)}
    here = ParamLayout.from_config(config_for(load_dataset("digits"), {"name": "cnn2d", "width": 4})).layout_id
    assert ids == {here}


def _layout():
    return ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "width": 5, "depth": 1})


def test_wrong_size_is_a_user_error():
    layout = _layout()
    with pytest.raises(UserError, match=f"layout {layout.layout_id} has {layout.num_params} parameters"):
        layout.unflatten(torch.zeros(layout.num_params + 1))
    with pytest.raises(UserError, match="shape"):
        layout.unflatten(torch.zeros(1, 2, layout.num_params))


def test_nan_inf_wrong_dtype_and_names_are_user_errors():
    layout = _layout()
    bad = torch.zeros(3, layout.num_params)
    bad[1, 0] = float("nan")
    bad[2, 5] = float("inf")
    with pytest.raises(UserError, match=r"NaN or inf \(model rows \[1, 2\]\)"):
        layout.unflatten(bad)
    with pytest.raises(UserError, match="dtype"):
        layout.unflatten(torch.zeros(layout.num_params, dtype=torch.int64))
    sd = layout.build_module().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"unknown \['extra.weight'\]"):
        layout.flatten(sd)
    del sd["extra.weight"], sd["layers.0.bias"]
    with pytest.raises(UserError, match=r"missing \['layers.0.bias'\]"):
        layout.flatten(sd)
    wide = ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "width": 6, "depth": 1})
    with pytest.raises(UserError, match="expects"):
        layout.flatten(wide.build_module())


def test_unknown_architecture_and_malformed_config():
    with pytest.raises(UserError, match="unknown architecture 'resnet9000'"):
        ParamLayout.from_config({"name": "resnet9000"})
    with pytest.raises(UserError, match="unknown keys"):
        ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "widht": 5})
    with pytest.raises(UserError, match="missing"):
        ParamLayout.from_config({"name": "mlp", "width": 5})
    with pytest.raises(UserError, match="width"):
        ParamLayout.from_config({"name": "mlp", "in_features": 4, "out_features": 3, "width": 0})
    with pytest.raises(UserError, match="malformed layout"):
        ParamLayout.from_json(json.dumps({"dtype": "float32"}))


def test_half_precision_layouts_flatten_to_their_dtype():
    layout = _layout()
    m = layout.build_module().to(torch.bfloat16)
    half = ParamLayout.from_module(m, layout.arch)
    assert half.dtype == "bfloat16" and half.layout_id != layout.layout_id
    assert half.flatten(m).dtype == torch.bfloat16
