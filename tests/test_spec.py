"""Zoo specs: parsing, grid and random expansion, deterministic model ids, validation that names the key."""
import json

import pytest

from store.errors import UserError
from zoo import expand, load_spec
from zoo.spec import builtin_specs, checkpoint_epochs, parse_spec

BASE = {
    "name": "t",
    "dataset": "digits",
    "epochs": 3,
    "batch_size": [32, 64],
    "seeds": 2,
    "architecture": {"name": "mlp", "width": [8, 16]},
    "optimizer": {"name": "sgd", "lr": [0.1, 0.01], "momentum": 0.9},
}


def spec(**over):
    d = json.loads(json.dumps(BASE))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k].update(v)
        else:
            d[k] = v
    return d


def test_grid_expands_to_the_product_with_unique_deterministic_ids():
    rows = expand(spec())
    assert len(rows) == 2 * 2 * 2 * 2 == parse_spec(spec()).num_models
    ids = [r["model_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert ids == [r["model_id"] for r in expand(spec())]  # same spec, same ids
    other_zoo = expand(spec(name="u"))
    assert not set(ids) & {r["model_id"] for r in other_zoo}
    # a key order change or an explicit default does not change identity
    reordered = dict(reversed(list(spec().items())))
    assert [r["model_id"] for r in expand(reordered)] == ids
    explicit = expand(spec(architecture={"depth": 2, "activation": "relu"}))
    assert [r["model_id"] for r in explicit] == ids
    # a hyperparameter change does
    assert expand(spec(epochs=4))[0]["model_id"] != ids[0]


def test_every_hyperparameter_has_its_own_column():
    row = expand(spec(schedule={"name": "cosine", "final_lr_fraction": 0.1}))[0]
    for col in ("model_id", "zoo", "architecture", "arch_config", "layout_id", "dataset", "dataset_id", "task",
                "width", "depth", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule",
                "seed", "status", "hparams", "activation", "dropout", "init", "final_lr_fraction", "data_seed"):
        assert col in row, col
    assert row["schedule"] == "cosine" and row["final_lr_fraction"] == 0.1 and row["momentum"] == 0.9
    hp = json.loads(row["hparams"])
    assert hp["optimizer"]["lr"] == row["lr"] and hp["seed"] == row["seed"]
    assert json.loads(row["arch_config"])["width"] == row["width"]


def test_adam_rows_carry_betas_and_no_momentum():
    row = expand({**spec(), "optimizer": {"name": "adamw", "lr": 0.001, "beta1": 0.8}})[0]
    assert row["optimizer"] == "adamw" and row["beta1"] == 0.8 and row["beta2"] == 0.999
    assert row["momentum"] is None and row["weight_decay"] == 0.01  # AdamW's default decay


def test_random_sampling_is_seeded_and_respects_ranges():
    d = spec(sampling={"method": "random", "num_samples": 6, "seed": 3},
             optimizer={"lr": {"log_uniform": [1e-3, 1e-1]}},
             architecture={"width": {"choice": [8, 16, 32]}}, batch_size={"int_uniform": [16, 64]})
    a, b = expand(d), expand(d)
    assert [r["model_id"] for r in a] == [r["model_id"] for r in b]
    assert len(a) == 6 * 2
    assert all(1e-3 <= r["lr"] <= 1e-1 and r["width"] in (8, 16, 32) and 16 <= r["batch_size"] <= 64 for r in a)
    d["sampling"]["seed"] = 4
    assert {r["model_id"] for r in expand(d)} != {r["model_id"] for r in a}


def test_pair_pattern_and_checkpoint_schedule():
    s = parse_spec(spec(dataset="digits-pair:*", epochs=12, checkpoints={"every": 5}))
    assert len(s.datasets) == 45 and s.datasets[0] == "digits-pair:0-1"
    assert checkpoint_epochs(s, 12) == [0, 5, 10, 12]
    assert checkpoint_epochs(parse_spec(spec()), 3) == [0, 1, 2, 3]  # default: every epoch, epoch 0 included
    s = parse_spec(spec(checkpoints={"epochs": [0, 1]}))
    assert checkpoint_epochs(s, 3) == [0, 1, 3]


@pytest.mark.parametrize("bad,words", [
    ({"epoch": 3}, ["unknown key", "epoch", "allowed keys", "epochs"]),
    ({"architecture": {"widht": 8}}, ["[architecture] widht", "width"]),
    ({"optimizer": {"learning_rate": 0.1}}, ["[optimizer] learning_rate", "lr"]),
    ({"architecture": {"width": []}}, ["architecture.width", "empty"]),
    ({"seeds": []}, ["seeds", "empty"]),
    ({"seeds": 0}, ["seeds", "N >= 1"]),
    ({"optimizer": {"lr": 0.0}}, ["optimizer.lr", "> 0"]),
    ({"optimizer": {"lr": [0.1, -1.0]}}, ["optimizer.lr", "> 0"]),
    ({"optimizer": {"name": "rmsprop"}}, ["optimizer.name", "sgd, adam, adamw"]),
    ({"schedule": {"name": "step"}}, ["schedule.name", "constant, cosine, onecycle"]),
    ({"optimizer": {"name": "adam", "lr": 0.1, "momentum": 0.9}}, ["optimizer.momentum", "applies to sgd"]),
    ({"batch_size": 0}, ["batch_size", ">= 1"]),
    ({"batch_size": [32, 32]}, ["batch_size", "twice"]),
    ({"epochs": "ten"}, ["epochs", "an integer"]),
    ({"optimizer": {"lr": {"log_uniform": [1e-3, 1e-1]}}}, ["optimizer.lr", "random"]),
    ({"checkpoints": {"epochs": [0, 9]}}, ["checkpoints.epochs", "epoch 9"]),
    ({"sampling": {"method": "random"}}, ["num_samples"]),
    ({"architecture": {"name": "resnet9000"}}, ["architecture.name", "mlp"]),
])
def test_validation_names_the_key_and_the_allowed_values(bad, words):
    with pytest.raises(UserError) as e:
        expand(spec(**bad))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_missing_key_and_data_dependent_checks():
    d = spec()
    del d["seeds"]
    with pytest.raises(UserError, match="missing required key seeds"):
        parse_spec(d)
    with pytest.raises(UserError, match=r"batch_size = 4096 is larger than dataset 'digits' \(1438 training samples\)"):
        expand(spec(batch_size=4096))
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        expand(spec(dataset="imagenet"))
    with pytest.raises(UserError, match="width"):
        expand(spec(architecture={"width": 0}))


def test_files_builtins_and_yaml(tmp_path):
    p = tmp_path / "z.toml"
    p.write_text('name = "z"\ndataset = "digits"\nepochs = 1\nbatch_size = 64\nseeds = [3, 5]\n'
                 '[architecture]\nname = "mlp"\nwidth = 8\n[optimizer]\nname = "adam"\nlr = 0.01\n')
    rows = expand(load_spec(p))
    assert [r["seed"] for r in rows] == [3, 5]
    y = tmp_path / "z.yaml"
    y.write_text("name: z\ndataset: digits\nepochs: 1\nbatch_size: 64\nseeds: [3, 5]\n"
                 "architecture: {name: mlp, width: 8}\noptimizer: {name: adam, lr: 0.01}\n")
    assert [r["model_id"] for r in expand(load_spec(y))] == [r["model_id"] for r in rows]
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_spec(bad)
    with pytest.raises(UserError, match="neither a file nor a built-in spec.*demo"):
        load_spec("no-such-spec")


def test_builtin_specs_parse_and_span_what_they_promise():
    names = builtin_specs()
    assert {"demo", "digits-mlp", "digits-pairs", "mnist1d-cnn", "sciml-inr"} <= set(names)
    mlp = load_spec("digits-mlp")
    assert len(mlp.architecture["width"]) >= 3 and len(mlp.batch_size) >= 3 and len(mlp.optimizer["lr"]) >= 3
    assert len(mlp.seeds) >= 2
    pairs = load_spec("digits-pairs")
    assert len(pairs.datasets) == 45 and len(pairs.seeds) >= 2
    assert load_spec("mnist1d-cnn").architecture["name"] == "cnn1d"
    assert load_spec("sciml-inr").architecture["name"] == "siren"
    for name, arch in (("digits-resnet", "resnet"), ("mnist1d-resnet", "resnet1d")):
        s = load_spec(name)
        assert s.architecture["name"] == arch and len(s.architecture["width"]) >= 2 and len(s.seeds) >= 2
        assert s.num_models <= 16 and max(s.architecture["width"]) <= 16  # narrow: minutes on a laptop CPU
    demo = load_spec("demo")
    assert demo.num_models <= 16 and len(expand(demo)) == demo.num_models
