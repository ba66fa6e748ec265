"""Uploading to the Hub: `publish` (a zoo as a dataset repo) and the steps every upload shares.

    publish(store, "my-org/my-zoo")                        # create_repo + upload_folder of build_folder's output
    publish(store, None, dry_run="zoo-hub")                # only the folder, nothing sent
    commit = upload_repo_folder(api, repo_id, "model", folder, message, ...)   # generators push this way

Order, for every upload: check inputs, credentials and offline mode (nothing written or
sent yet); `create_repo(exist_ok=True)`; write the folder to a temporary directory;
upload it in one commit (`upload_folder`: all or nothing), or with
`upload_large_folder` above LARGE_FOLDER_BYTES / LARGE_FOLDER_FILES when the installed
huggingface_hub has it (resumable, several commits; stale files removed afterwards). A
report says published=True only after the upload call returned; any failure is a
UserError saying the upload did not finish, with the token scrubbed out.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from store.errors import UserError
from store.hub import credentials
from store.hub.credentials import check_license, check_repo_id, hub_endpoint, hub_error
from store.hub.folder import DEFAULT_LICENSE, GENERATORS, MANIFEST, BuildReport, build_folder, folder_size
from store.hub.selection import select
from store.hub.shards import DATA, FILE_BYTES, MAX_FILES_PER_FOLDER, ROW_GROUP_BYTES, Progress

log = logging.getLogger(__name__)

# Above either threshold the folder goes up with `upload_large_folder` (resumable, many commits) when the
# installed huggingface_hub has it; below, one `upload_folder` commit (atomic: all or nothing). From
# huggingface_hub 1.x on, `upload_folder` itself commits big folders in resumable batches.
LARGE_FOLDER_BYTES = 5 * 2**30
LARGE_FOLDER_FILES = 1_000


@dataclass
class PublishReport:
    """published=True only once the upload call returned; `build` describes the folder that went up."""

    repo_id: str | None
    url: str | None
    published: bool
    method: str | None
    build: BuildReport
    bytes: int = 0
    num_files: int = 0

    def rows(self) -> list[dict]:
        return self.build.rows()


def _delete_stale(api, repo_id: str, repo_type: str, keep: set[str], managed: Iterable[str]) -> list[str]:
    """After upload_large_folder (which cannot delete): remove the previous version's files no longer in the folder."""
    prefixes = tuple(p.rstrip("*") for p in managed)
    remote = api.list_repo_files(repo_id, repo_type=repo_type)
    stale = [f for f in remote if f.startswith(prefixes) and f not in keep]
    if stale:
        from huggingface_hub import CommitOperationDelete

        api.create_commit(repo_id=repo_id, repo_type=repo_type,
                          operations=[CommitOperationDelete(path_in_repo=f) for f in stale],
                          commit_message=f"wsl: remove {len(stale)} files of the previous version")
    return stale


def create_repo(api, repo_id: str, repo_type: str, private: bool, endpoint: str, token: str | None) -> str:
    """`api.create_repo(exist_ok=True)`; its URL. A failure is a scrubbed UserError."""
    failure: UserError | None = None
    try:
        log.info("create_repo %s (%s, private=%s)", repo_id, repo_type, private)
        url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private)
    except Exception as e:  # noqa: BLE001 - every failure becomes a scrubbed, one-line UserError
        failure = hub_error(e, f"creating {repo_type} repo {repo_id}", endpoint, repo_id, token, repo_type)
    if failure is not None:
        raise failure  # raised outside the except block: the original exception (maybe quoting the token) is not attached
    return str(url) if isinstance(url, str) and url else credentials.repo_url(endpoint, repo_id, repo_type)


