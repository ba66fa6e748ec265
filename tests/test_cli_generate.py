"""`wsl generate fit | sample | eval`: the happy path on a tiny zoo, and every bad input exits 2 writing nothing."""
import json

import pytest

from store.store import ZooStore

TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2"]
TINY_SET = ["--set", "latent_dim=4", "--set", "ae_hidden=16", "--set", "denoiser_hidden=16", "--set", "denoiser_depth=1",
            "--set", "set_hidden=8", "--set", "cond_dim=8", "--set", "batch_size=8", "--set", "sample_steps=5",
            "--steps", "20", "--ae-steps", "20"]


def _zoo(path, width):
    import zoo

    spec = {"name": f"tiny-w{width}", "dataset": TASKS, "epochs": 2, "batch_size": 64, "seeds": 2,
            "architecture": {"name": "mlp", "width": width, "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01},
            "checkpoints": {"epochs": [2]}}
    zoo.train(spec, ZooStore(path, create=True))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-gen")
    return _zoo(root / "w4", 4), _zoo(root / "w5", 5)


@pytest.fixture(scope="module")
def gen_dir(stores, tmp_path_factory):
    from cli.main import main

    out = tmp_path_factory.mktemp("g") / "gen"
    code = main(["generate", "fit", "--store", str(stores[0]), "--where", "dataset <> 'digits-pair:1-2'",
                 "--out", str(out), "--format", "json", *TINY_SET])
    assert code == 0
    return out


def test_fit_sample_eval(run_cli, stores, gen_dir, tmp_path):
    assert (gen_dir / "config.json").is_file() and (gen_dir / "model.safetensors").is_file()
    cfg = json.loads((gen_dir / "config.json").read_text())
    assert cfg["fit"]["num_train"] == 4 and cfg["fit"]["metrics"] == ["test_acc"]

    code, out, err = run_cli("generate", "sample", gen_dir, "--store", stores[0], "--dataset", "digits-pair:1-2",
                             "-n", "5", "--target-acc", "1.0", "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["n"] == 5 and s["written"] == 5 and s["seen"] is False and 0 <= s["mean"] <= 1
    n_samples = ZooStore(stores[0]).count("samples")
    code, out, _ = run_cli("generate", "sample", gen_dir, "--store", stores[0], "--dataset", "digits-pair:1-2",
                           "-n", "5", "--target-acc", "1.0", "--format", "json")
    assert code == 0 and json.loads(out)["written"] == 0 and ZooStore(stores[0]).count("samples") == n_samples
    code, out, err = run_cli("generate", "sample", gen_dir, "--store", stores[0], "--dataset", "digits-pair:1-2",
                             "-n", "5", "--target-acc", "1.0", "--select", "3", "--format", "json")
    assert code == 0, err  # the best 5 of 15 by training loss: stored as their own kind, beside the raw samples
    assert json.loads(out)["written"] == 5 and json.loads(out)["select"] == 3
    kinds = ZooStore(stores[0]).sql("SELECT kind, count(*) AS n FROM samples GROUP BY kind ORDER BY kind")
    assert dict(zip(kinds["kind"], kinds["n"])) == {"generated": 5, "generated-select3": 5}

    rep_dir = tmp_path / "rep"
    code, out, err = run_cli("generate", "eval", gen_dir, "--store", stores[0], "-d", "digits-pair:0-1",
                             "-d", "digits-pair:1-2", "-n", "4", "--finetune-models", "2", "--out", rep_dir,
                             "--format", "json")
    assert code == 0, err
    r = json.loads(out)
    assert set(r["summary"]) == {"seen", "unseen"} and r["written"]["generators"] == 0  # `sample` wrote the row
    assert ZooStore(stores[0]).count("generators") == 1 and ZooStore(stores[0]).count("generator_reports") == 1
    assert (rep_dir / "report.json").is_file() and (rep_dir / "novelty.png").is_file()
    code, out, err = run_cli("generate", "eval", gen_dir, "--store", stores[0], "-n", "4", "--finetune-models", "0",
                             "--no-baselines", "--out", tmp_path / "rep2", "--format", "json")
    assert code == 0, err
    r = json.loads(out)  # default conditions: every dataset of the store's zoo with this layout
    assert sorted({row["condition"] for row in r["rows"]}) == TASKS and r["written"]["generators"] == 0
    # --no-baselines drops the Zeng et al. baselines; the task baselines stay in every report
    assert {row["kind"] for row in r["rows"]} == {"generated", "zoo", "majority", "retrieval-select",
                                                  "retrieval-nearest", "shuffled-condition",
                                                  "retrieval-select+head", "retrieval-nearest+head", "random-init+head"}


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "n >= 1"),
    (["-n", "-3"], "n >= 1"),
    (["--dataset", "digits"], "10 classes"),
    (["--dataset", "mnist1d-pair:0-1"], "inputs of shape"),
    (["--target-acc", "1.5"], "outside [0, 1]"),
    (["--select", "0"], "select >= 1"),
])
def test_sample_bad_input(run_cli, stores, gen_dir, args, message):
    before = ZooStore(stores[0]).count("samples")
    base = ["generate", "sample", gen_dir, "--store", stores[0]]
    if "--dataset" not in args:
        base += ["--dataset", "digits-pair:0-1"]
    code, out, err = run_cli(*base, *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert ZooStore(stores[0]).count("samples") == before


def test_generator_of_another_layout(run_cli, stores, gen_dir, tmp_path):
    code, _, err = run_cli("generate", "sample", gen_dir, "--store", stores[1], "--dataset", "digits-pair:0-1")
    assert code == 2 and "layout" in err and ZooStore(stores[1]).count("samples") == 0
    code, _, err = run_cli("generate", "eval", gen_dir, "--store", stores[1], "-d", "digits-pair:0-1", "--out", tmp_path / "r")
    assert code == 2 and "layout" in err and not (tmp_path / "r").exists()
    # fitting a width-5 generator into a directory that holds the width-4 one
    code, _, err = run_cli("generate", "fit", "--store", stores[1], "--out", gen_dir, *TINY_SET)
    assert code == 2 and "holds a generator of layout" in err
    assert json.loads((gen_dir / "config.json").read_text())["layout"]["params"][0][1] == [4, 64]


def test_fit_bad_input(run_cli, stores, tmp_path):
    out = tmp_path / "g"
    for args, message in [
        (["--where", "dataset = 'digits-pair:7-8'"], "matches no checkpoints"),
        (["--where", "no_such_column > 1"], "no_such_column"),
        (["--method", "no-such-method"], "use one of: diffusion"),
        (["--method", "gan"], "unknown generator method"),
        (["--set", "latent_size=3"], "no option"),
        (["--set", "oops"], "KEY=VALUE"),
        (["--metric", "nope"], "metric 'nope'"),
        (["--protocol", "cifar"], "unknown --protocol"),
    ]:
        code, _, err = run_cli("generate", "fit", "--store", stores[0], "--out", out, *args)
        assert code == 2 and message in err, (args, err)
        assert not out.exists()
    code, _, err = run_cli("generate", "fit", "--store", tmp_path / "no-store", "--out", out)
    assert code == 2 and not out.exists()


def test_protocol_keeps_held_out_tasks_out(run_cli, stores, tmp_path):
    # the built-in digits-pairs protocol holds out 10 pairs this 3-task zoo has no models of
    code, _, err = run_cli("generate", "fit", "--store", stores[0], "--protocol", "digits-pairs", "--out", tmp_path / "g")
    assert code == 2 and "have no finished zoo models" in err and not (tmp_path / "g").exists()
    code, out, err = run_cli("generate", "fit", "--store", stores[0], "--protocol", "pattern=digits-pair:*,held-out=digits-pair:0-2",
                             "--where", "checkpoints.epoch = 2", "--out", tmp_path / "g", "--format", "json", *TINY_SET)
    assert code == 0, err
    fit = json.loads((tmp_path / "g" / "config.json").read_text())["fit"]
    # digits-pair:0-2 is held out: only 0-1 and 1-2 are fit on, and the fit records the split
    assert sorted(fit["conditions"]) == ["digits-pair:0-1", "digits-pair:1-2"] and "epoch = 2" in fit["where"]
    assert fit["protocol"]["held_out"] == ["digits-pair:0-2"] and "digits-pair:0-2" not in fit["where"]
    from generators import load_generator
    from generators.evaluation.references import training_weights

    # the report re-selects the training set with the fit's bound parameters (novelty needs it)
    assert training_weights(ZooStore(stores[0]), load_generator(tmp_path / "g")).shape[0] == 2 * fit["num_train"]


def test_missing_generator_dir(run_cli, stores, tmp_path):
    code, _, err = run_cli("generate", "sample", tmp_path / "nope", "--store", stores[0], "--dataset", "digits-pair:0-1")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("generate", "eval", tmp_path / "empty", "--store", stores[0])
    assert code == 2 and "not a generator directory" in err


def test_eval_protocol_refuses_a_held_out_task_the_generator_saw(run_cli, stores, gen_dir, tmp_path):
    before = {t: ZooStore(stores[0]).count(t) for t in ("samples", "generator_reports")}
    code, out, err = run_cli("generate", "eval", gen_dir, "--store", stores[0], "-n", "2", "--out", tmp_path / "r",
                             "--protocol", "pattern=digits-pair:*,held-out=digits-pair:0-1")
    assert code == 2 and "cannot be evaluated as held out" in err
    for args, message in ((["--protocol", "pattern=digits-pair:*,held-out=digits-pair:7-8"], "no finished zoo models"),
                          (["--protocol", "pattern=digits-pair:*,held-out=" + "|".join(TASKS)], "no seen task"),
                          (["--select", "0"], "select >= 1")):
        code, out, err = run_cli("generate", "eval", gen_dir, "--store", stores[0], "-n", "2", "--out",
                                 tmp_path / "r", *args)
        assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists()
    assert {t: ZooStore(stores[0]).count(t) for t in before} == before
    code, out, err = run_cli("generate", "eval", gen_dir, "--store", stores[0], "-n", "2", "--finetune-models", "0",
                             "--out", tmp_path / "r", "--protocol", "pattern=digits-pair:*,held-out=digits-pair:1-2",
                             "--format", "json")
    assert code == 0, err  # default conditions under a protocol: its held-out tasks
    assert {row["condition"] for row in json.loads(out)["rows"]} == {"digits-pair:1-2"}
