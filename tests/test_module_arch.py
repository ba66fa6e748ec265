"""Any nn.Module as a zoo architecture: stored, reloaded, evaluated, trained from a spec; code runs only when trusted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from store import ZooStore
from store.architectures import register_architecture, trust_code, untrust_code
from wsl import ParamLayout, UserError, evaluate
from wsl.functional import population_forward

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _no_trust():
    untrust_code()
    yield
    untrust_code()


def _store_and_reload(tmp_path, module_fn, arch, n=4, x_shape=(3, 32, 32)):
    torch.manual_seed(0)
    mods = [module_fn() for _ in range(n)]
    layout = ParamLayout.from_module(mods[0], arch)
    assert layout.num_buffers > 0
    w = layout.flatten(mods)
    zs = ZooStore(tmp_path / "store", create=True)
    rows = [dict(checkpoint_id=f"m{i}-e0000", model_id=f"m{i}", epoch=0, step=0, train_loss=0.0, train_acc=0.0,
                 test_loss=0.0, test_acc=0.0) for i in range(n)]
    zs.append_weights("checkpoints", w, rows, layout)
    zs.close()
    back = ZooStore(tmp_path / "store", create=False)
    w2, meta = back.weights([r["checkpoint_id"] for r in rows])
    layout2 = back.layout(meta.layout_id[0])
    assert torch.equal(w2, w) and layout2.layout_id == layout.layout_id
    x = torch.randn(5, *x_shape)
    with torch.no_grad():
        want = torch.stack([m.eval()(x) for m in mods])
    return layout2, w2, x, want


def test_torchvision_structured_resnet18_is_stored_reloaded_and_evaluated_in_a_batch(tmp_path):
    from _tv_resnet import resnet18

    arch = {"name": "module", "path": "_tv_resnet:resnet18", "num_classes": 10, "width": 8}
    layout, w, x, want = _store_and_reload(tmp_path, lambda: resnet18(num_classes=10, width=8), arch)
    with pytest.raises(UserError, match="--trust-code"):  # a layout read from a store imports nothing by default
        population_forward(layout, layout.unflatten(w), x)
    trust_code()
    with torch.no_grad():
        got = population_forward(layout, layout.unflatten(w), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    names = [n for n, _ in resnet18(width=8).state_dict().items()]
    assert layout.names == [n for n in names if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))] \
        + [n for n in names if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]


def test_torchvision_resnet18(tmp_path):
    tv = pytest.importorskip("torchvision")
    arch = {"name": "module", "path": "torchvision.models:resnet18", "num_classes": 10}
    layout, w, x, want = _store_and_reload(tmp_path, lambda: tv.models.resnet18(num_classes=10), arch)
    trust_code("torchvision.models:resnet18")
    with torch.no_grad():
        got = population_forward(layout, layout.unflatten(w), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _spec(tmp_path, **arch):
    return {"name": "user-net", "dataset": "digits", "epochs": 2, "batch_size": 64, "seeds": 2,
            "architecture": {"name": "module", "path": "_tv_resnet:TinyBNNet", **arch},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}


def test_a_user_module_class_trains_into_a_store_through_a_spec(tmp_path):
    from zoo import load_dataset, train

    summary = train(_spec(tmp_path, width=[4, 8]), tmp_path / "store")
    zs = ZooStore(tmp_path / "store", create=False)
    models = zs.sql("SELECT width, status, path FROM models ORDER BY width")
    assert list(models.status) == ["done"] * 4 and set(models.width) == {4, 8}
    assert set(models.path) == {"_tv_resnet:TinyBNNet"} and summary.models == 4
    w, meta = zs.weights("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) "
                         "WHERE epoch = 2 AND width = 8 ORDER BY checkpoint_id")
    layout = zs.layout(meta.layout_id[0])
    ds = load_dataset("digits")
    res = evaluate(w, layout, ds)  # trusted: this process ran the spec naming the path
    stored = zs.sql("SELECT test_acc FROM checkpoints JOIN models USING (model_id) "
                    "WHERE epoch = 2 AND width = 8 ORDER BY checkpoint_id").test_acc.to_numpy()
    assert res.accuracy.numpy() == pytest.approx(stored, abs=1e-9) and (stored > 0.8).all()
    m = layout.load_into(layout.build_module(), w[0]).eval()
    with torch.no_grad():
        acc = (m(ds.x_test).argmax(1) == ds.y_test).double().mean().item()
    assert acc == pytest.approx(float(res.accuracy[0]), abs=1e-9)


@pytest.mark.parametrize("arch,match", [
    ({"path": "_no_such_package.nets:Net"}, "does not import"),
    ({"path": "_tv_resnet:NoSuchClass"}, "has no attribute"),
    ({"path": "_tv_resnet:not_a_module"}, "not a torch.nn.Module"),
    ({"path": "not-a-path"}, "package.module:builder"),
    ({"path": "_tv_resnet:TinyBNNet", "classes": 3}, "gives 3 outputs but dataset 'digits' needs 10"),
    ({"path": "_tv_resnet:TinyBNNet", "depth": 3}, "failed to build"),
    ({"path": "_tv_resnet:resnet18", "num_classes": 10, "in_channels": 3}, "does not take dataset 'digits'"),
])
def test_bad_module_specs_are_user_errors_and_write_nothing(tmp_path, arch, match):
    from zoo import train

    spec = _spec(tmp_path)
    spec["architecture"] = {"name": "module", **arch}
    with pytest.raises(UserError, match=match):
        train(spec, tmp_path / "store")
    assert not (tmp_path / "store" / "checkpoints").exists() or not list((tmp_path / "store" / "checkpoints").glob("*.parquet"))


def test_register_architecture_makes_a_spec_name(tmp_path):
    from _tv_resnet import TinyBNNet

    from zoo import expand

    register_architecture("tiny-bn", lambda c: TinyBNNet(width=c.get("width", 4)))
    rows = expand({**_spec(tmp_path), "architecture": {"name": "tiny-bn", "width": [4, 6]}})
    assert {r["architecture"] for r in rows} == {"tiny-bn"} and {r["width"] for r in rows} == {4, 6}
    layout = ParamLayout.from_json(json.dumps({"params": [], "dtype": "float32", "arch": {"name": "tiny-bn"}}))
    with pytest.raises(UserError, match="different parameters"):
        layout.build_module()


def test_cli_refuses_code_from_a_store_without_trust_code(tmp_path, capsys):
    from cli.main import main

    spec = tmp_path / "spec.toml"
    spec.write_text('name = "cli-net"\ndataset = "digits"\nepochs = 1\nbatch_size = 64\nseeds = 1\n'
                    '[architecture]\nname = "module"\npath = "_tv_resnet:TinyBNNet"\nwidth = 4\n'
                    '[optimizer]\nname = "sgd"\nlr = 0.1\n')
    store = str(tmp_path / "store")
    assert main(["--store", store, "zoo", "train", str(spec)]) == 0
    capsys.readouterr()
    assert main(["--store", store, "eval", "--where", "epoch = 1", "--dataset", "digits"]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert not list((tmp_path / "store").glob("evaluations/*.parquet"))  # nothing written
    assert main(["--store", store, "--trust-code", "eval", "--where", "epoch = 1", "--dataset", "digits"]) == 0
    assert list((tmp_path / "store").glob("evaluations/*.parquet"))
