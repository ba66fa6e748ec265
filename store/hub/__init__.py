"""Publish a zoo store as a Hugging Face Hub dataset, and pull one back into a store.

    from store import ZooStore
    from store.hub import build_folder, publish, pull

    store = ZooStore("wsl-store")
    build_folder(store, "zoo-hub", where="lr > 0.01")     # the repo's folder, nothing uploaded
    publish(store, "my-org/my-zoo")                        # create_repo + upload_folder
    pull("my-org/my-zoo", "other-store", weights=True)     # Hub (or a local folder) -> store

The dataset repo (`build_folder` writes it; `publish` uploads it as it is):

    README.md                       dataset card: YAML `configs:` (one per table, `models` the default),
                                    license, tags; schema, how to decode weights, a summary
    wsl-zoo.json                    manifest: schema version, every table's files, rows, columns
    data/<table>/<table>-00000-of-00003.parquet
                                    shards of <= 500 MB, row groups <= 64 MB (by bytes), < 10,000
                                    files per folder (more go into data/<table>/<NNNNN>/ subfolders)
    generators/<generator_id>/      the generators fit on the published models, as saved, with reports

A single generator goes up as a model repo through the same upload steps
(generators/model_repo.py: `wsl generate push`).

Why this shape: `datasets.load_dataset(repo, "checkpoints")`, the Hub's dataset viewer
and DuckDB (`read_parquet('hf://datasets/ORG/NAME/data/models/*.parquet')`) read it as
it is, with no loading script; row groups cut by bytes keep the viewer working (one
published zoo broke it with 2.5 GB row groups) and make partial reads cheap; the weights
column stays raw little-endian bytes, the same as in the store, so nothing is converted
on the way out or back in.

One module per job:
    credentials.py   repo ids, endpoint, offline mode, the token (never printed), error translation
    selection.py     which rows of which tables (store/filters.py's pool, bound parameters)
    shards.py        rows -> Parquet shards within the Hub's byte limits (store/parts.py's writer policy)
    folder.py        the folder: shards + manifest + card, written atomically
    summary.py       counts and ranges for the card, from the shards just written
    card.py          the README.md text (columns.py: what each column means)
    upload.py        publish, and the create-repo / upload steps every upload shares
    download.py      pull, and snapshots pinned by commit
"""
from store.hub.credentials import (CREDENTIALS_FIX, check_license, check_repo_id, hub_endpoint, hub_error, make_api,
                                   offline_mode, scrub)
from store.hub.download import IMPORT_ORDER, WEIGHT_TABLES, PullReport, pinned, pull, snapshot
from store.hub.folder import (CARD, DEFAULT_LICENSE, HUB_FORMAT, HUB_FORMAT_VERSION, MANIFEST, BuildReport,
                              build_folder, folder_size)
from store.hub.selection import Selection, parse_tables, select
from store.hub.shards import DATA, FILE_BYTES, MAX_FILES_PER_FOLDER, ROW_GROUP_BYTES, ShardWriter, write_table
from store.hub.summary import summarize
from store.hub.upload import (LARGE_FOLDER_BYTES, LARGE_FOLDER_FILES, PublishReport, create_repo, publish,
                              upload_repo_folder)

__all__ = ["BuildReport", "CARD", "CREDENTIALS_FIX", "DATA", "DEFAULT_LICENSE", "FILE_BYTES", "HUB_FORMAT",
           "HUB_FORMAT_VERSION", "IMPORT_ORDER", "LARGE_FOLDER_BYTES", "LARGE_FOLDER_FILES", "MANIFEST",
           "MAX_FILES_PER_FOLDER", "PublishReport", "PullReport", "ROW_GROUP_BYTES", "Selection", "ShardWriter",
           "WEIGHT_TABLES", "build_folder", "check_license", "check_repo_id", "create_repo", "folder_size",
           "hub_endpoint", "hub_error", "make_api", "offline_mode", "parse_tables", "pinned", "publish", "pull",
           "scrub", "select", "snapshot", "summarize", "upload_repo_folder", "write_table"]
