"""Generators as records of the store and as Hub artifacts: the fit's row and folder, reports by recorded ids,
publish -> pull -> sample, push -> load_generator, the registry's third-party methods. Offline: fake Hub API."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from generators import WeightGenerator, load_generator, register_method
from generators.evaluation.references import training_weights
from generators.registry import unregister_method
from generators.training_set import digest, select
from store import hub
from store.errors import UserError
from store.store import ZooStore
from test_hub import SENTINEL, FakeApi

TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2"]
PROTOCOL = "name=tiny-pairs,pattern=digits-pair:*,held-out=digits-pair:0-2"
TINY = ["--set", "latent_dim=4", "--set", "ae_hidden=16", "--set", "denoiser_hidden=16", "--set", "denoiser_depth=1",
        "--set", "set_hidden=8", "--set", "cond_dim=8", "--set", "batch_size=8", "--set", "sample_steps=5",
        "--steps", "20", "--ae-steps", "20"]


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory):
    import zoo

    path = tmp_path_factory.mktemp("records") / "store"
    zoo.train({"name": "tiny-rec", "dataset": TASKS, "epochs": 2, "batch_size": 64, "seeds": 2,
               "architecture": {"name": "mlp", "width": 4, "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01},
               "checkpoints": {"epochs": [1, 2]}}, ZooStore(path, create=True))
    return path


@pytest.fixture
def store_copy(zoo_path, tmp_path):
    import shutil

    shutil.copytree(zoo_path, tmp_path / "store")
    return tmp_path / "store"


def _fit(run_cli, store, *args):
    code, out, err = run_cli("generate", "fit", "--store", store, "--format", "json", *TINY, *args)
    assert code == 0, err
    return json.loads(out)


def _samples(store: Path, generator_id: str) -> torch.Tensor:
    st = ZooStore(store, create=False)
    ids = st.sql("SELECT sample_id FROM samples WHERE generator_id = $g ORDER BY sample_id", {"g": generator_id})
    return st.weights(list(ids.sample_id), table="samples")[0]


# ----- recorded at fit --------------------------------------------------------------------------
def test_fit_writes_one_row_and_its_folder_under_the_store(run_cli, store_copy):
    s = _fit(run_cli, store_copy, "--protocol", PROTOCOL)
    st = ZooStore(store_copy, create=False)
    rows = st.sql("SELECT * FROM generators")
    assert len(rows) == 1 and s["in_store"]
    row = rows.iloc[0]
    folder = store_copy / "generators" / s["generator_id"]
    assert row.path == f"generators/{s['generator_id']}" and (folder / "model.safetensors").is_file()
    assert Path(s["path"]).resolve() == folder.resolve()
    # exactly the checkpoints it was fit on: the last one of each finished model, held-out tasks left out
    ids = json.loads(row.checkpoint_ids)
    want = st.sql("SELECT c.checkpoint_id, c.sha256 FROM checkpoints c JOIN models m USING (model_id) "
                  "WHERE c.epoch = 2 AND m.dataset <> 'digits-pair:0-2' ORDER BY 1")
    assert ids == list(want.checkpoint_id) and row.num_train == len(ids) == 4
    assert row.train_digest == digest(list(want.checkpoint_id), list(want.sha256)) == s["train_digest"]
    assert row.protocol == "tiny-pairs" and "digits-pair:0-2" in json.loads(row.held_out)
    assert row.zoo == "tiny-rec" and row.fit_seconds > 0 and "torch" in json.loads(row.versions)
    assert json.loads(row.layout_ids) == [row.layout_id] and row.method == "diffusion"
    training = json.loads((folder / "training_set.json").read_text())
    assert training["checkpoint_ids"] == ids and training["digest"] == row.train_digest
    # the same fit again: the same generator, still one row
    assert _fit(run_cli, store_copy, "--protocol", PROTOCOL)["generator_id"] == s["generator_id"]
    assert st.count("generators") == 1


def test_report_reads_the_recorded_ids_not_the_sql(run_cli, store_copy):
    from generators.evaluation.records import open_generator

    s = _fit(run_cli, store_copy)
    st = ZooStore(store_copy)
    gen, _ = open_generator(s["generator_id"], st)
    before = training_weights(st, gen)
    ids = gen.training["checkpoint_ids"]
    # new last checkpoints for every model: replaying the default filter would now pick these
    models = st.sql("SELECT model_id, layout_id FROM models ORDER BY model_id")
    layout = st.layout(models.layout_id[0])
    rows = [{"checkpoint_id": f"{m}-e0099", "model_id": m, "epoch": 99, "step": 99, "train_loss": 0.1, "train_acc": 1.0,
             "test_loss": 0.1, "test_acc": 1.0} for m in models.model_id]
    st.append_weights("checkpoints", torch.randn(len(rows), layout.num_params), rows, layout)
    assert set(select(st).checkpoint_ids).isdisjoint(ids)
    after = training_weights(st, gen)
    assert torch.equal(before, after) and len(after) == 2 * len(ids)  # as stored + as aligned
    w, _ = st.weights(ids)
    assert torch.equal(after[:len(ids)], w)


def test_a_store_missing_some_training_checkpoints_is_named(run_cli, store_copy, tmp_path):
    s = _fit(run_cli, store_copy)
    st = ZooStore(store_copy, create=False)
    ids = json.loads(st.sql("SELECT checkpoint_ids FROM generators").checkpoint_ids[0])
    part = ZooStore(tmp_path / "part", create=True)  # a store with the models but only half of the training checkpoints
    part.append("models", st.sql("SELECT * FROM models"))
    keep = ids[:2]
    w, meta = st.weights(keep)
    part.append_weights("checkpoints", w, meta.drop(columns=["layout_id", "dtype", "num_params", "sha256"]),
                        st.layout(meta.layout_id[0]))
    gen_dir = store_copy / "generators" / s["generator_id"]
    code, _, err = run_cli("generate", "sample", gen_dir, "--store", tmp_path / "part", "-d", "digits-pair:0-1", "-n", "2")
    assert code == 2 and f"lacks {len(ids) - 2} of them" in err and ids[2] in err
    assert part.count("samples") == 0 and part.count("generators") == 0
    # a store with none of them: samples are written, without a distance to the training set
    code, out, err = run_cli("generate", "sample", gen_dir, "--store", tmp_path / "empty", "-d", "digits-pair:0-1",
                             "-n", "2", "--format", "json")
    assert code == 0 and "nn_l2 not computed" in err and json.loads(out)["written"] == 2


# ----- published with the zoo -------------------------------------------------------------------
def test_publish_pull_sample_is_bit_identical(run_cli, store_copy, tmp_path):
    s = _fit(run_cli, store_copy)
    gid = s["generator_id"]
    code, _, err = run_cli("generate", "eval", gid, "--store", store_copy, "-d", "digits-pair:0-1", "-n", "3",
                           "--finetune-models", "0", "--no-baselines")
    assert code == 0, err
    args = ["-d", "digits-pair:1-2", "-n", "4", "--seed", "3", "--target-acc", "1.0"]
    assert run_cli("generate", "sample", gid, "--store", store_copy, *args)[0] == 0
    code, _, err = run_cli("publish", "--store", store_copy, "--dry-run", tmp_path / "repo")
    assert code == 0, err
    repo = tmp_path / "repo"
    manifest = json.loads((repo / "wsl-zoo.json").read_text())
    assert list(manifest["generators"]) == [gid]
    assert {f"generators/{gid}/config.json", f"generators/{gid}/model.safetensors",
            f"generators/{gid}/report/report.json"} <= set(manifest["generators"][gid]["files"])
    card = (repo / "README.md").read_text()
    assert "## Generators" in card and gid in card and f"wsl generate sample {gid}" in card
    code, out, err = run_cli("pull", repo, "--store", tmp_path / "pulled", "--weights", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["generators"] == [gid]
    pulled = ZooStore(tmp_path / "pulled", create=False)
    assert pulled.sql("SELECT path FROM generators").path[0] == f"generators/{gid}"  # not the publisher's disk
    # the pulled store samples as the original did: same weights, bit for bit (plus the same samples already pulled)
    n_before = pulled.count("samples")
    code, out, err = run_cli("generate", "sample", gid, "--store", tmp_path / "pulled", *args, "--format", "json")
    assert code == 0, err  # the same sample ids with the same weights (a different sha256 would be a conflict)
    assert json.loads(out)["written"] == 0 and pulled.count("samples") == n_before
    fresh = tmp_path / "fresh"
    code, _, err = run_cli("generate", "sample", tmp_path / "pulled" / "generators" / gid, "--store", fresh, *args)
    assert code == 0, err
    orig = load_generator(store_copy / "generators" / gid).sample(4, "digits-pair:1-2", seed=3, target={"test_acc": 1.0})[0]
    back = load_generator(tmp_path / "pulled" / "generators" / gid).sample(4, "digits-pair:1-2", seed=3,
                                                                          target={"test_acc": 1.0})[0]
    assert torch.equal(orig, back) and torch.equal(_samples(fresh, gid), orig)


def test_publish_generator_selection(run_cli, store_copy, tmp_path):
    s = _fit(run_cli, store_copy)
    code, out, _ = run_cli("publish", "--store", store_copy, "--dry-run", tmp_path / "a", "--generators", "none",
                           "-f", "json")
    assert code == 0 and json.loads(out)["generators"] == []
    # a selection of other models: this generator was not fit on them, so it stays home (noted)
    code, out, err = run_cli("publish", "--store", store_copy, "--dry-run", tmp_path / "b", "--where",
                             "dataset = 'digits-pair:0-1'", "-f", "json")
    assert code == 0 and json.loads(out)["generators"] == [] and any(s["generator_id"] in n for n in json.loads(out)["notes"])
    code, out, _ = run_cli("publish", "--store", store_copy, "--dry-run", tmp_path / "c", "--where",
                           "dataset = 'digits-pair:0-1'", "--generators", "method = 'diffusion'", "-f", "json")
    assert code == 0 and json.loads(out)["generators"] == [s["generator_id"]]
    code, _, err = run_cli("publish", "--store", store_copy, "--dry-run", tmp_path / "d", "--generators", "no_such = 1")
    assert code == 2 and "--generators" in err and not (tmp_path / "d").exists()


# ----- on the Hub as a model --------------------------------------------------------------------
class Commit:
    oid = "0123456789abcdef0123456789abcdef01234567"


class FakeModelApi(FakeApi):
    def upload_folder(self, **kw):
        super().upload_folder(**kw)
        return Commit()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A logged-in, online environment whose Hub is a fake: uploads are recorded, downloads served from them."""
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    api = FakeModelApi()
    monkeypatch.setattr(hub.credentials, "make_api", lambda endpoint: api)
    calls: list = []

    def download(repo_id, *, revision=None, allow_patterns=None):
        import fnmatch

        calls.append((repo_id, revision, list(allow_patterns)))
        if not api.uploaded:
            raise type("RepositoryNotFoundError", (Exception,), {})(f"404 {repo_id} token {SENTINEL}")
        out = tmp_path / "hf-cache" / "snapshots" / Commit.oid
        for name, data in api.uploaded.items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(data)
        out.mkdir(parents=True, exist_ok=True)
        return str(out)

    monkeypatch.setattr("generators.saving._download", download)
    return api, calls


