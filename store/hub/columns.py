"""What each column of the store's tables means: the schema section of the dataset card.

store/schema.py is the source of the names and types; this is their documentation for
people reading a published zoo's card.
"""
from __future__ import annotations

from store.schema import TABLES

# What each contract column holds (docs for the card; store/schema.py is the source of the names and types).
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "models": {
        "model_id": "deterministic key: hash of zoo + hyperparameters + seed",
        "zoo": "name of the zoo (population) the model belongs to",
        "architecture": "architecture family (mlp, cnn2d, cnn1d, transformer, siren, ...)",
        "arch_config": "JSON of the full architecture config (rebuilds the module)",
        "layout_id": "how the flat weight vector maps to named tensors (see the layouts table)",
        "dataset": "dataset / task the model was trained on, e.g. digits-pair:3-5",
        "dataset_id": "key into the datasets table (name + split seed)",
        "task": "classification or regression",
        "width": "hidden width",
        "depth": "number of hidden layers / blocks",
        "optimizer": "sgd, adam, adamw, ...",
        "lr": "learning rate",
        "momentum": "momentum (SGD) or beta1",
        "weight_decay": "weight decay",
        "batch_size": "training batch size",
        "epochs": "epochs trained",
        "schedule": "learning-rate schedule",
        "seed": "initialisation / data-order seed",
        "status": "done, or diverged",
        "hparams": "JSON of every hyperparameter (each also has its own column)",
    },
    "checkpoints": {
        "checkpoint_id": "key: {model_id}-e{epoch:04d} for epoch checkpoints",
        "model_id": "the model (models table)",
        "epoch": "epoch of this checkpoint",
        "step": "optimizer steps taken",
        "train_loss": "training loss at this checkpoint",
        "train_acc": "training accuracy",
        "test_loss": "test loss",
        "test_acc": "test accuracy",
    },
    "optimizer_states": {
        "checkpoint_id": "the checkpoint this state belongs to",
        "model_id": "the model",
        "epoch": "epoch",
        "state_json": "optimizer scalars (step counters, rng state) as JSON",
    },
    "layouts": {
        "layout_id": "key: content hash of the layout",
        "architecture": "architecture family",
        "num_params": "parameters per weight vector (P)",
        "layout_json": 'JSON {"params": [[name, shape], ...], "dtype": ..., "arch": {...}}: tensors in order, '
                       "each taking prod(shape) consecutive values of the flat vector",
    },
    "datasets": {
        "dataset_id": "key: name + split seed",
        "name": "registry name",
        "task": "classification or regression",
        "num_classes": "classes (classification)",
        "input_shape": "JSON list: shape of one input",
        "output_dim": "model outputs",
        "n_train": "training examples",
        "n_test": "test examples",
        "seed": "split seed",
        "meta": "JSON: anything else about the dataset",
    },
    "landscape": {
        "model_id": "the model",
        "epoch": "checkpoint epoch the metrics were measured at",
        "recipe_id": "hash of the recipe JSON",
        "hessian_top_eig": "top Hessian eigenvalue (power iteration)",
        "hessian_trace": "Hessian trace (Hutchinson, Rademacher probes)",
        "mode_connectivity": "mc = (L0+L1)/2 - L(t*) on a Bezier curve to another seed's model; negative = barrier",
        "cka_logits": "minibatch CKA of the logits against the other seed's model",
        "cka_hidden": "minibatch CKA of the last hidden layer",
        "train_loss": "training loss used by the phase rule",
        "train_acc": "training accuracy",
        "phase": "Yang et al. (2021) phase: I, II, III, IV-A, IV-B",
        "thresholds": "JSON of the phase thresholds used",
        "recipe": "JSON: split, batches, batch size, probes, iterations, curve settings, seeds",
    },
    "evaluations": {
        "checkpoint_id": "the checkpoint evaluated",
        "model_id": "its model",
        "dataset": "dataset name it was evaluated on",
        "dataset_id": "key into datasets",
        "split": "train or test",
        "loss": "loss",
        "accuracy": "accuracy",
    },
    "generators": {
        "generator_id": "key",
        "method": "diffusion, vqar or hyper",
        "layout_id": "layout of the weights it generates",
        "fit_where": "SQL filter of the checkpoints it was fit on",
        "num_train": "training weight vectors",
        "config": "JSON config",
        "path": "its folder: generators/<generator_id> in this repo (pulled into STORE/generators/<generator_id>)",
        "report": "JSON of the report it was first recorded with, if any (all of them: generator_reports)",
        "layout_ids": "JSON list of every layout it generates",
        "zoo": "zoo(s) of its training checkpoints",
        "fit_params": "JSON: bound values of the filter's $placeholders",
        "checkpoint_ids": "JSON list: the exact checkpoints it was fit on",
        "train_digest": "sha256 of the sorted \"checkpoint_id<TAB>sha256\" lines of its training checkpoints",
        "fit_datasets": "JSON list of the datasets it was fit on",
        "protocol": "unseen-dataset protocol it was fit under, if any",
        "held_out": "JSON list: the protocol's held-out tasks (never fit on)",
        "fit_seconds": "seconds the fit took",
        "versions": "JSON: library versions at fit time",
    },
    "generator_reports": {
        "generator_id": "the generator evaluated (generators table)",
        "report_id": "hash of the report JSON",
        "conditions": "JSON list of the conditions it evaluated",
        "report": "JSON: accuracy, novelty, baselines, fine-tuning per condition",
    },
    "samples": {
        "sample_id": "key",
        "generator_id": "the generator (generators table)",
        "kind": "generated, or a baseline: noise-0.06, noise-0.12, avg16, gaussfit, ...",
        "condition": "dataset name (and target metric) it was generated for",
        "dataset_id": "key into datasets",
        "seed": "sampling seed",
        "idx": "index within the sampling call",
        "test_loss": "test loss of the generated weights",
        "test_acc": "test accuracy",
        "nn_l2": "L2 distance to the nearest training checkpoint",
    },
}
WEIGHT_DOCS = {
    "layout_id": "layout of the weight vector (layouts table)",
    "dtype": "float32, float16 or bfloat16: how to read the weights bytes",
    "num_params": "values in the weight vector (P)",
    "sha256": "hex sha256 of the weights bytes",
    "weights": "the flat weight vector: P values as raw little-endian bytes of `dtype`",
}


def column_doc(table: str, column: str) -> str:
    if TABLES.get(table) is not None and TABLES[table].has_weights and column in WEIGHT_DOCS:
        return WEIGHT_DOCS[column]
    doc = COLUMN_DOCS.get(table, {}).get(column)
    if doc:
        return doc
    return "zoo-specific column (hyperparameter or metric)"
