"""The benchmark harness on a tiny zoo: every key of the contract, deterministic, bad input exits 2 writing nothing."""
import json
import math
import sys
from pathlib import Path

import pytest

from store.store import ZooStore

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2", "digits-pair:3-5", "digits-pair:1-3"]
ZOO = {"name": "tiny-harness", "dataset": TASKS, "epochs": 3, "batch_size": 64, "seeds": 2,
       "architecture": {"name": "mlp", "width": 4, "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01},
       "checkpoints": {"epochs": [3]}}
PROTOCOL = "name=tiny,pattern=digits-pair:*,held-out=digits-pair:3-5"
TINY = ["--set", "latent_dim=4", "--set", "ae_hidden=16", "--set", "ae_steps=20", "--set", "steps=20",
        "--set", "denoiser_hidden=16", "--set", "denoiser_depth=1", "--set", "set_hidden=8", "--set", "cond_dim=8",
        "--set", "batch_size=8", "--set", "max_per_class=8", "--set", "sample_steps=5"]
KEYS = {"method", "protocol", "seen_generated_acc", "seen_zoo_acc", "seen_zoo_std", "heldout_zoo_acc",
        "heldout_raw_acc", "heldout_ratio_raw", "heldout_gap_closed_raw", "heldout_select4_acc",
        "heldout_retrieval_select_acc", "heldout_retrieval_nearest_acc", "heldout_shuffled_condition_acc",
        "heldout_majority_acc", "sample_eval_256_s", "fit_s", "novelty", "seen_iou_max_minus_fresh",
        "seen_aligned_nn_l2_over_fresh", "seen_acc_minus_fresh", "seen_gen_gen_iou_minus_fresh_fresh", "targets"}
TIMED = {"sample_eval_256_s", "sample_eval_256_select4_s", "fit_s", "fit_reused", "report_s", "total_s", "load_1min",
         "out"}


@pytest.fixture(scope="module")
def zoo_store(tmp_path_factory):
    import zoo

    path = tmp_path_factory.mktemp("harness") / "store"
    zoo.train(ZOO, ZooStore(path, create=True))
    return path


def _bench(capsys, *args):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import generate

    code = generate.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _line(out: str) -> dict:
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


@pytest.mark.slow
def test_harness_line_has_every_key_and_is_deterministic(zoo_store, tmp_path, capsys):
    args = ["--method", "diffusion", "--protocol", PROTOCOL, "--store", zoo_store, "-n", "4", "--select", "2",
            "--seen-tasks", "3", "--novelty-tasks", "1", *TINY]
    code, out, err = _bench(capsys, *args, "--out", tmp_path / "a", "--no-timing")
    assert code == 0, err
    a = _line(out)
    assert KEYS <= set(a) and a["method"] == "diffusion" and a["heldout_tasks"] == 1 and a["seen_tasks_evaluated"] == 3
    assert set(a["novelty"]) >= {"generated", "fresh", "noise-0.06", "noise-0.12"}
    assert a["novelty"]["fresh"]["tasks"] == 1 and a["novelty"]["fresh_seeds"] == [2, 3]
    assert 0 <= a["heldout_majority_acc"] <= 1 and 0 <= a["heldout_retrieval_select_acc"] <= 1
    gap = (a["heldout_raw_acc"] - a["heldout_majority_acc"]) / (a["heldout_zoo_acc"] - a["heldout_majority_acc"])
    assert a["heldout_gap_closed_raw"] == pytest.approx(gap)
    assert a["heldout_ratio_raw"] == pytest.approx(a["heldout_raw_acc"] / a["heldout_zoo_acc"])
    assert a["seen_acc_minus_fresh"] == pytest.approx(a["novelty"]["generated"]["acc"] - a["novelty"]["fresh"]["acc"])
    assert not ZooStore(zoo_store).count("generators") and not ZooStore(zoo_store).count("samples")  # read only
    assert (tmp_path / "a" / "report-heldout" / "report.json").is_file()
    # same options and seed, a new fit in another folder: the same numbers
    code, out, err = _bench(capsys, *args, "--out", tmp_path / "b", "--no-timing")
    b = _line(out)
    assert code == 0 and {k: v for k, v in a.items() if k not in TIMED} == {k: v for k, v in b.items() if k not in TIMED}
    assert not a["fit_reused"] and not b["fit_reused"]
    code, out, err = _bench(capsys, *args, "--out", tmp_path / "b", "--no-timing")  # a rerun reuses the fit
    c = _line(out)
    assert code == 0 and c["fit_reused"] and c["heldout_raw_acc"] == b["heldout_raw_acc"]


@pytest.mark.parametrize("extra, message", [
    (["--protocol", "name=x,pattern=digits-pair:*,held-out=digits-pair:7-8"], "no finished zoo models"),
    (["--protocol", "name=x,pattern=digits-pair:*,held-out=digits-subset:3"], "unknown"),
    (["--protocol", "name=x,pattern=digits-pair:*,held-out=" + "|".join(TASKS)], "no seen task"),
    (["--protocol", PROTOCOL, "--select", "0"], "select"),
    (["--protocol", PROTOCOL, "-n", "0"], "n >= 1"),
    (["--protocol", PROTOCOL, "--method", "nope"], "unknown generator method"),
    (["--protocol", PROTOCOL, "--set", "latent_dim=0"], "latent_dim"),
])
def test_bad_input_exits_2_and_writes_nothing(zoo_store, tmp_path, capsys, extra, message):
    args = {"--method": "diffusion", "--store": zoo_store, "--out": tmp_path / "o"}
    flat = [x for k, v in args.items() if k not in extra for x in (k, v)]
    code, out, err = _bench(capsys, *flat, *extra)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists() and not ZooStore(zoo_store).count("generators")


def test_held_out_task_the_generator_saw_is_refused(zoo_store, tmp_path):
    from generators.evaluation.report import evaluate_generator
    from generators import LatentDiffusion
    from store.errors import UserError

    st = ZooStore(zoo_store)
    gen = LatentDiffusion.fit(st, None, latent_dim=4, ae_hidden=16, ae_steps=5, steps=5, denoiser_hidden=16,
                              denoiser_depth=1, set_hidden=8, cond_dim=8, batch_size=8, sample_steps=2)
    with pytest.raises(UserError, match="cannot be evaluated as held out"):
        evaluate_generator(gen, ["digits-pair:3-5"], store=st, n=2, held_out=["digits-pair:3-5"])


def test_sample_tasks_is_the_protocol_rule():
    from generators.evaluation.harness import sample_tasks
    from generators.protocols import draw_held_out

    tasks = [f"digits-subset:{c}" for c in range(1, 60)]
    assert sample_tasks(tasks, 5, 3) == tuple(draw_held_out(tasks, 3, 5))
    assert sample_tasks(tasks[:4], 10, 0) == tuple(sorted(tasks[:4]))
    assert not math.isnan(len(sample_tasks(tasks, 1, 0)))


@pytest.mark.slow
def test_benchmark_figures_hook_is_merged_into_the_line(zoo_store, tmp_path):
    from generators import LatentDiffusion
    from generators.evaluation.harness import HarnessOptions, run
    from generators.registry import register_method, unregister_method

    class WithFigures(LatentDiffusion):
        method = "diffusion-figures"

        def benchmark_figures(self, context):
            acc = context.evaluate(context.zoo(context.split.held_out[0]), context.split.held_out[0]).accuracy
            return {"my_heldout": list(context.split.held_out), "my_zoo_acc": float(acc.mean()),
                    "my_seen_sample": len(context.seen_sample)}

    register_method("diffusion-figures", WithFigures)
    try:
        opts = {a.split("=")[0]: float(a.split("=")[1]) if "." in a else int(a.split("=")[1]) for a in TINY[1::2]}
        line = run(HarnessOptions("diffusion-figures", PROTOCOL, zoo_store, opts, n=3, select=1, seen_tasks=2,
                                  novelty_tasks=0, out=tmp_path / "f", timing=False))
    finally:
        unregister_method("diffusion-figures")
    assert line["my_heldout"] == ["digits-pair:3-5"] and line["my_seen_sample"] == 2
    assert line["my_zoo_acc"] == pytest.approx(line["heldout_zoo_acc"])
