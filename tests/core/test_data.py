"""The dataset loader and every validation error (no Airflow, no TensorFlow)."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from tfmlops import data
from tfmlops.data import DatasetError


def small(n_train=20, n_test=10, n_features=784, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.random((n_train, n_features), dtype=np.float32),
            "y_train": rng.integers(0, 10, n_train),
            "x_test": rng.random((n_test, n_features), dtype=np.float32),
            "y_test": rng.integers(0, 10, n_test)}


def save_npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def test_mnist_loads_with_verified_hashes():
    dataset = data.load_mnist()
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_test.shape == (10000, 28, 28)
    assert np.bincount(dataset.y_train).tolist()[:3] == [5923, 6742, 5958]
    clean, report = data.validate(dataset.sample(0.05), 784, 10)
    assert clean.x_train.dtype == np.float32 and clean.x_train.shape[1] == 784
    assert 0 <= clean.x_train.min() and clean.x_train.max() <= 1
    assert report["train_rows"] == 3000 and report["test_rows"] == 500


def test_mnist_hash_mismatch_names_the_file(tmp_path, monkeypatch):
    for name in data.MNIST_FILES:
        shutil.copy(data.mnist_dir() / f"{name}.gz", tmp_path)
    target = tmp_path / "t10k-labels.idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed
    target.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv("TFMLOPS_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=r"t10k-labels\.idx1-ubyte\.gz: SHA-256 mismatch"):
        data.load_dataset("mnist")


def test_mnist_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="MNIST file is missing"):
        data.load_mnist(tmp_path)


def test_npz_roundtrip_and_fingerprint(tmp_path):
    arrays = small()
    uri = save_npz(tmp_path, **arrays)
    clean, report = data.load_validated(uri, 784, 10)
    np.testing.assert_array_equal(clean.y_test, arrays["y_test"])
    assert report["fingerprint"] == data.validate(data.load_dataset(uri), 784, 10)[1]["fingerprint"]
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10
    assert report["fingerprint"] != data.load_validated(save_npz(tmp_path, **arrays), 784, 10)[1]["fingerprint"]


def test_parquet_dataset(tmp_path):
    arrays = small(n_features=4)
    frame = pd.concat([
        pd.DataFrame(arrays["x_train"], columns=list("abcd")).assign(label=arrays["y_train"], split="train"),
        pd.DataFrame(arrays["x_test"], columns=list("abcd")).assign(label=arrays["y_test"], split="test")])
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    clean, report = data.load_validated(str(path), 4, 10)
    assert (report["train_rows"], report["test_rows"]) == (20, 10)
    np.testing.assert_allclose(clean.x_test, arrays["x_test"])


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(x_train=a["x_train"][:0], y_train=a["y_train"][:0]), "train split is empty"),
    (lambda a: a.update(x_test=a["x_test"][:, :100]), r"x_test rows have shape \(100,\).*expects 784"),
    (lambda a: a["x_train"].__setitem__((3, 5), np.nan), "x_train has NaN or inf values in 1 rows"),
    (lambda a: a["x_test"].__setitem__((0, 0), np.inf), "x_test has NaN or inf values"),
    (lambda a: a.update(y_train=np.full(20, 10)), r"y_train labels span \[10, 10\]; expected \[0, 9\]"),
    (lambda a: a.update(y_test=-np.ones(10, dtype=int)), r"y_test labels span \[-1, -1\]"),
    (lambda a: a.update(y_train=a["y_train"] + 0.5), "labels must be integer class ids"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.complex64)), "expected a real numeric dtype"),
    (lambda a: a.update(y_test=a["y_test"][:5]), "test split has 10 feature rows but 5 labels"),
    (lambda a: a["x_test"].__setitem__(slice(0, 2), a["x_train"][:2]),
     r"2 of 10 test rows \(20.00%\) also appear in train"),
], ids=["empty", "shape", "nan", "inf", "label-high", "label-negative", "label-float", "dtype", "length", "overlap"])
def test_validation_errors_name_file_and_problem(tmp_path, mutate, message):
    arrays = small()
    mutate(arrays)
    uri = save_npz(tmp_path, **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        data.load_validated(uri, 784, 10)
    assert str(err.value).startswith(uri)


def test_string_features_are_rejected(tmp_path):
    arrays = small()
    arrays["x_train"] = np.array([["a"] * 784] * 20)
    with pytest.raises(DatasetError, match="x_train has dtype <U1"):
        data.load_validated(save_npz(tmp_path, **arrays), 784, 10)


def test_overlap_allowed_up_to_threshold(tmp_path):
    arrays = small()
    arrays["x_test"][0] = arrays["x_train"][0]
    _, report = data.load_validated(save_npz(tmp_path, **arrays), 784, 10, max_overlap_fraction=0.1)
    assert report["test_overlap_rows"] == 1


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a readable .npz file"),
    (None, "missing arrays"),
])
def test_bad_npz_files(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, x_train=np.zeros((2, 784)))
    else:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        data.load_dataset(str(path))


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="unsupported dataset format '.csv'"):
        data.load_dataset(str(tmp_path / "x.csv"))
    with pytest.raises(DatasetError, match="dataset file not found"):
        data.load_dataset(str(tmp_path / "missing.npz"))


def test_sample_fraction_bounds():
    dataset = data.Dataset("t", *small().values())
    assert len(dataset.sample(0.5).y_train) == 10
    with pytest.raises(DatasetError, match=r"sample fraction must be in \(0, 1\]"):
        dataset.sample(0)
