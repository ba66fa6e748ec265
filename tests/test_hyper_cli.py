"""`wsl generate fit --method hyper --datasets ...` (no zoo weights), sample, push -> load; bad input exits 2, writes nothing."""
from __future__ import annotations

import json

import torch

from generators import load_generator
from test_generators_records import Commit, fake_hub  # noqa: F401 (the fake Hub fixture)

ARCH = '{"name": "mlp", "width": 8, "depth": 1}'
TINY = ["--set", "hidden=16", "--set", "depth=1", "--set", "cond_dim=8", "--set", "set_hidden=8", "--set", "z_dim=4",
        "--set", "batch_size=16", "--set", "steps=5", "--set", "chunk_size=64"]


def _fit(run_cli, store, *args):
    return run_cli("generate", "fit", "--method", "hyper", "--store", store, "--format", "json", "--arch", ARCH, *TINY, *args)


def test_fit_from_dataset_names_then_sample_and_push(run_cli, fake_hub, tmp_path):  # noqa: F811
    store = tmp_path / "store"
    code, out, err = _fit(run_cli, store, "--set", "arch=rnn", "--set", "mode=task",
                          "--datasets", "digits-pair:0-1,digits-pair:2-3", "--datasets", "digits-pair:4-5")
    assert code == 0, err
    s = json.loads(out)
    assert s["num_train"] == 0 and s["conditions"] == 3 and s["mode"] == "task"
    code, out, err = run_cli("generate", "sample", s["generator_id"], "--store", store, "-d", "digits-pair:6-7", "-n", "4",
                             "--format", "json")
    assert code == 0, err
    assert json.loads(out)["written"] == 4
    api, _ = fake_hub
    code, out, err = run_cli("generate", "push", s["generator_id"], "--store", store, "--repo-id", "lab/hyper",
                             "--format", "json")
    assert code == 0, err
    assert {"config.json", "model.safetensors"} <= set(api.uploaded)
    card = api.uploaded["README.md"].decode()  # how to rebuild it: the task names and the architecture, no zoo
    assert "--datasets digits-pair:0-1,digits-pair:2-3,digits-pair:4-5 --arch" in card and "--set arch='\"rnn\"'" in card
    pulled = load_generator("lab/hyper")
    local = load_generator(store / "generators" / s["generator_id"])
    assert pulled.generator_id == s["generator_id"]
    assert torch.equal(pulled.sample(3, "digits-pair:8-9", seed=2)[0], local.sample(3, "digits-pair:8-9", seed=2)[0])


def test_bad_input_exits_2_and_writes_nothing(run_cli, tmp_path):
    store = tmp_path / "store"
    cases = [
        (["--set", "arch=lstm", "--datasets", "digits-pair:0-1"], "unknown hypernetwork arch"),
        (["--set", "mode=distill", "--datasets", "digits-pair:0-1"], "unknown hypernetwork fit mode"),
        (["--datasets", "digits-pair:0-1,digits"], "does not fit"),
        (["--set", "arch=chunked", "--set", "chunk_size=500", "--datasets", "digits-pair:0-1"], "chunk_size"),
        (["--datasets", "digits-pair:0-1", "--where", "epoch = 1"], "either --datasets"),
    ]
    for args, needle in cases:
        code, out, err = _fit(run_cli, store, *args)
        assert code == 2 and needle in err, (args, err)
    assert not store.exists()
    code, _, err = run_cli("generate", "fit", "--method", "diffusion", "--store", store, "--datasets", "digits-pair:0-1")
    assert code == 2 and "learns from a zoo" in err
