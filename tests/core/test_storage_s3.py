"""Datasets on S3, through boto3 against a real S3 protocol server (moto_server)."""

import io

import numpy as np
import pytest

from tfmlops import data, storage


def test_npz_dataset_from_s3(s3_endpoint):
    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="datasets")
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.random((30, 784)), y_train=rng.integers(0, 10, 30),
             x_test=rng.random((10, 784)), y_test=rng.integers(0, 10, 10))
    storage.write_bytes("s3://datasets/mnist/part.npz", buffer.getvalue(), s3_client=s3)
    clean, report = data.load_validated("s3://datasets/mnist/part.npz", 784, 10, s3_client=s3)
    assert report["train_rows"] == 30 and clean.x_test.dtype == np.float32


def test_missing_s3_object_is_a_clear_error(s3_endpoint):
    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="empty")
    with pytest.raises(data.DatasetError, match="s3://empty/nothing.npz: dataset file not found"):
        data.load_dataset("s3://empty/nothing.npz", s3_client=s3)
    with pytest.raises(data.DatasetError, match="dataset file not found"):
        data.load_dataset("s3://no-such-bucket/x.npz", s3_client=s3)
