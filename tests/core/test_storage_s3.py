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


def _same(a, b) -> None:
    for split in ("train", "validation", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert sorted(x.features) == sorted(y.features)
        for k in x.features:
            np.testing.assert_array_equal(x.features[k], y.features[k])
        np.testing.assert_array_equal(x.labels, y.labels)


def test_model_modules_default_loaders_read_s3_as_local(s3_endpoint):
    """The default loaders of a model module on ``s3://``: the tabular example's Parquet file (string
    and numeric columns) and the regression example's TFRecord folder give the arrays the local
    files give, with the same fingerprint; a corrupt shard is named by its S3 key."""
    from tfmlops import model_data, modelspec

    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="byom")
    examples = model_data.data_dir() / "examples"
    storage.write_bytes("s3://byom/tables/churn.parquet", (examples / "churn.parquet").read_bytes(), s3_client=s3)
    for f in sorted((examples / "diabetes").iterdir()):
        storage.write_bytes(f"s3://byom/diabetes/{f.name}", f.read_bytes(), s3_client=s3)

    for name, local, remote in [("churn", "examples/churn.parquet", "s3://byom/tables/churn.parquet"),
                                ("diabetes", "examples/diabetes", "s3://byom/diabetes/"),
                                ("diabetes", "examples/diabetes", "s3://byom/diabetes/{split}-*.tfrecord")]:
        spec = modelspec.read_spec(f"tfmlops_examples.{name}")
        module = modelspec.import_module(spec.module)
        want, want_report = model_data.load(spec, module, local)
        got, got_report = model_data.load(spec, module, remote, s3_client=s3)
        _same(got, want)
        assert got_report["fingerprint"] == want_report["fingerprint"] and got_report["source"] == remote

    good = (examples / "diabetes" / "train-00000-of-00001.tfrecord").read_bytes()
    storage.write_bytes("s3://byom/corrupt/train-0.tfrecord", good[:5000] + b"\0" * 64 + good[5064:], s3_client=s3)
    storage.write_bytes("s3://byom/corrupt/test-0.tfrecord", good, s3_client=s3)
    diabetes = modelspec.read_spec("tfmlops_examples.diabetes")
    with pytest.raises(data.DatasetError, match=r"^s3://byom/corrupt/train-0.tfrecord: cannot read tf.Example "
                                                r"records .* near record \d+"):
        model_data.load(diabetes, object(), "s3://byom/corrupt/", s3_client=s3)