def upload_repo_folder(api, repo_id: str, repo_type: str, folder: Path, *, message: str, description: str,
                       delete_patterns: list[str], private: bool, endpoint: str, token: str | None,
                       what: str, large_folder_bytes: int = LARGE_FOLDER_BYTES,
                       large_folder_files: int = LARGE_FOLDER_FILES) -> tuple[str, Any]:
    """Upload `folder` as the repo's new version; (method, what the upload call returned: its CommitInfo).

    delete_patterns: the files of the previous version this upload replaces (removed in
    the same commit by upload_folder, afterwards by upload_large_folder).
    """
    size, nfiles = folder_size(folder)
    large = size > large_folder_bytes or nfiles > large_folder_files
    failure: UserError | None = None
    result = None
    method = "upload_large_folder" if large and hasattr(api, "upload_large_folder") else "upload_folder"
    try:
        log.info("%s %s: %d files, %d bytes", method, repo_id, nfiles, size)
        if method == "upload_large_folder":
            result = api.upload_large_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                                             private=private)
            keep = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
            _delete_stale(api, repo_id, repo_type, keep, delete_patterns)
        else:
            result = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                                       commit_message=message, commit_description=description,
                                       delete_patterns=delete_patterns)
    except Exception as e:  # noqa: BLE001
        err = hub_error(e, f"uploading to {repo_id}", endpoint, repo_id, token, repo_type)
        failure = UserError(f"{err.message}. The upload did not finish: {repo_id} is NOT published as {what}", err.fix)
    if failure is not None:
        raise failure
    return method, result


def publish(store, repo_id: str | None, *, where: str | None = None, tables: Iterable[str] | str | None = None,
            private: bool = False, license: str = DEFAULT_LICENSE, dry_run: str | os.PathLike | None = None,
            api: Any = None, large_folder_bytes: int = LARGE_FOLDER_BYTES, large_folder_files: int = LARGE_FOLDER_FILES,
            row_group_bytes: int = ROW_GROUP_BYTES, file_bytes: int = FILE_BYTES,
            max_files_per_folder: int = MAX_FILES_PER_FOLDER, staging_dir: str | os.PathLike | None = None,
            progress: Progress | None = None, generators: str | None = None) -> PublishReport:
    """Publish the selected part of `store` as the dataset repo `repo_id` (or only write it, with dry_run=DIR).

    generators: which generators go along (selection.choose_generators): None = those
    fit on the selected models, "none", or a SQL condition over the generators table.

    `api` is injectable (tests pass a fake that records calls); by default an `HfApi`
    for $HF_ENDPOINT (credentials.make_api).
    """
    limits = dict(row_group_bytes=row_group_bytes, file_bytes=file_bytes, max_files_per_folder=max_files_per_folder,
                  progress=progress)
    license = check_license(license)
    if dry_run is not None:
        report = build_folder(store, dry_run, repo_id=repo_id, where=where, tables=tables, license=license,
                              generators=generators, **limits)
        size, nfiles = folder_size(report.folder)
        return PublishReport(report.manifest.get("repo_id"), None, False, None, report, size, nfiles)
    if repo_id is None:
        raise UserError("publishing needs --repo-id ORG/NAME", "give --repo-id, or --dry-run DIR to only write the folder")
    repo_id = check_repo_id(repo_id)
    token = credentials.require_upload_credentials(api, "publishing",
                                                   ", or use --dry-run DIR to write the folder without uploading")
    endpoint = hub_endpoint()
    selection = select(store, where, tables, generators)  # an empty selection fails here, before anything is sent
    if api is None:
        api = credentials.make_api(endpoint)
    url = create_repo(api, repo_id, "dataset", private, endpoint, token)
    with tempfile.TemporaryDirectory(prefix="wsl-publish-", dir=staging_dir) as tmp:
        report = build_folder(store, Path(tmp) / "zoo", repo_id=repo_id, license=license, selection=selection, **limits)
        size, nfiles = folder_size(report.folder)
        n_models = report.manifest["tables"].get("models", {}).get("rows", 0)
        method, _ = upload_repo_folder(
            api, repo_id, "dataset", report.folder,
            message=f"wsl publish: {n_models} models, tables {', '.join(report.manifest['tables'])}",
            description=f"Selection: models WHERE {selection.where}" if selection.where else "The whole store.",
            delete_patterns=[f"{DATA}/*", f"{GENERATORS}/*", MANIFEST], private=private, endpoint=endpoint, token=token,
            what="this zoo", large_folder_bytes=large_folder_bytes, large_folder_files=large_folder_files)
    log.info("published %s (%s)", repo_id, method)
    return PublishReport(repo_id, url, True, method, report, size, nfiles)


