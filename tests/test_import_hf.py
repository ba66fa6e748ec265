"""`wsl store import hf`: Hugging Face model folders and Hub repos (through a fake snapshot_download), card metadata kept."""
from __future__ import annotations

import fnmatch
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from store import ParamLayout, UserError, ZooStore
from store.import_hf import import_hf

ARCH = {"name": "mlp", "in_features": 4, "out_features": 3, "width": 8, "depth": 1}
CARD = """---
license: mit
tags: [model-j, mlp]
base_model: none
hyperparameters:
  lr: 0.05
  batch_size: 32
---
# a model
"""


def _repo(path, seed: int, config: dict, card: str = CARD):
    torch.manual_seed(seed)
    lay = ParamLayout.from_config(ARCH)
    module = lay.build_module()
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    (path / "README.md").write_text(card)
    return lay.flatten(module)


def test_a_folder_of_model_folders_keeps_the_card_metadata(tmp_path):
    flats = [_repo(tmp_path / "zoo" / f"model-{i}", i, ARCH) for i in range(2)]
    rep = import_hf(tmp_path / "s", tmp_path / "zoo")
    assert rep.models == 2 and rep.layouts[0]["arch_from"] == "config.json" and rep.layouts[0]["architecture"] == "mlp"
    s = ZooStore(tmp_path / "s", create=False)
    m = s.sql("SELECT model_id, source, card_license, card_tags, card_base_model, card_json, hparams FROM models ORDER BY source")
    assert m.source.tolist() == ["zoo/model-0", "zoo/model-1"] and set(m.card_license) == {"mit"}
    assert json.loads(m.card_tags[0]) == ["model-j", "mlp"] and json.loads(m.hparams[0]) == {"batch_size": 32, "lr": 0.05}
    w, _ = s.weights("SELECT checkpoint_id FROM checkpoints JOIN models USING (model_id) ORDER BY models.source")
    assert torch.equal(w, torch.stack(flats))
    assert import_hf(tmp_path / "s", tmp_path / "zoo").new_models == 0


def _fake_download(repos: dict, calls: list):
    """Stands in for snapshot_download: copies the repo's files matching allow_patterns (fnmatch, as the Hub does)."""
    def download(repo_id, *, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, list(allow_patterns)))
        if repo_id not in repos:
            raise type("RepositoryNotFoundError", (Exception,), {})(f"404 {repo_id}")
        out = repos[repo_id].parent / f"snapshot-{len(calls)}"
        out.mkdir()
        for p in repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns):
                shutil.copy(p, out / p.name)
        return str(out)
    return download


def test_hub_repos_through_snapshot_download(tmp_path):
    (tmp_path / "remote").mkdir()
    flat = _repo(tmp_path / "remote" / "a", 0, {"model_type": "custom-mlp"})
    (tmp_path / "remote" / "a" / "training_args.bin").write_bytes(b"pickled trainer state: never downloaded")
    calls: list = []
    rep = import_hf(tmp_path / "s", ["lab/mlp-a"], arch=ARCH, revision="v1",
                    download=_fake_download({"lab/mlp-a": tmp_path / "remote" / "a"}, calls))
    assert calls[0][:2] == ("lab/mlp-a", "v1") and rep.layouts[0]["arch_from"] == "--arch"
    snap = tmp_path / "remote" / "snapshot-1"
    assert not (snap / "training_args.bin").exists()
    s = ZooStore(tmp_path / "s", create=False)
    assert s.sql("SELECT zoo, source FROM models").to_dict("records") == [{"zoo": "lab", "source": "lab/mlp-a"}]
    w, _ = s.weights("SELECT checkpoint_id FROM checkpoints")
    assert torch.equal(w[0], flat)
    with pytest.raises(UserError, match="no model repo lab/none"):
        import_hf(tmp_path / "t", ["lab/none"], arch=ARCH, download=_fake_download({}, []))
    assert not (tmp_path / "t").exists()


def test_without_an_architecture_the_layout_is_inferred_and_said_so(tmp_path, run_cli):
    _repo(tmp_path / "m", 0, {"model_type": "custom-mlp"})
    code, out, err = run_cli("store", "import", "hf", tmp_path / "m", "--store", tmp_path / "s", "-f", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["layouts"][0]["architecture"] is None and any("not evaluated" in n for n in rep["notes"])
    code, _, err = run_cli("store", "import", "hf", tmp_path / "nowhere" / "x", "--store", tmp_path / "t")
    assert code == 2 and "not of the form ORG/NAME" in err
