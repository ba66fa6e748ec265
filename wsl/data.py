"""The in-memory dataset every package passes around.

`zoo.datasets.load_dataset(name, seed)` builds these from the registry; the
fused evaluator, the landscape metrics and the generators only need the
tensors and the descriptor, so they never import `zoo`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from store.errors import UserError


@dataclass
class Dataset:
    """A train/test split as tensors plus what a model needs to know about it.

    x_*: float32 [n, *input_shape]; y_*: int64 [n] for classification,
    float32 [n, target_dim] for regression.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str = "classification"  # or "regression"
    num_classes: int = 0  # classification only
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise UserError(f"dataset {self.name!r} has task {self.task!r}", "use 'classification' or 'regression'")
        for split in ("train", "test"):
            x, y = self.split(split)
            if len(x) != len(y):
                raise UserError(f"dataset {self.name!r} {split} split has {len(x)} inputs but {len(y)} targets",
                                "give one target per input")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        """Width of the model output this dataset needs (classes, or regression targets)."""
        if self.task == "classification":
            return self.num_classes
        return 1 if self.y_train.dim() == 1 else int(self.y_train.shape[1])

    @property
    def dataset_id(self) -> str:
        """Stable id from the name, the split seed and the data itself."""
        h = hashlib.sha256()
        h.update(json.dumps({"name": self.name, "seed": self.seed}, sort_keys=True).encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise UserError(f"unknown split {split!r}", "use 'train' or 'test'")

    def descriptor(self) -> dict[str, Any]:
        """What the `datasets` table stores about this dataset."""
        return {
            "dataset_id": self.dataset_id,
            "name": self.name,
            "task": self.task,
            "num_classes": int(self.num_classes),
            "input_shape": json.dumps(list(self.input_shape)),  # JSON text, as the datasets table stores it
            "output_dim": int(self.output_dim),
            "n_train": int(len(self.x_train)),
            "n_test": int(len(self.x_test)),
            "seed": int(self.seed),
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
        }

    def to(self, device: str | torch.device) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.task, self.num_classes, self.seed, dict(self.meta))
