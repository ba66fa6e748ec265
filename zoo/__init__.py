"""What to train and training it: architectures, datasets, specs, the population trainer, landscape metrics."""
from zoo.architectures import build, build_for, config_for
from zoo.datasets import load_dataset, pair_tasks, subset_tasks
from zoo.spec import expand, load_spec
from zoo.train import TrainProgress, TrainSummary, train  # note: `zoo.train` is the function; import the module's other names with `from zoo.train import ...`

__all__ = ["build", "build_for", "config_for", "load_dataset", "pair_tasks", "subset_tasks"]
__all__ += ["load_spec", "expand", "train", "TrainSummary", "TrainProgress"]