def test_push_then_load_generator_is_bit_identical(run_cli, store_copy, fake_hub, tmp_path):
    api, calls = fake_hub
    s = _fit(run_cli, store_copy, "--protocol", PROTOCOL)
    gid = s["generator_id"]
    code, out, err = run_cli("generate", "push", gid, "--store", store_copy, "--repo-id", "lab/tiny-gen", "--private",
                             "--format", "json")
    assert code == 0, err
    assert json.loads(out)["commit"] == Commit.oid and SENTINEL not in out + err
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["repo_type"] == "model" and api.calls[0][1]["private"] is True
    assert {"config.json", "model.safetensors", "training_set.json", "README.md"} <= set(api.uploaded)
    card = api.uploaded["README.md"].decode()
    for needle in ("library_name: wsl-zoo", gid, s["layout_id"], s["train_digest"], "tiny-pairs", "tiny-rec",
                   "wsl generate fit --method diffusion", f"--protocol '{PROTOCOL}'", "--set latent_dim=4",
                   'load_generator("lab/tiny-gen")'):
        assert needle in card, needle
    assert all(SENTINEL.encode() not in v for v in api.uploaded.values())
    gen = load_generator("lab/tiny-gen")
    assert calls[0][2] == ["config.json"] and calls[1][1] == Commit.oid  # the rest comes from the same commit
    assert gen.generator_id == gid and gen.source == f"hf://lab/tiny-gen@{Commit.oid}"
    local = load_generator(store_copy / "generators" / gid)
    for cond in ("digits-pair:0-2", "digits-pair:3-5"):
        assert torch.equal(gen.sample(5, cond, seed=1)[0], local.sample(5, cond, seed=1)[0])
    # `wsl generate sample ORG/NAME` downloads it and records its row (path hf://...) before its samples
    code, out, err = run_cli("generate", "sample", "lab/tiny-gen", "--store", tmp_path / "other", "-d",
                             "digits-pair:3-5", "-n", "3", "--format", "json")
    assert code == 0, err
    other = ZooStore(tmp_path / "other", create=False)
    assert other.sql("SELECT path FROM generators").path[0] == f"hf://lab/tiny-gen@{Commit.oid}"
    assert other.count("samples") == 3


