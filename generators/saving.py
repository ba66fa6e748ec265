"""A generator on disk, diffusers style, never pickle: save_pretrained / from_pretrained / load_generator.

    gen.save_pretrained("gen/")          # WeightGenerator.save_pretrained calls save_pretrained(gen, dir)
    gen = load_generator("gen/")         # any method: dispatches on config.json's "method" (registry.py)
    cfg = read_config("gen/")            # the checked config.json, without loading tensors

    DIR/config.json          {"format", "method", "generator_id", "config", "layout", "layout_id", "fit"}
    DIR/model.safetensors    every module's state dict, prefixed by module name
    DIR/training_set.json    what it was fit on: checkpoint ids, their count and digest, zoo, filter,
                             protocol and held-out tasks, fit seconds, library versions (training_set.py)
    DIR/<extra>/...          method-specific side files (diffusion: scheduler/scheduler_config.json)

`load_generator("ORG/NAME")` downloads a generator pushed as a Hugging Face model repo
(model_repo.py): config.json first (a repo that is not a wsl generator is refused before
anything else is fetched), then the rest from the same commit.

A directory is written next to its destination under a temporary name and renamed into
place, so a crash never leaves half a generator. Loading checks everything it reads:
the format, the layout against its recorded hash, and the tensors against the modules
the config builds (a folder whose files were mixed up is a UserError, not a wrong model).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generators.registry import get_method
from store.errors import UserError
from store.layout import ParamLayout

if TYPE_CHECKING:  # pragma: no cover
    from generators.interface import WeightGenerator

FORMAT = "wsl-generator/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_FILE = "training_set.json"
TMP_PREFIX = ".partial-gen-"  # not the store's ".tmp-" (its check would take a generator folder for a crashed part)
GENERATOR_FILES = [CONFIG_FILE, WEIGHTS_FILE, TRAINING_FILE]  # + each method's side folders


def config_dict(gen: "WeightGenerator") -> dict[str, Any]:
    """What config.json holds for a fitted generator."""
    layout = gen._require_fit()
    return {"format": FORMAT, "method": gen.method, "generator_id": gen.generator_id,
            "config": gen.config_dict(), "layout": layout.to_dict(), "layout_id": layout.layout_id,
            "fit": gen.fit_info}


def save_pretrained(gen: "WeightGenerator", directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors (+ method side files) into `directory`, atomically."""
    from safetensors.torch import save_file

    cfg = config_dict(gen)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a directory", "give a new or existing directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=directory.parent))
    try:
        save_file(gen.state_tensors(), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "method": gen.method})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        if gen.training:
            (tmp / TRAINING_FILE).write_text(json.dumps(gen.training, indent=1, sort_keys=True, default=str) + "\n")
        gen._save_extra(tmp)
        if directory.exists():
            for name in GENERATOR_FILES:
                (directory / name).unlink(missing_ok=True)
            for p in tmp.iterdir():
                dest = directory / p.name
                if dest.is_dir():
                    shutil.rmtree(dest)
                os.replace(p, dest)
            tmp.rmdir()
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a generator directory, checked."""
    d = Path(directory)
    f = d / CONFIG_FILE
    if not d.is_dir():
        raise UserError(f"generator directory {d} does not exist", "give a directory written by `wsl generate fit`")
    if not f.is_file() or not (d / WEIGHTS_FILE).is_file():
        raise UserError(f"{d} is not a generator directory (no {CONFIG_FILE} / {WEIGHTS_FILE})",
                        "give a directory written by `wsl generate fit` or save_pretrained")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON ({e})", "refit the generator") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "method" not in cfg or "layout" not in cfg:
        raise UserError(f"{f} is not a generator config (format {cfg.get('format') if isinstance(cfg, dict) else None!r})",
                        f"give a directory written by save_pretrained (format {FORMAT})")
    return cfg


def read_training(directory: str | os.PathLike) -> dict[str, Any]:
    """training_set.json of a generator directory ({} for generators saved before it was written)."""
    f = Path(directory) / TRAINING_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON ({e})", "re-copy the generator folder or refit it") from None
    if not isinstance(data, dict):
        raise UserError(f"{f} is not a training-set record", "re-copy the generator folder or refit it")
    return data


def from_pretrained(directory: str | os.PathLike, expect: type | None = None) -> "WeightGenerator":
    """Load a generator saved by save_pretrained; with `expect`, only that class or its subclasses."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_config(directory)
    method = cfg["method"]
    try:
        klass = get_method(method)
    except UserError as e:
        raise UserError(f"generator directory {directory} uses method {method!r}, which is not available ({e.message})",
                        e.fix) from None
    if expect is not None and getattr(expect, "method", "") and not issubclass(klass, expect):
        raise UserError(f"{directory} holds a {method!r} generator, not a {expect.method!r} one",
                        "load it with generators.load_generator")
    gen = klass({**klass.legacy_config, **(cfg.get("config") or {})})  # what it saved wins over legacy values
    gen.layout = ParamLayout.from_dict(cfg["layout"])
    if cfg.get("layout_id") and gen.layout.layout_id != cfg["layout_id"]:
        raise UserError(f"{directory}/config.json: its layout hashes to {gen.layout.layout_id}, not the recorded "
                        f"{cfg['layout_id']}", "the file was edited or written by another version; refit the generator")
    gen.fit_info = dict(cfg.get("fit") or {})
    gen.generator_id = cfg.get("generator_id")
    gen.training = read_training(directory)
    gen._build()
    try:
        tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory}/{WEIGHTS_FILE} cannot be read ({e})", "refit or re-copy the generator") from None
    modules = gen._modules()
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise UserError(f"{directory}/{WEIGHTS_FILE} does not match its config ({str(e).splitlines()[0]})",
                            "refit the generator; the files were mixed up or written by another version") from None
    for m in modules.values():
        m.eval()
    return gen


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(source: Any) -> bool:
    """ORG/NAME (and not an existing local path): what load_generator takes for a Hub model repo."""
    return isinstance(source, str) and bool(_REPO_ID.match(source)) and not Path(source).expanduser().exists()


