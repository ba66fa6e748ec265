"""`wsl publish` and `wsl pull` from the command line: exit codes, what is written, what is printed."""
from __future__ import annotations

import json
import logging
import time

import pytest

from store import ZooStore
from store import hub
from test_hub import SENTINEL, FakeApi, build_zoo


@pytest.fixture
def zoo_path(tmp_path):
    build_zoo(tmp_path / "store")
    return tmp_path / "store"


def test_publish_dry_run_writes_the_folder_and_pull_reads_it_back(run_cli, zoo_path, tmp_path):
    code, out, err = run_cli("publish", "--store", zoo_path, "--dry-run", tmp_path / "hubdir", "--repo-id", "lab/zoo",
                             "--where", "lr > 0.005", "--license", "mit")
    assert code == 0, err
    assert "dry run" in out and "nothing uploaded" in out and "published" not in out.replace("wsl publish", "")
    assert (tmp_path / "hubdir" / "README.md").read_text().startswith('---\nlicense: "mit"')
    code, out, err = run_cli("pull", tmp_path / "hubdir", "--store", tmp_path / "copy", "--weights")
    assert code == 0, err
    code, out, err = run_cli("query", "SELECT count(*) AS n FROM checkpoints", "--store", tmp_path / "copy", "-f", "json")
    want = ZooStore(zoo_path, create=False).sql(
        "SELECT count(*) AS n FROM checkpoints JOIN models USING (model_id) WHERE lr > 0.005").n[0]
    assert code == 0 and json.loads(out) == [{"n": int(want)}] and want == 15  # 5 models x 3 epochs


def test_publish_json_output(run_cli, zoo_path, tmp_path):
    code, out, _ = run_cli("publish", "--store", zoo_path, "--dry-run", tmp_path / "d", "--tables", "models",
                           "--tables", "landscape", "-f", "json")
    assert code == 0
    res = json.loads(out)
    assert res["published"] is False and [t["table"] for t in res["tables"]] == ["models", "landscape"]


def test_pull_twice_duplicates_nothing_and_without_weights_skips_checkpoints(run_cli, zoo_path, tmp_path):
    assert run_cli("publish", "--store", zoo_path, "--dry-run", tmp_path / "d")[0] == 0
    code, out, err = run_cli("pull", tmp_path / "d", "--store", tmp_path / "c")
    assert code == 0 and "--weights" in err
    for _ in range(2):
        code, out, err = run_cli("pull", tmp_path / "d", "--store", tmp_path / "c", "--weights", "-f", "json")
        assert code == 0, err
    res = json.loads(out)
    assert all(t["new"] == 0 for t in res["tables"].values())
    copy = ZooStore(tmp_path / "c", create=False)
    assert copy.count("checkpoints") == 24 and copy.count("models") == 8


@pytest.mark.parametrize("args, needle", [
    (["--repo-id", "not-a-repo-id"], "ORG/NAME"),
    (["--repo-id", "a/b/c"], "ORG/NAME"),
    (["--where", "lr > 100", "--dry-run", "{tmp}/never"], "no models match"),
    (["--where", "no_such_col = 1", "--dry-run", "{tmp}/never"], "--where"),
    (["--tables", "nope", "--dry-run", "{tmp}/never"], "unknown table"),
    (["--license", "Not A License", "--dry-run", "{tmp}/never"], "license"),
    ([], "--repo-id"),
])
def test_publish_bad_input_exits_2_and_writes_nothing(run_cli, zoo_path, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_cli("publish", "--store", zoo_path, *args)
    assert code == 2 and needle in err and err.startswith("error: ")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".tmp-*"))


def test_publish_without_credentials_exits_2_with_the_fix(run_cli, zoo_path, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = run_cli("publish", "--store", zoo_path, "--repo-id", "lab/zoo")
    assert code == 2 and "hf auth login" in err and "HF_TOKEN" in err


def test_publish_offline_exits_2_and_points_to_dry_run(run_cli, zoo_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    code, out, err = run_cli("publish", "--store", zoo_path, "--repo-id", "lab/zoo")
    assert code == 2 and "HF_HUB_OFFLINE" in err and "--dry-run" in err


@pytest.fixture
def closed_endpoint(monkeypatch):
    """Online mode pointed at a closed port: every request fails at once (connection refused)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import, maybe under the suite's "1"
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")


def test_unreachable_endpoint_exits_2_fast_and_publishes_nothing(run_cli, zoo_path, closed_endpoint, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    code, out, err = run_cli("publish", "--store", zoo_path, "--repo-id", "lab/zoo")
    assert time.monotonic() - t0 < 20
    assert code == 2 and "cannot reach the Hub at http://127.0.0.1:9" in err and "HF_ENDPOINT" in err
    assert "published" not in out
    for text in (out, err, *[r.getMessage() for r in caplog.records]):
        assert SENTINEL not in text


def test_pull_from_an_unreachable_endpoint_exits_2_and_creates_no_store(run_cli, closed_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    t0 = time.monotonic()
    code, out, err = run_cli("pull", "lab/zoo", "--store", tmp_path / "s")
    assert time.monotonic() - t0 < 20
    assert code == 2 and "http://127.0.0.1:9" in err and SENTINEL not in err
    assert not (tmp_path / "s").exists()


def test_publish_with_a_fake_hub_prints_the_url_and_never_the_token(run_cli, zoo_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    api = FakeApi()
    monkeypatch.setattr(hub.credentials, "make_api", lambda endpoint: api)
    code, out, err = run_cli("publish", "--store", zoo_path, "--repo-id", "lab/zoo", "--private")
    assert code == 0, err
    assert "published lab/zoo: https://hub.example/datasets/lab/zoo" in out
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"] and api.calls[0][1]["private"] is True
    for text in (out, err, *[r.getMessage() for r in caplog.records]):
        assert SENTINEL not in text
    for data in api.uploaded.values():
        assert SENTINEL.encode() not in data


def test_publish_failure_exits_2_and_does_not_say_published(run_cli, zoo_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    api = FakeApi(fail_upload=OSError(f"connection reset while sending with token={SENTINEL}"))
    monkeypatch.setattr(hub.credentials, "make_api", lambda endpoint: api)
    code, out, err = run_cli("publish", "--store", zoo_path, "--repo-id", "lab/zoo")
    assert code == 2 and "NOT published" in err and "published lab/zoo" not in out
    assert SENTINEL not in out + err


def test_pull_bad_input(run_cli, tmp_path):
    code, _, err = run_cli("pull", "not a repo", "--store", tmp_path / "s")
    assert code == 2 and "ORG/NAME" in err
    code, _, err = run_cli("pull", "lab/zoo", "--store", tmp_path / "s", "--tables", "bogus")
    assert code == 2 and "unknown table" in err
    assert not (tmp_path / "s").exists()
