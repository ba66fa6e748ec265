"""Talking to the Hub safely: repo ids, endpoint and offline mode, the token, and errors people can act on.

Credentials: the token comes from huggingface_hub's usual lookup (HF_TOKEN, else the
login saved by `hf auth login`). This module never passes it around, prints it, logs it
or writes it; it reads it only to check that there is one and to scrub it out of
exception texts before they become error messages (`hub_error`). Callers raise the
UserError outside their `except` block, so the original exception, which may quote the
token, is not attached to it.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

from store.errors import UserError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_URL_PREFIXES = {"dataset": ("https://huggingface.co/datasets/", "hf://datasets/", "datasets/"),
                 "model": ("https://huggingface.co/", "hf://")}

CREDENTIALS_FIX = ("log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`), "
                   "or set HF_TOKEN (https://huggingface.co/settings/tokens; publishing needs a token with write access)")


def check_repo_id(repo_id: Any, repo_type: str = "dataset") -> str:
    """`ORG/NAME` as the Hub accepts it, or a UserError naming the fix."""
    example = ("give it as ORG/NAME, e.g. --repo-id my-lab/mlp-digits-zoo" if repo_type == "dataset"
               else "give it as ORG/NAME, e.g. --repo-id my-lab/digits-diffusion")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise UserError("no repo id given", example)
    repo_id = repo_id.strip()
    for prefix in _URL_PREFIXES.get(repo_type, ()) + _URL_PREFIXES["dataset"]:
        if repo_id.startswith(prefix):
            raise UserError(f"repo id {repo_id!r} is a URL or path, not a repo id",
                            f"give only ORG/NAME: {repo_id[len(prefix):].strip('/')}")
    if not _REPO_ID.match(repo_id):
        raise UserError(f"repo id {repo_id!r} is not of the form ORG/NAME", example)
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    except Exception as e:  # HFValidationError: '--', '..', length, ...
        raise UserError(f"repo id {repo_id!r} is not valid on the Hub ({e})", example) from None
    return repo_id


def check_license(license: str) -> str:
    if not isinstance(license, str) or not _LICENSE.match(license.strip().lower()):
        raise UserError(f"license {license!r} is not a Hub license id",
                        "give an id from https://huggingface.co/docs/hub/repositories-licenses, e.g. cc-by-4.0, mit, apache-2.0")
    return license.strip().lower()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it once, at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hub_endpoint() -> str:
    """HF_ENDPOINT as the environment says now, else huggingface_hub's default."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, else the saved login). Only used to check and to scrub."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - e.g. a failing OIDC exchange: treat as "no credentials"
        return None


def require_upload_credentials(api: Any, what: str, dry_run_hint: str) -> str | None:
    """Before anything is sent: offline mode and a missing token are UserErrors. Returns the token (to scrub)."""
    if offline_mode():
        raise UserError(f"HF_HUB_OFFLINE is set: {what} needs the Hub", f"unset HF_HUB_OFFLINE{dry_run_hint}")
    tok = token()
    if not tok and not getattr(api, "token", None):
        raise UserError("no Hugging Face credentials found (HF_TOKEN is unset and there is no saved login)", CREDENTIALS_FIX)
    return tok


def make_api(endpoint: str):
    """An HfApi for `endpoint` (tests replace this function with a fake that records calls)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def scrub(text: str, secrets_: Sequence[str | None] = ()) -> str:
    """`text` with any token in it replaced by ***: the known ones, anything shaped like hf_..., Bearer headers."""
    for s in secrets_:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _TOKEN_LIKE.sub("***", text)
    return _BEARER.sub(r"\1***", text)


def repo_url(endpoint: str, repo_id: str, repo_type: str) -> str:
    return f"{endpoint}/datasets/{repo_id}" if repo_type == "dataset" else f"{endpoint}/{repo_id}"


def hub_error(e: BaseException, action: str, endpoint: str, repo_id: str, token: str | None,
              repo_type: str = "dataset") -> UserError:
    """Any exception from huggingface_hub -> one UserError that names the cause and the fix, token scrubbed."""
    names = {c.__name__ for c in type(e).__mro__}
    msg = scrub(" ".join(str(e).split()), [token])[:600] or type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if "OfflineModeIsEnabled" in names:
        return UserError(f"{action}: HF_HUB_OFFLINE is set, so the Hub is not contacted",
                         "unset HF_HUB_OFFLINE (a repo pulled before is read from the cache; "
                         "`wsl publish --dry-run DIR` works offline)")
    if names & {"ConnectError", "ConnectionError", "ConnectTimeout", "Timeout", "TimeoutException", "ReadTimeout",
                "NetworkError", "TransportError", "ProxyError", "SSLError", "RemoteProtocolError"}:
        return UserError(f"{action}: cannot reach the Hub at {endpoint} ({type(e).__name__}: {msg})",
                         "check the network connection and HF_ENDPOINT (unset it for huggingface.co)")
    if "GatedRepoError" in names:
        return UserError(f"{action}: {repo_id} is gated ({msg})",
                         f"accept its conditions on {repo_url(endpoint, repo_id, repo_type)} while logged in, then "
                         f"{CREDENTIALS_FIX}")
    if "RepositoryNotFoundError" in names:
        return UserError(f"{action}: no {repo_type} repo {repo_id} at {endpoint} (or it is private and you are not "
                         "logged in)", f"check the name; for a private repo {CREDENTIALS_FIX}")
    if "RevisionNotFoundError" in names:
        return UserError(f"{action}: {msg}", "give a branch, tag or commit that exists (or leave --revision out)")
    if "LocalEntryNotFoundError" in names:
        return UserError(f"{action}: the Hub at {endpoint} could not be reached and {repo_id} is not in the local cache ({msg})",
                         "check the network and HF_ENDPOINT, or unset HF_HUB_OFFLINE")
    if "EntryNotFoundError" in names:
        return UserError(f"{action}: {repo_id} lacks a file this needs ({msg})",
                         f"check that {repo_id} is the repo you mean")
    if status in (401, 403):
        return UserError(f"{action}: the Hub refused the credentials (HTTP {status}: {msg})",
                         f"{CREDENTIALS_FIX}, to the organisation too for an organisation's repo")
    return UserError(f"{action}: {type(e).__name__}: {msg}", "check the message; re-running the command resumes where it stopped")
