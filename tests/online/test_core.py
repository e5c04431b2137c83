"""Partitions, ingestion/quarantine, the ledger, the simulator and the drift/health maths —
without Airflow, TensorFlow or servers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfmlops import monitoring, partitions, simulate
from tfmlops.steps import online


@pytest.fixture(scope="module")
def pool():
    return simulate.pool()


def test_simulator_command_writes_a_valid_partition(tmp_path):
    simulate.main(["--root", str(tmp_path), "--dataset", "ds", "--size", "50", "--drift", "rotation",
                   "--amount", "0.5", "--seed", "3"])
    (pid, uri), = partitions.list_partitions(str(tmp_path), "ds").items()
    assert uri == str(tmp_path / "ds" / "incoming" / pid / "data.npz")
    with np.load(uri) as npz:
        assert npz["x_train"].shape == (35, 28, 28) and npz["x_test"].shape == (15, 28, 28)


def test_drift_kinds(pool):
    x, y = pool
    clean = simulate.make_partition(x, y, 400, seed=1)
    assert np.array_equal(simulate.make_partition(x, y, 400, seed=1)["x_train"], clean["x_train"])
    noisy = simulate.make_partition(x, y, 400, "label_noise", 0.5, seed=1)
    assert 0.35 < np.mean(noisy["y_train"] != clean["y_train"]) < 0.65
    imbalanced = simulate.make_partition(x, y, 400, "imbalance", 0.9, seed=1)
    assert np.mean(imbalanced["y_train"] >= 5) < 0.2 < np.mean(clean["y_train"] >= 5)
    turned = simulate.rotate(x[:1], 90)
    np.testing.assert_array_equal(turned[0], np.rot90(x[0], k=-1))  # turning is about the centre


def test_ingest_quarantines_bad_partition_without_blocking_good_ones(tmp_path, pool):
    x, y = pool
    root = str(tmp_path)
    simulate.write_partition(root, "ds", "p1-good", simulate.make_partition(x, y, 60, seed=1))
    bad = simulate.make_partition(x, y, 60, seed=2)
    bad["y_train"] = bad["y_train"] + 10  # labels out of range
    simulate.write_partition(root, "ds", "p2-bad", bad)
    result = partitions.ingest(root, "ds")
    assert [p["partition_id"] for p in result["valid"]] == ["p1-good"]
    assert [q["partition_id"] for q in result["quarantined"]] == ["p2-bad"]
    assert "labels span" in result["quarantined"][0]["reason"]
    reason = json.loads((tmp_path / "ds" / "quarantine" / "p2-bad" / "reason.json").read_text())
    assert reason["reason"] == result["quarantined"][0]["reason"]
    assert (tmp_path / "ds" / "quarantine" / "p2-bad" / "data.npz").exists()
    assert list(partitions.list_partitions(root, "ds")) == ["p1-good"]
    # the ledger makes consumed partitions a no-op
    partitions.write_ledger(root, "ds", {"partitions": {"p1-good": {"outcome": "registered"}}})
    again = partitions.ingest(root, "ds")
    assert again["valid"] == [] and again["consumed"] == ["p1-good"]
    assert online.update("http://unused", "m", root, "ds", ["p1-good"])["status"] == "noop"


def test_psi_separates_clean_from_drifted(pool):
    """The simulator's drifts, measured as tf_model_monitor does for the MNIST example: its module's
    image moments (DRIFT_STATISTICS) and the class shares (here the labels stand for predictions)."""
    from tfmlops import drift as drift_lib
    from tfmlops import modelspec
    from tfmlops.data import load_mnist

    x, y = pool
    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    module = modelspec.import_module(spec.module)
    mnist = load_mnist()
    ref_x = mnist.x_train[:2000].reshape(2000, -1).astype(np.float32) / 255.0
    reference = drift_lib.build_profile(spec, {"pixels": ref_x}, np.eye(10)[mnist.y_train[:2000].astype(int)], module)

    def psi(drift, amount):
        p = simulate.make_partition(x, y, 300, drift, amount, seed=5)
        rows = np.concatenate([p["x_train"], p["x_test"]]).reshape(300, -1).astype(np.float32) / 255.0
        labels = np.concatenate([p["y_train"], p["y_test"]]).astype(int)
        return drift_lib.measure(reference, {"pixels": rows}, np.eye(10)[labels], module)

    clean = psi("none", 0)
    assert clean["input_psi_max"] < 0.25 and clean["prediction_psi"] < 0.25
    assert psi("rotation", 0.75)["input_psi_max"] > 0.25
    assert psi("noise", 0.3)["input_psi_max"] > 0.25
    assert psi("imbalance", 0.9)["prediction_psi"] > 0.25


def test_health_breaches_name_the_numbers():
    m = {"p50_ms": 3.0, "p95_ms": 9.0, "p99_ms": 700.0, "throughput_rps": 50.0, "error_rate": 0.1, "requests": 10,
         "errors": 1, "last_error": "ServingError: boom"}
    breaches = monitoring.health_breaches({"ep": {2: {"rest": m}}}, monitoring.Thresholds(max_p99_ms=500))
    assert breaches == ["ep version 2 REST: error rate 10.00% > 1.00% (1/10 requests; last: ServingError: boom)",
                        "ep version 2 REST: p99 latency 700.0 ms > 500.0 ms (p50 3.0, p95 9.0, 10 requests)"]
    from tfmlops import drift

    q = drift.quality("multiclass", np.array([0, 0, 1, 1]), np.eye(3)[[0, 1, 1, 1]], 3)
    assert q["accuracy"] == 0.75 and q["per_class"]["recall"] == [0.5, 1.0, 0.0]


def test_s3_partitions_quarantine_and_ledger(s3_endpoint, pool):
    x, y = pool
    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="parts")
    root = "s3://parts/stream"
    simulate.write_partition(root, "ds", "p1", simulate.make_partition(x, y, 40, seed=1), s3_client=s3)
    bad = simulate.make_partition(x, y, 40, seed=2)
    bad["x_test"] = bad["x_test"][:, :10]  # wrong shape
    simulate.write_partition(root, "ds", "p2", bad, s3_client=s3)
    result = partitions.ingest(root, "ds", s3_client=s3)
    assert [p["partition_id"] for p in result["valid"]] == ["p1"]
    assert "the model expects 784 inputs" in result["quarantined"][0]["reason"]
    assert list(partitions.list_partitions(root, "ds", "quarantine", s3_client=s3)) == ["p2"]
    assert json.loads(s3.get_object(Bucket="parts", Key="stream/ds/quarantine/p2/reason.json")["Body"].read())[
        "partition_id"] == "p2"
    assert partitions.read_ledger(root, "ds", s3_client=s3) == {"partitions": {}}
    partitions.write_ledger(root, "ds", {"partitions": {"p1": {}}}, s3_client=s3)
    assert partitions.ingest(root, "ds", s3_client=s3)["consumed"] == ["p1"]


def test_parquet_partitions_are_ingested_like_npz(tmp_path, pool):
    """A partition may be ``data.parquet`` (``label``, ``split``, one column per feature)."""
    import pandas as pd

    x, y = pool
    part = simulate.make_partition(x, y, 40, seed=4)

    def frame(drop=()):
        rows = [(xs.reshape(-1) / 255.0, ys, split) for split in ("train", "test")
                for xs, ys in zip(part[f"x_{split}"], part[f"y_{split}"])]
        df = pd.DataFrame([r[0] for r in rows], columns=[f"px{i}" for i in range(784)])
        df["label"], df["split"] = [r[1] for r in rows], [r[2] for r in rows]
        return df.drop(columns=list(drop))

    for pid, df in (("p1", frame()), ("p2", frame(drop=["label"]))):
        (tmp_path / "ds" / "incoming" / pid).mkdir(parents=True)
        df.to_parquet(tmp_path / "ds" / "incoming" / pid / "data.parquet")
    result = partitions.ingest(str(tmp_path), "ds")
    assert [(p["partition_id"], p["train_rows"], p["test_rows"]) for p in result["valid"]] == [("p1", 28, 12)]
    assert [q["partition_id"] for q in result["quarantined"]] == ["p2"]
    assert "missing columns ['label']" in result["quarantined"][0]["reason"]
    assert (tmp_path / "ds" / "quarantine" / "p2" / "data.parquet").exists()


def test_health_probe_leaves_out_the_first_request_per_api():
    """The first call of a fresh client pays connection set-up and imports (the gRPC client imports
    TensorFlow): it is sent before timing, so it cannot raise p99."""
    import time as _time

    class FirstCallSlow:
        def __init__(self):
            self.calls = {"rest": 0, "grpc": 0}

        def _call(self, api):
            self.calls[api] += 1
            if self.calls[api] == 1:
                _time.sleep(0.3)

        def predict_rest(self, *args, **kwargs):
            self._call("rest")

        def predict_grpc(self, *args, **kwargs):
            self._call("grpc")

    client = FirstCallSlow()
    result = monitoring.probe(client, "m", np.zeros(4, np.float32), requests=10)
    assert client.calls == {"rest": 11, "grpc": 11}
    assert result["rest"]["p99_ms"] < 100 and result["grpc"]["p99_ms"] < 100, result
