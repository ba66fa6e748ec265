"""A generator on disk, diffusers style, never pickle: save_pretrained / from_pretrained / load_generator.

    gen.save_pretrained("gen/")          # WeightGenerator.save_pretrained calls save_pretrained(gen, dir)
    gen = load_generator("gen/")         # any method: dispatches on config.json's "method" (registry.py)
    cfg = read_config("gen/")            # the checked config.json, without loading tensors

    DIR/config.json          {"format", "method", "generator_id", "config", "layout", "layout_id", "fit"}
    DIR/model.safetensors    every module's state dict, prefixed by module name
    DIR/<extra>/...          method-specific side files (diffusion: scheduler/scheduler_config.json)

A directory is written next to its destination under a temporary name and renamed into
place, so a crash never leaves half a generator. Loading checks everything it reads:
the format, the layout against its recorded hash, and the tensors against the modules
the config builds (a folder whose files were mixed up is a UserError, not a wrong model).
"""
from __future__ import annotations

import json
import os
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
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-gen-", dir=directory.parent))
    try:
        save_file(gen.state_tensors(), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "method": gen.method})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        gen._save_extra(tmp)
        if directory.exists():
            for name in [CONFIG_FILE, WEIGHTS_FILE]:
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
    gen = klass(cfg.get("config") or {})
    gen.layout = ParamLayout.from_dict(cfg["layout"])
    if cfg.get("layout_id") and gen.layout.layout_id != cfg["layout_id"]:
        raise UserError(f"{directory}/config.json: its layout hashes to {gen.layout.layout_id}, not the recorded "
                        f"{cfg['layout_id']}", "the file was edited or written by another version; refit the generator")
    gen.fit_info = dict(cfg.get("fit") or {})
    gen.generator_id = cfg.get("generator_id")
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


def load_generator(directory: str | os.PathLike) -> "WeightGenerator":
    """Load any saved generator (dispatches on config.json's method)."""
    return from_pretrained(directory)
