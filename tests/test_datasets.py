import numpy as np
import pandas as pd
import pytest
import torch

from wsl import UserError
from zoo import load_dataset, pair_tasks, subset_tasks
from zoo.datasets import check_name, expand_pattern, from_table, subset_classes


@pytest.mark.parametrize("name,shape,classes", [
    ("digits", (1, 8, 8), 10),
    ("mnist1d", (1, 40), 10),
    ("digits-pair:3-5", (1, 8, 8), 2),
    ("mnist1d-pair:0-9", (1, 40), 2),
    ("digits-subset:341", (1, 8, 8), 2),
    ("mnist1d-subset:7", (1, 40), 2),
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
    ("digits-subset:0", r"digits-subset:0 is not a subset code: CODE is a decimal integer in 1\.\.1022"),
    ("digits-subset:1023", r"digits-subset:1023 is out of range: CODE must be in 1\.\.1022"),
    ("mnist1d-subset:4096", r"mnist1d-subset:4096 is out of range"),
    ("digits-subset:-3", "is not a subset code"),
    ("digits-subset:007", "is not a subset code"),
    ("digits-subset:5.0", "is not a subset code"),
    ("digits-subset:1_0", "is not a subset code"),
    ("digits-subset:0x10", "is not a subset code"),
    ("digits-subset:", "needs an argument"),
    ("digits-subset:3-5", "is not a subset code"),
    ("sciml:bessel", "unknown sciml family"),
    ("sciml:sine:freq", "k=v"),
    ("parquet:/nonexistent/file.parquet", "does not exist"),
    ("", "empty"),
])
def test_bad_dataset_names_are_user_errors(name, match):
    with pytest.raises(UserError, match=match):
        check_name(name)  # the same error without building data
    with pytest.raises(UserError, match=match):
        load_dataset(name)


@pytest.mark.parametrize("name", ["digits", "digits-pair:0-9", "digits-subset:1", "digits-subset:1022", "mnist1d-subset:512",
                                  "digits-rot:15", "digits-noise:0.1", "sciml:sine:freq=2,amp=1", "hf:some/dataset"])
def test_check_name_accepts_valid_names(name):
    check_name(name)


def test_subset_labels_follow_the_code_on_all_samples():
    full = load_dataset("digits")
    for code in (1, 5, 341, 512, 1022):
        ds = load_dataset(f"digits-subset:{code}")
        classes = [c for c in range(10) if code & (1 << c)]
        assert ds.meta["code"] == code and ds.meta["classes"] == classes == subset_classes(code)
        assert ds.num_classes == 2 and ds.meta["base"] == "digits" and ds.meta["transform"] == "subset"
        # every sample of the base dataset, same split; label 1 exactly when its digit is in the subset
        assert torch.equal(ds.x_train, full.x_train) and torch.equal(ds.x_test, full.x_test)
        for y, yb in ((ds.y_train, full.y_train), (ds.y_test, full.y_test)):
            assert torch.equal(y, torch.isin(yb, torch.tensor(classes)).long())
    assert subset_classes(5) == [0, 2] and subset_classes(512) == [9] and subset_classes(1022) == list(range(1, 10))


def test_subset_tasks_are_imbalanced_as_their_class_counts_say():
    full = load_dataset("digits")
    y = torch.cat([full.y_train, full.y_test])
    counts = torch.bincount(y, minlength=10)
    for code in (1, 2, 31, 1000):
        ds = load_dataset(f"digits-subset:{code}")
        pos = int(ds.y_train.sum() + ds.y_test.sum())
        assert pos == int(sum(counts[c] for c in subset_classes(code)))
        comp = load_dataset(f"digits-subset:{1023 - code}")  # the complement subset: labels flipped
        assert torch.equal(comp.y_train, 1 - ds.y_train)
    one = load_dataset("digits-subset:1")  # {0}: ~10% positives, a majority-class predictor scores ~90%
    assert 0.08 < float(torch.cat([one.y_train, one.y_test]).float().mean()) < 0.12
    assert float(load_dataset("digits-subset:31").y_train.float().mean()) == pytest.approx(0.5, abs=0.05)


def test_subset_task_listing_and_spec_patterns():
    names = subset_tasks("digits")
    assert len(names) == 1022 == len(set(names)) and names[0] == "digits-subset:1" and names[-1] == "digits-subset:1022"
    assert expand_pattern("digits-subset:*") == names and expand_pattern("mnist1d-subset:*") == subset_tasks("mnist1d")
    assert expand_pattern("digits-pair:*") == pair_tasks("digits") and expand_pattern("digits-subset:3") == ["digits-subset:3"]
    with pytest.raises(UserError, match="unknown base dataset 'cifar'"):
        subset_tasks("cifar")


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
