"""`wsl store import hf PATH|ORG/NAME ...`: models in the Hugging Face model-repo layout, one model per repo.

    my-model/
        config.json            the architecture's config (ours: {"name": "mlp", ...}; anything else: kept, not used)
        model.safetensors      the weights (pytorch_model.bin is read with torch.load(weights_only=True))
        README.md              the model card: its YAML front matter is kept as structured metadata

PATH may be one such folder, a folder of such folders (what `wsl export
--format hf` writes), or a Hub repo id, fetched with huggingface_hub's
`snapshot_download` (only config, card and weight files; cached, so
HF_HUB_OFFLINE=1 works for a repo fetched before).

The card's front matter becomes `models` columns: `card_<key>` for each
top-level key (lists and dicts as JSON) and the whole of it in `card_json`.
A card written by `wsl export` carries a `wsl` block (the model row with its
hyperparameters, the checkpoint row with its metrics, provenance): those go
back into the same columns and ids, so an exported model imports as itself.
The architecture is `--arch`, else config.json when it names one of ours,
else a layout inferred from the tensor names (stored, not evaluable).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

from store.errors import UserError
from store.import_columns import (CHECKPOINT_REQUIRED, CHECKPOINT_SYNONYMS, MODEL_REQUIRED, MODEL_SYNONYMS, _CKPT_TYPES,
                                  _MODEL_TYPES, identifier, split_columns)
from store.import_folder import CHECKPOINT_DIRECT, MODEL_DIRECT
from store.import_plan import CheckpointSource, ImportReport, ModelSource, run_import, stable_id

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DOWNLOAD_PATTERNS = ["config.json", "README.md", "model.safetensors", "pytorch_model.bin", "*.safetensors.index.json",
                     "pytorch_model.bin.index.json"]


def is_model_folder(p: Path) -> bool:
    return p.is_dir() and ((p / "config.json").is_file() or any((p / w).is_file() for w in WEIGHT_FILES))


def _download(repo_id: str, revision: str | None, download: Callable | None) -> Path:
    from store.hub import credentials as hub

    repo_id = hub.check_repo_id(repo_id, repo_type="model")
    if download is None:
        def download(rid, *, revision=None, allow_patterns=None):
            from huggingface_hub import snapshot_download

            return snapshot_download(rid, revision=revision, allow_patterns=allow_patterns, endpoint=hub.hub_endpoint())
    token = hub.token()
    failure = None
    try:
        return Path(download(repo_id, revision=revision, allow_patterns=list(DOWNLOAD_PATTERNS)))
    except Exception as e:  # noqa: BLE001 - one scrubbed line; the token never shows
        kinds = {c.__name__ for c in type(e).__mro__}
        msg = hub.scrub(" ".join(str(e).split()), [token])[:300] or type(e).__name__
        if "RepositoryNotFoundError" in kinds:
            failure = UserError(f"no model repo {repo_id} at {hub.hub_endpoint()} (or it is private and you are not logged in)",
                                f"check the name; for a private repo {hub.CREDENTIALS_FIX}")
        elif "OfflineModeIsEnabled" in kinds or "LocalEntryNotFoundError" in kinds:
            failure = UserError(f"{repo_id} is not in the local Hub cache and the Hub is not reachable ({msg})",
                                "unset HF_HUB_OFFLINE and check the network, or download the repo and give its folder")
        else:
            failure = UserError(f"downloading {repo_id}: {type(e).__name__}: {msg}", "check the repo id and the network")
    raise failure


def _card(folder: Path) -> dict:
    card = folder / "README.md"
    if not card.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card).data.to_dict() or {}
    except Exception as e:  # noqa: BLE001 - malformed YAML front matter
        raise UserError(f"{card}: the model card's front matter is not readable YAML ({str(e)[:200]})",
                        "fix the card's metadata block, or remove README.md") from None


def _weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    idx = sorted(folder.glob("*.index.json"))
    if idx:
        raise UserError(f"{folder} holds a sharded checkpoint ({idx[0].name}); one file per model is supported",
                        "merge the shards into model.safetensors (safetensors.torch.save_file of the full state dict)")
    raise UserError(f"{folder} has no {' or '.join(WEIGHT_FILES)}", "give a folder in the Hugging Face model layout")


def _arch(folder: Path, notes: list[str]) -> dict | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_path} is not readable JSON ({e})", "fix config.json") from None
    from store.layout import architecture_names

    if isinstance(cfg, dict) and cfg.get("name") in architecture_names():
        return cfg
    kind = cfg.get("model_type") or cfg.get("architectures") if isinstance(cfg, dict) else None
    notes.append(f"config.json of {folder.name} names no architecture of ours ({kind or 'no name'}): layout inferred; "
                 "give --arch to evaluate")
    return None


def _model(folder: Path, label: str, zoo: str | None, arch: Mapping | None, dataset: str | None,
           notes: list[str]) -> ModelSource:
    card = _card(folder)
    mine = card.get("wsl") if isinstance(card.get("wsl"), dict) else None
    weights = _weights(folder)
    model_arch, arch_from = (dict(arch), "--arch") if arch else (_arch(folder, notes), "config.json")
    if model_arch is None:
        arch_from = None
    exact = mine is not None and zoo is None and arch is None
    if mine is not None:  # a card `wsl export` wrote: the rows come back as they were
        mrow = dict(mine.get("model") or {})
        crow = dict(mine.get("checkpoint") or {})
        mid = str(mrow.pop("model_id", None) or stable_id("hf", zoo or "", label))
        mrow.pop("layout_id", None)
        if exact:
            columns = mrow
        else:
            skip = {"arch_config", "source", "import_format"}
            std, ext = split_columns({k: v for k, v in mrow.items() if k not in skip}, MODEL_SYNONYMS, _MODEL_TYPES,
                                     MODEL_REQUIRED, direct=MODEL_DIRECT, what=label)
            columns = {**ext, **std}
            if zoo:
                columns["zoo"] = zoo
        epoch = crow.pop("epoch", None)
        cid = crow.pop("checkpoint_id", None)
        if not cid:
            cid = f"{mid}-e{int(epoch):04d}" if epoch is not None else f"{mid}-hf"
        cid = str(cid)
        sha = crow.pop("sha256", None)
        for k in ("model_id", "layout_id", "num_params", "dtype"):
            crow.pop(k, None)
        if exact:
            ckpt_cols = crow
        else:
            crow.pop("source", None)
            cstd, cext = split_columns(crow, CHECKPOINT_SYNONYMS, _CKPT_TYPES, CHECKPOINT_REQUIRED,
                                       direct=CHECKPOINT_DIRECT, what=label)
            ckpt_cols = {**cext, **cstd}
    else:
        mid = stable_id("hf", zoo or "", label)
        columns = {f"card_{identifier(k)}": (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else v)
                   for k, v in card.items()}
        if card:
            columns["card_json"] = json.dumps(card, sort_keys=True, default=str)
        columns["zoo"] = zoo or label.split("/")[0]
        columns["hparams"] = json.dumps(card.get("hyperparameters", {}), sort_keys=True, default=str) \
            if isinstance(card.get("hyperparameters"), dict) else None
        epoch, cid, sha, ckpt_cols = None, f"{mid}-hf", None, {}
    if dataset is not None:
        columns["dataset"] = dataset
    if not exact:
        columns["source"] = label
    ckpt = CheckpointSource(weights, f"{label}/{weights.name}", cid, None if epoch is None else int(epoch), ckpt_cols,
                            sha if isinstance(sha, str) else None)
    return ModelSource(mid, label, columns, [ckpt], model_arch, arch_from, exact=exact)


def plan(sources: Sequence[str], *, zoo: str | None = None, arch: Mapping | None = None, dataset: str | None = None,
         revision: str | None = None, download: Callable | None = None) -> tuple[list[ModelSource], list[str]]:
    notes: list[str] = []
    models = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            if is_model_folder(p):
                models.append(_model(p, p.name, zoo, arch, dataset, notes))
                continue
            subs = sorted(d for d in p.iterdir() if not d.name.startswith(".") and is_model_folder(d))
            if not subs:
                raise UserError(f"{p} is neither a Hugging Face model folder (config.json + model.safetensors) "
                                "nor a folder of them", "give a model folder, a folder of model folders, or a repo id ORG/NAME")
            models += [_model(d, f"{p.name}/{d.name}", zoo, arch, dataset, notes) for d in subs]
        elif p.exists():
            raise UserError(f"{p} is a file", "give a model folder, a folder of model folders, or a repo id ORG/NAME")
        else:
            folder = _download(src, revision, download)
            models.append(_model(folder, src, zoo, arch, dataset, notes))
    return models, list(dict.fromkeys(notes))


def import_hf(target, sources: str | os.PathLike | Sequence[str | os.PathLike], *, zoo: str | None = None,
              arch: Mapping | None = None, dataset: str | None = None, rename=None, dtype: str | None = None,
              revision: str | None = None, download: Callable | None = None, workers: int | None = None,
              progress: Callable | None = None) -> ImportReport:
    """Import Hugging Face model folders / Hub repos into `target` (a ZooStore or a store path)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [str(s) for s in sources]
    if not sources:
        raise UserError("no model folder or repo id given", "give PATH or ORG/NAME")
    models, notes = plan(sources, zoo=zoo, arch=arch, dataset=dataset, revision=revision, download=download)
    return run_import(target, models, fmt="hf", source=", ".join(sources), rename=rename, dtype=dtype,
                      workers=workers, progress=progress, notes=notes)