def test_push_bad_input_sends_nothing(run_cli, store_copy, fake_hub, monkeypatch, tmp_path):
    import shutil

    from huggingface_hub import constants

    api, _ = fake_hub
    s = _fit(run_cli, store_copy)
    folder = tmp_path / "edited"
    shutil.copytree(store_copy / "generators" / s["generator_id"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["config"]["guidance"] = 3.0  # the config no longer describes the tensors' generator
    (folder / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli("generate", "push", folder, "--repo-id", "lab/x")
    assert code == 2 and "does not match its config" in err and api.calls == []
    code, _, err = run_cli("generate", "push", s["generator_id"], "--store", store_copy, "--repo-id", "not a repo")
    assert code == 2 and "ORG/NAME" in err and api.calls == []
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = run_cli("generate", "push", s["generator_id"], "--store", store_copy, "--repo-id", "lab/x")
    assert code == 2 and "hf auth login" in err and api.calls == []
    # a repo that is not a wsl generator
    api.uploaded = {"README.md": b"# a model", "config.json": json.dumps({"model_type": "bert"}).encode()}
    with pytest.raises(UserError, match="not a wsl generator"):
        load_generator("lab/bert")
    api.uploaded = {}
    code, _, err = run_cli("generate", "sample", "lab/none", "--store", tmp_path / "s", "-d", "digits-pair:0-1")
    assert code == 2 and "no model repo lab/none" in err and SENTINEL not in err
    assert not (tmp_path / "s" / "samples").exists()


# ----- the registry -----------------------------------------------------------------------------
class MeanGenerator(WeightGenerator):
    """Mean of the training weights plus seeded Gaussian noise: a third-party method for the registry test."""

    method = "test-mean"

    @dataclasses.dataclass
    class Config:
        scale: float = 0.1
        seed: int = 0

    def _build(self) -> None:
        self.stats = nn.Module()
        self.stats.register_buffer("mean", torch.zeros(self.layout.num_params))
        self.stats.register_buffer("std", torch.zeros(self.layout.num_params))

    def _modules(self):
        return {"stats": self.stats}

    def _fit(self, weights, datasets, index, metrics, groups, progress) -> None:
        self._build()
        self.stats.mean.copy_(weights.mean(0))
        self.stats.std.copy_(weights.std(0))

    def _sample(self, n, dataset, target, seed):
        g = torch.Generator().manual_seed(seed)
        return self.stats.mean + self.config.scale * self.stats.std * torch.randn(n, self.layout.num_params, generator=g)


@pytest.fixture
def registered():
    register_method("test-mean", MeanGenerator)
    yield
    unregister_method("test-mean")


def test_a_registered_method_is_listed_fits_and_round_trips(run_cli, store_copy, registered, tmp_path):
    code, out, _ = run_cli("generate", "methods", "--format", "json")
    assert code == 0 and {r["method"] for r in json.loads(out)} >= {"diffusion", "test-mean"}
    code, _, err = run_cli("generate", "fit", "--store", store_copy, "--method", "nope")
    assert code == 2 and "test-mean" in err and "diffusion" in err
    code, out, err = run_cli("generate", "fit", "--store", store_copy, "--method", "test-mean", "--set", "scale=0.5",
                             "--format", "json")
    assert code == 0, err
    gid = json.loads(out)["generator_id"]
    gen = load_generator(store_copy / "generators" / gid)
    assert type(gen) is MeanGenerator and gen.config.scale == 0.5
    code, _, err = run_cli("generate", "sample", gid, "--store", store_copy, "-d", "digits-pair:0-1", "-n", "3")
    assert code == 0, err
    assert torch.equal(_samples(store_copy, gid), gen.sample(3, "digits-pair:0-1", seed=0)[0])
    unregister_method("test-mean")  # a folder of an unknown method says which method is missing
    with pytest.raises(UserError, match="test-mean"):
        load_generator(store_copy / "generators" / gid)


def test_entry_point_methods_and_bad_registrations(monkeypatch):
    from generators import registry

    class EntryPoint:
        name = "ep-mean"

        def load(self):
            return type("EpMean", (MeanGenerator,), {"method": "ep-mean"})

    monkeypatch.setattr(registry, "_entry_points", {"ep-mean": EntryPoint()})
    assert "ep-mean" in registry.method_names() and registry.get_method("ep-mean").method == "ep-mean"
    registry._resolved.pop("ep-mean", None)
    with pytest.raises(UserError, match="built in"):
        register_method("diffusion", MeanGenerator)
    with pytest.raises(UserError, match="says method"):
        register_method("other-name", MeanGenerator)
    with pytest.raises(UserError, match="not valid"):
        register_method("Bad Name", MeanGenerator)
    with pytest.raises(UserError, match="is not a class"):
        register_method("x-gen", object())


class TaskOnlyGenerator(MeanGenerator):
    """Fit from tasks alone (the hypernetwork slot): the mean of a few seeded initialisations per call."""

    method = "test-tasks"
    needs_weights = False

    def _fit_tasks(self, layout, datasets, progress) -> None:
        self._build()
        torch.manual_seed(self.config.seed)
        inits = torch.stack([layout.flatten(layout.build_module()) for _ in range(4)])
        self.stats.mean.copy_(inits.mean(0))
        self.stats.std.copy_(inits.std(0))


def test_fit_from_tasks_alone_records_the_datasets(tmp_path):
    from generators import LatentDiffusion
    from wsl import ParamLayout
    from zoo import config_for, load_dataset

    layout = ParamLayout.from_config(config_for(load_dataset(TASKS[0]), {"name": "mlp", "width": 4, "depth": 1}))
    register_method("test-tasks", TaskOnlyGenerator)
    try:
        gen = TaskOnlyGenerator(seed=1).fit_tasks(layout, TASKS[:2])
        assert gen.training["datasets"] == TASKS[:2] and gen.training["checkpoint_ids"] == []
        assert sorted(gen.fit_info["conditions"]) == TASKS[:2] and gen.generator_id
        back = load_generator(gen.save_pretrained(tmp_path / "g"))
        assert back.generator_id == gen.generator_id and back.training["datasets"] == TASKS[:2]
        assert torch.equal(back.sample(2, TASKS[2], seed=4)[0], gen.sample(2, TASKS[2], seed=4)[0])
        with pytest.raises(UserError, match="10 classes"):
            gen.sample(2, "digits")  # the task-only fit knows its tasks' shape and classes like any other
    finally:
        unregister_method("test-tasks")
    with pytest.raises(UserError, match="learns from a zoo's weights"):
        LatentDiffusion().fit_tasks(layout, TASKS)


def test_publish_uploads_generator_folders_and_pull_can_leave_them(run_cli, store_copy, fake_hub, tmp_path):
    api, _ = fake_hub
    gid = _fit(run_cli, store_copy)["generator_id"]
    code, out, err = run_cli("publish", "--store", store_copy, "--repo-id", "lab/zoo")
    assert code == 0, err
    upload = dict(api.calls)["upload_folder"]
    assert "generators/*" in upload["delete_patterns"] and f"generators/{gid}/model.safetensors" in api.uploaded
    row_shard = [k for k in api.uploaded if k.startswith("data/generators/")]
    assert len(row_shard) == 1 and b"/tmp" not in api.uploaded[row_shard[0]]  # no publisher paths in the rows
    repo = tmp_path / "repo"
    for name, data in api.uploaded.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    code, out, err = run_cli("pull", repo, "--store", tmp_path / "lean", "--no-generators", "-f", "json")
    assert code == 0, err
    res = json.loads(out)
    assert res["generators"] == [] and "generators" in res["skipped"] and not (tmp_path / "lean" / "generators").exists()
