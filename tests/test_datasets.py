import numpy as np
import pandas as pd
import pytest
import torch

from wsl import UserError
from zoo import load_dataset, pair_tasks
from zoo.datasets import from_table


@pytest.mark.parametrize("name,shape,classes", [
    ("digits", (1, 8, 8), 10),
    ("mnist1d", (1, 40), 10),
    ("digits-pair:3-5", (1, 8, 8), 2),
    ("mnist1d-pair:0-9", (1, 40), 2),
    ("digits-perm:4", (1, 8, 8), 10),
    ("digits-noise:0.2", (1, 8, 8), 10),
    ("digits-shift:1", (1, 8, 8), 10),
    ("digits-rot:20", (1, 8, 8), 10),
    ("mnist1d-perm:1", (1, 40), 10),
    ("mnist1d-noise:0.1", (1, 40), 10),
    ("mnist1d-shift:4", (1, 40), 10),
])
def test_classification_datasets_have_right_shapes_and_are_deterministic(name, shape, classes):
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    assert a.input_shape == shape and a.num_classes == classes and a.task == "classification"
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert int(a.y_train.max()) < classes and int(a.y_test.min()) >= 0
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.dataset_id == b.dataset_id
    c = load_dataset(name, seed=4)
    assert c.dataset_id != a.dataset_id and not torch.equal(c.y_train, a.y_train)
    assert len(a.x_train) + len(a.x_test) == len(c.x_train) + len(c.x_test)


def test_sizes_match_the_sources():
    d, m = load_dataset("digits"), load_dataset("mnist1d")
    assert len(d.x_train) + len(d.x_test) == 1797
    assert len(m.x_train) + len(m.x_test) == 5000


def test_pair_tasks_are_45_binary_tasks():
    names = pair_tasks("digits")
    assert len(names) == 45 == len(set(names))
    ds = load_dataset("digits-pair:2-7")
    assert set(ds.y_train.unique().tolist()) == {0, 1}
    assert ds.meta["classes"] == [2, 7]
    full = load_dataset("digits")
    n = int(((full.y_train == 2) | (full.y_train == 7)).sum() + ((full.y_test == 2) | (full.y_test == 7)).sum())
    assert len(ds.x_train) + len(ds.x_test) == n


def test_transforms_change_inputs_or_labels_only():
    base, perm = load_dataset("digits"), load_dataset("digits-perm:1")
    assert torch.equal(base.x_train, perm.x_train) and not torch.equal(base.y_train, perm.y_train)
    p = torch.tensor(perm.meta["permutation"])
    assert torch.equal(p[base.y_train], perm.y_train)
    noisy = load_dataset("digits-noise:0.5")
    assert torch.equal(noisy.y_train, base.y_train) and not torch.equal(noisy.x_train, base.x_train)
    shifted = load_dataset("digits-shift:2")
    assert torch.equal(torch.roll(base.x_train, (2, 2), dims=(-2, -1)), shifted.x_train)


def test_sciml_tasks_are_regression_from_formulas():
    ds = load_dataset("sciml:sine:freq=1,amp=2")
    assert ds.task == "regression" and ds.output_dim == 1 and ds.input_shape == (1,)
    x, y = ds.x_train[:, 0].double(), ds.y_train[:, 0].double()
    assert torch.allclose(y, 2 * torch.sin(2 * torch.pi * x), atol=1e-5)
    two = load_dataset("sciml:gauss2d:sigma=0.5")
    assert two.input_shape == (2,) and two.y_train.max() <= 1.0


@pytest.mark.parametrize("name,match", [
    ("imagenet", "unknown dataset 'imagenet'"),
    ("digits-pair:3-3", "out of range"),
    ("digits-pair:3-12", "out of range"),
    ("digits-pair:x", "not of the form A-B"),
    ("digits-perm:abc", "integer"),
    ("digits-warp:1", "unknown dataset"),
    ("mnist1d-rot:10", "not an image dataset"),
    ("sciml:bessel", "unknown sciml family"),
    ("sciml:sine:freq", "k=v"),
    ("parquet:/nonexistent/file.parquet", "does not exist"),
    ("", "empty"),
])
def test_bad_dataset_names_are_user_errors(name, match):
    with pytest.raises(UserError, match=match):
        load_dataset(name)


def test_hf_adapter_on_in_memory_image_dataset():
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(6, 6), dtype=np.uint8) for _ in range(40)]
    table = datasets.Dataset.from_dict({"image": [i.tolist() for i in imgs], "label": [i % 3 for i in range(40)]})
    ds = from_table("mem", table, seed=0)
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 3
    assert float(ds.x_train.max()) <= 1.0 and len(ds.x_train) + len(ds.x_test) == 40


def test_parquet_adapter_on_local_tabular_file(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60), "species": ["x", "y", "z"] * 20})
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(UserError, match="no label column"):
        load_dataset(f"parquet:{tmp_path / 't.parquet'}")
    df.rename(columns={"species": "label"}).to_parquet(tmp_path / "t2.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 't2.parquet'}", seed=2)
    assert ds.input_shape == (2,) and ds.num_classes == 3 and ds.meta["classes"] == ["x", "y", "z"]
    assert ds.dataset_id == load_dataset(f"parquet:{tmp_path / 't2.parquet'}", seed=2).dataset_id


def test_unreachable_hf_dataset_is_a_user_error(monkeypatch):
    with pytest.raises(UserError, match="Hugging Face dataset 'no-such-org/no-such-dataset' cannot be loaded"):
        load_dataset("hf:no-such-org/no-such-dataset")
