"""The store's tables: names, key columns, required columns and their types.

This is a public contract: users write SQL against these names (docs/store.md
documents every column). A table may carry extra columns beyond the required
ones (a zoo's own hyperparameters in `models`, extra metrics in `landscape`);
DuckDB views read all parts with union-by-name, so a column missing from an
older part reads as NULL.

Weights live in a BLOB column `weights` (raw little-endian bytes) next to
`dtype`, `num_params`, `layout_id`, `sha256` (hex of the bytes) and `xxh3`
(hex XXH3-64 of the bytes: the checksum every read verifies).

Columns in LATER_COLUMNS were added to the contract after stores existed: every
new part has them, an older part may lack them (they read as NULL, and `wsl
store check` does not call that damage; reads fall back to sha256 there).
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    columns: tuple[tuple[str, pa.DataType], ...]  # required columns, in display order
    has_weights: bool = False
    doc: str = ""

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(list(self.columns))

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


WEIGHT_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("layout_id", pa.string()),
    ("dtype", pa.string()),  # float32 | float16 | bfloat16
    ("num_params", pa.int64()),
    ("sha256", pa.string()),  # hex sha256 of the weights bytes
    ("xxh3", pa.string()),  # hex XXH3-64 of the weights bytes: what reads verify
    ("weights", pa.large_binary()),
)

LATER_COLUMNS = frozenset({"xxh3"})  # required of new parts; older parts may lack them

TABLES: dict[str, Table] = {t.name: t for t in [
    Table("models", ("model_id",), (
        ("model_id", pa.string()),  # deterministic: hash of zoo + hyperparameters + seed
        ("zoo", pa.string()),
        ("architecture", pa.string()),  # mlp | cnn2d | cnn1d | transformer | siren | ...
        ("arch_config", pa.string()),  # JSON of the full architecture config
        ("layout_id", pa.string()),
        ("dataset", pa.string()),  # registry name, e.g. digits-pair:3-5
        ("dataset_id", pa.string()),
        ("task", pa.string()),  # classification | regression
        ("width", pa.int64()),
        ("depth", pa.int64()),
        ("optimizer", pa.string()),
        ("lr", pa.float64()),
        ("momentum", pa.float64()),
        ("weight_decay", pa.float64()),
        ("batch_size", pa.int64()),
        ("epochs", pa.int64()),
        ("schedule", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),  # done | diverged
        ("hparams", pa.string()),  # JSON of every hyperparameter (each also has its own column)
    ), doc="one row per trained model, written when it finishes"),
    Table("checkpoints", ("checkpoint_id",), (
        ("checkpoint_id", pa.string()),  # f"{model_id}-e{epoch:04d}" for epoch checkpoints
        ("model_id", pa.string()),
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        *WEIGHT_COLUMNS,
    ), has_weights=True, doc="one row per model x checkpoint, with its weights and metrics"),
    Table("optimizer_states", ("checkpoint_id",), (
        ("checkpoint_id", pa.string()),
        ("model_id", pa.string()),
        ("epoch", pa.int64()),
        ("state_json", pa.string()),  # scalars (step counters, rng state) as JSON
        *WEIGHT_COLUMNS,  # flat optimizer buffers (momentum / Adam moments) as one vector
    ), has_weights=True, doc="what resuming training exactly needs"),
    Table("layouts", ("layout_id",), (
        ("layout_id", pa.string()),
        ("architecture", pa.string()),
        ("num_params", pa.int64()),
        ("layout_json", pa.string()),  # ParamLayout.to_json()
    ), doc="one row per layout: how a flat weight vector maps onto named tensors"),
    Table("datasets", ("dataset_id",), (
        ("dataset_id", pa.string()),
        ("name", pa.string()),
        ("task", pa.string()),
        ("num_classes", pa.int64()),
        ("input_shape", pa.string()),  # JSON list
        ("output_dim", pa.int64()),
        ("n_train", pa.int64()),
        ("n_test", pa.int64()),
        ("seed", pa.int64()),
        ("meta", pa.string()),  # JSON
    ), doc="one row per dataset (name + split seed)"),
    Table("landscape", ("model_id", "epoch", "recipe_id"), (
        ("model_id", pa.string()),
        ("epoch", pa.int64()),
        ("recipe_id", pa.string()),  # hash of the recipe JSON
        ("hessian_top_eig", pa.float64()),
        ("hessian_trace", pa.float64()),
        ("mode_connectivity", pa.float64()),
        ("cka_logits", pa.float64()),
        ("cka_hidden", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("phase", pa.string()),  # I | II | III | IV-A | IV-B
        ("thresholds", pa.string()),  # JSON of the phase thresholds used
        ("recipe", pa.string()),  # JSON: split, batches, batch_size, probes, iterations, curve epochs/lr, seeds
    ), doc="loss-landscape metrics and phase per model x epoch x recipe"),
    Table("evaluations", ("checkpoint_id", "dataset_id", "split"), (
        ("checkpoint_id", pa.string()),
        ("model_id", pa.string()),
        ("dataset", pa.string()),
        ("dataset_id", pa.string()),
        ("split", pa.string()),
        ("loss", pa.float64()),
        ("accuracy", pa.float64()),
    ), doc="scores written by `wsl eval` for stored checkpoints on a dataset"),
    Table("generators", ("generator_id",), (
        ("generator_id", pa.string()),
        ("method", pa.string()),  # diffusion | vqar | hyper
        ("layout_id", pa.string()),
        ("fit_where", pa.string()),  # the SQL filter it was fit on
        ("num_train", pa.int64()),
        ("config", pa.string()),  # JSON
        ("path", pa.string()),  # its save_pretrained folder: relative to the store (generators/<id>), absolute, or hf://
        ("report", pa.string()),  # JSON of the report it was first recorded with, if any (every report: generator_reports)
        ("layout_ids", pa.string()),  # JSON list: every layout it generates (one, or several for multi-layout methods)
        ("zoo", pa.string()),  # zoo(s) of its training checkpoints, comma-separated
        ("fit_params", pa.string()),  # JSON: bound values of the filter's $placeholders
        ("checkpoint_ids", pa.string()),  # JSON list: the exact checkpoints it was fit on
        ("train_digest", pa.string()),  # sha256 of "checkpoint_id<TAB>sha256" lines sorted by id
        ("fit_datasets", pa.string()),  # JSON list of the datasets (conditions) it was fit on
        ("protocol", pa.string()),  # unseen-dataset protocol it was fit under, if any
        ("held_out", pa.string()),  # JSON list: that protocol's held-out tasks (never fit on)
        ("fit_seconds", pa.float64()),
        ("versions", pa.string()),  # JSON: library versions at fit time
    ), doc="one row per fitted generator, written when it is fit (or first recorded in this store)"),
    Table("generator_reports", ("generator_id", "report_id"), (
        ("generator_id", pa.string()),
        ("report_id", pa.string()),  # hash of the report JSON: re-recording the same report is a no-op
        ("conditions", pa.string()),  # JSON list of the dataset names (and targets) it evaluated
        ("report", pa.string()),  # JSON: accuracy, novelty, baselines, fine-tuning per condition
    ), doc="every evaluation report of a generator (the store is append-only; reports accumulate)"),
    Table("samples", ("sample_id",), (
        ("sample_id", pa.string()),
        ("generator_id", pa.string()),
        ("kind", pa.string()),  # generated | noise-0.06 | noise-0.12 | avg16 | gaussfit | ...
        ("condition", pa.string()),  # dataset name (and target metric) it was generated for
        ("dataset_id", pa.string()),
        ("seed", pa.int64()),
        ("idx", pa.int64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("nn_l2", pa.float64()),  # distance to the nearest training checkpoint
        *WEIGHT_COLUMNS,
    ), has_weights=True, doc="generated weights with their scores"),
]}
