"""A generator as a Hugging Face model repo: `wsl generate push` builds and uploads it; saving.load_generator reads it.

    report = push(gen, "my-lab/digits-diffusion", private=True)     # api=HfApi(...) by default; tests pass a fake
    gen = load_generator("my-lab/digits-diffusion")                 # saving.py: pinned to the commit it resolves

The repo holds the generator folder as saved (config.json, model.safetensors,
training_set.json, the method's side files, report/ when there is one) plus a model card
(README.md, huggingface_hub's ModelCard) with the method, the layout, the zoo, the
training-set digest, the protocol, the report's numbers and the `wsl` lines that
reproduce it. The credential checks, repo creation, upload and error translation are the
ones `wsl publish` uses (store/hub/upload.py): the token is never printed or written,
and the upload is one commit, so a failure leaves the repo as it was.

Before anything is sent the folder is checked against its config: it must load (the
tensors fit the modules the config builds, the layout matches its hash) and its content
must hash to the generator_id it records.
"""
from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generators.interface import WeightGenerator
from generators.saving import CONFIG_FILE
from store.errors import UserError

CARD_FILE = "README.md"
# what a new push replaces from the previous version (not .gitattributes, not files the user added by hand)
REPLACED = ["*.json", "*.safetensors", "scheduler/*", "report/*", CARD_FILE]


@dataclass
class PushReport:
    repo_id: str
    url: str
    commit: str | None
    files: int
    bytes: int


def check_folder(gen: WeightGenerator, folder: Path) -> None:
    """The folder holds exactly the generator its config names (content hash = recorded generator_id)."""
    recorded = json.loads((folder / CONFIG_FILE).read_text()).get("generator_id")
    actual = gen._compute_id()
    if not recorded or recorded != actual:
        raise UserError(f"{folder} does not match its config: its tensors and config hash to {actual}, config.json "
                        f"records generator_id {recorded}", "push the folder `wsl generate fit` wrote, unedited (or refit)")


def _report(gen: WeightGenerator, folder: Path, store) -> dict[str, Any] | None:
    """The report the card quotes: the folder's report/report.json, else one the store recorded."""
    f = folder / "report" / "report.json"
    text = f.read_text() if f.is_file() else None
    if text is None and store is not None and store.count("generator_reports"):
        df = store.sql("SELECT report FROM generator_reports WHERE generator_id = $id ORDER BY report_id LIMIT 1",
                       {"id": gen.generator_id})
        text = df["report"][0] if len(df) else None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def reproduce_lines(gen: WeightGenerator, zoo_repo: str | None = None) -> list[str]:
    """The `wsl` commands that rebuild this generator from its zoo (same data and options give the same id)."""
    t, info = gen.training or {}, gen.fit_info
    zoos = t.get("zoo") or []
    lines = []
    if zoo_repo:
        lines.append(f"wsl pull {zoo_repo} --store zoo --weights")
    else:
        from zoo.spec import builtin_specs

        specs = builtin_specs()
        for z in zoos:
            lines.append(f"wsl zoo train {z} --store zoo" if z in specs
                         else f"# zoo {z!r}: train its spec (wsl zoo train SPEC --store zoo) or pull its published dataset")
    fit = [f"wsl generate fit --method {gen.method} --store zoo"]
    if not t.get("checkpoint_ids") and t.get("datasets") and not getattr(gen, "needs_weights", True):
        # fit from tasks alone (hyper, mode=task): no zoo to pull, the task names and the architecture rebuild it
        lines = []
        fit.append(f"--datasets {shlex.quote(','.join(t['datasets']))} --arch {shlex.quote(json.dumps(gen.layout.arch))}")
        return lines + [" ".join(fit + _set_options(gen))]
    where = t.get("where", info.get("where"))
    if where:
        fit.append(f"--where {json.dumps(where)}")
        if t.get("last", info.get("last")):
            fit.append("--last")
    if t.get("protocol"):
        fit.append(f"--protocol {shlex.quote(_protocol_arg(t['protocol'], info.get('protocol')))}")
    metric = t.get("metric")
    fit.append(f"--metric {metric or 'none'}")
    align = t.get("align_by", info.get("align_by"))
    fit.append(f"--align-by {align or 'none'}")
    lines.append(" ".join(fit + _set_options(gen)))
    if t.get("params"):
        lines.append(f"# the filter's parameters were {json.dumps(t['params'])}: write their values into --where")
    return lines


def _set_options(gen: WeightGenerator) -> list[str]:
    """--seed and a --set KEY=VALUE for every option that differs from its default (JSON values: true, "text")."""
    out = []
    defaults = type(gen).Config()
    for k, v in sorted(gen.config_dict().items()):
        if k == "seed":
            out.append(f"--seed {v}")
        elif getattr(defaults, k, object()) != v:
            out.append(f"--set {k}={shlex.quote(json.dumps(v)) if isinstance(v, (str, bool)) else v}")
    return out


