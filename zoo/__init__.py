"""What to train and training it: architectures, datasets, specs, the population trainer, landscape metrics."""
from zoo.architectures import build, build_for, config_for
from zoo.datasets import load_dataset, pair_tasks

__all__ = ["build", "build_for", "config_for", "load_dataset", "pair_tasks"]