def _download(repo_id: str, *, revision: str | None, allow_patterns: list[str]) -> str:
    """A model repo's files (huggingface_hub.snapshot_download, cached); tests replace this function."""
    from store.hub.download import snapshot

    return snapshot(repo_id, repo_type="model", revision=revision, allow_patterns=allow_patterns)


def download(repo_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """(folder, commit) of a generator pushed as a model repo; a repo that is not a wsl generator is a UserError.

    config.json comes first and is checked; the rest is then fetched from the same
    commit (the snapshot folder is named after it), so a push in between cannot mix
    two versions.
    """
    from store.hub.credentials import check_repo_id, hub_endpoint, hub_error, token
    from store.hub.download import pinned

    repo_id = check_repo_id(repo_id, "model")
    tok, endpoint = token(), hub_endpoint()

    def fetch(patterns: list[str], rev: str | None) -> Path:
        failure = None
        try:
            return Path(_download(repo_id, revision=rev, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001 - scrubbed one-line UserError
            failure = hub_error(e, f"downloading generator {repo_id}", endpoint, repo_id, tok, "model")
        raise failure  # outside the except block: the original exception (maybe quoting the token) is not attached

    first = fetch([CONFIG_FILE], revision)
    commit = pinned(first, revision)
    f = first / CONFIG_FILE
    try:
        cfg = json.loads(f.read_text()) if f.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        cfg = None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UserError(f"{repo_id} is not a wsl generator (no config.json of format {FORMAT})",
                        "give a model repo pushed with `wsl generate push`")
    folder = fetch(["*.json", "*.safetensors", "*/*.json"], commit)
    return folder, commit


def load_generator(source: str | os.PathLike, revision: str | None = None) -> "WeightGenerator":
    """Load any saved generator: a local directory, or "ORG/NAME" on the Hub (pinned to a commit).

    Dispatches on config.json's method. A loaded Hub generator's `source` is "hf://ORG/NAME@commit".
    """
    if looks_like_repo_id(str(source)) and not isinstance(source, Path):
        folder, commit = download(str(source), revision)
        gen = from_pretrained(folder)
        gen.source = f"hf://{source}@{commit}" if commit else f"hf://{source}"
        return gen
    gen = from_pretrained(source)
    gen.source = str(Path(source).expanduser().resolve())
    return gen