def card_text(gen: WeightGenerator, repo_id: str, report: dict[str, Any] | None, zoo_repo: str | None,
              license: str) -> str:
    """The model card (README.md) as huggingface_hub's ModelCard renders it."""
    from huggingface_hub import ModelCard, ModelCardData

    t, layout = gen.training or {}, gen.layout
    zoos = t.get("zoo") or []
    data = ModelCardData(library_name="wsl-zoo", license=license,
                         tags=["weight-space-learning", "weight-generation", "wsl-zoo", gen.method],
                         datasets=[zoo_repo] if zoo_repo else None)
    arch = (layout.arch or {}).get("name", "?")
    rows = [("method", f"`{gen.method}`"), ("generator_id", f"`{gen.generator_id}`"),
            ("layout", f"`{layout.layout_id}` ({arch}, {layout.num_params:,} parameters)"),
            ("zoo", ", ".join(zoos) or "(not recorded)"),
            ("training set", f"{t.get('num_train', gen.fit_info.get('num_train', 0))} checkpoints, digest "
                             f"`{t.get('digest') or 'not recorded'}` (ids in `training_set.json`)"),
            ("protocol", t.get("protocol") or "none"),
            ("held-out tasks", ", ".join(t.get("held_out") or []) or "none")]
    body = [f"# {gen.method} weight generator `{gen.generator_id}`", "",
            f"Generates weights of a {arch} ({layout.num_params:,} parameters) for a dataset, conditioned on that "
            "dataset's training samples (also for a dataset it never saw). Made with "
            "[wsl-zoo](https://pypi.org/project/wsl-zoo/) (`wsl generate fit`).", "",
            "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if report and report.get("summary"):
        body += ["## Report", "", f"{report.get('n')} generated models per condition (select={report.get('select', 1)}); "
                 "mean test accuracy over conditions:", "",
                 "| conditions | n | generated | zoo | generated / zoo |", "|---|---|---|---|---|"]
        for group, s in report["summary"].items():
            def f(v):
                return f"{v:.4f}" if isinstance(v, (int, float)) else ""
            body.append(f"| {group} | {s.get('conditions', '')} | {f(s.get('generated_mean_acc'))} | "
                        f"{f(s.get('zoo_mean_acc'))} | {f(s.get('generated_over_zoo'))} |")
        body.append("")
    body += ["## Use", "", "```bash", "pip install wsl-zoo",
             f"wsl generate sample {repo_id} --dataset DATASET -n 100 --store my-store   # samples + scores -> samples table",
             "```", "", "```python", "from generators import load_generator", "",
             f'gen = load_generator("{repo_id}")          # pinned to the commit it resolves',
             'w, layout = gen.sample(100, "DATASET", seed=0)   # [100, P] weights; layout.build_module() rebuilds one',
             "```", "", "## Reproduce", "", "```bash"] + reproduce_lines(gen, zoo_repo) + ["```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def stage(gen: WeightGenerator, folder: Path, out: Path, repo_id: str, zoo_repo: str | None, license: str,
          store=None) -> Path:
    """The repo's files in `out`: the generator folder's files (not hidden ones, not a README) + the card."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_dir() or any(part.startswith(".") for part in rel.parts) or rel.as_posix() == CARD_FILE:
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, out / rel)
    (out / CARD_FILE).write_text(card_text(gen, repo_id, _report(gen, folder, store), zoo_repo, license))
    return out


def push(gen: WeightGenerator, folder: str | Path, repo_id: str, *, private: bool = False, zoo_repo: str | None = None,
         license: str = "cc-by-4.0", api: Any = None, store=None) -> PushReport:
    """Upload the generator saved in `folder` as the model repo `repo_id`; nothing is sent before every check passed."""
    from store.hub import credentials
    from store.hub.folder import folder_size
    from store.hub.upload import create_repo, upload_repo_folder

    folder = Path(folder)
    repo_id = credentials.check_repo_id(repo_id, "model")
    if zoo_repo is not None:
        zoo_repo = credentials.check_repo_id(zoo_repo, "dataset")
    license = credentials.check_license(license)
    check_folder(gen, folder)
    token = credentials.require_upload_credentials(api, "pushing a generator", "")
    endpoint = credentials.hub_endpoint()
    with tempfile.TemporaryDirectory(prefix="wsl-push-") as tmp:
        staged = stage(gen, folder, Path(tmp), repo_id, zoo_repo, license, store)
        size, nfiles = folder_size(staged)
        if api is None:
            api = credentials.make_api(endpoint)
        url = create_repo(api, repo_id, "model", private, endpoint, token)
        _, info = upload_repo_folder(api, repo_id, "model", staged, message=f"wsl generate push: {gen.method} "
                                     f"generator {gen.generator_id}", description=f"layout {gen.layout.layout_id}",
                                     delete_patterns=REPLACED, private=private, endpoint=endpoint, token=token,
                                     what=f"generator {gen.generator_id}")
    commit = getattr(info, "oid", None) or (info if isinstance(info, str) and len(info) == 40 else None)
    return PushReport(repo_id, url, commit, nfiles, size)


def _protocol_arg(name: str, record: Any) -> str:
    """The --protocol argument that reproduces the fit's split: the recorded protocol as data, else its name."""
    spec = record.get("protocol") if isinstance(record, dict) else None
    if isinstance(spec, dict) and "pattern" in spec:
        from generators.protocols import Protocol

        return Protocol.from_dict(spec).to_inline()
    return name
