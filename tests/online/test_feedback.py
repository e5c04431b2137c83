"""Feedback loop: logged live requests + labels that arrive later → a labeled partition.

The request logs come from a real tf-serving-local with a ``logging_config`` (sampling rate 1.0);
the labels are the true MNIST labels of the rows sent, written the way a labelling tool would.
"""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest

from serving._proc import ServerProcess  # tests/ is on sys.path: tests/serving is a package


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tfmlops.export import export_saved_model
    from tfmlops.models import ModelConfig, build_model

    tmp = tmp_path_factory.mktemp("feedback")
    model = build_model(ModelConfig(n_features=784, num_classes=10))
    rows = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    export_saved_model(model, tmp / "export", rows, rows)
    os.makedirs(tmp / "models" / "mnist")
    os.replace(tmp / "export" / "saved_model", tmp / "models" / "mnist" / "1")
    prefix = tmp / "logs" / "mnist" / "requests"
    (tmp / "models.config").write_text(
        'model_config_list { config { name: "mnist" base_path: "%s" model_platform: "tensorflow" '
        'logging_config { log_collector_config { filename_prefix: "%s" } sampling_config { sampling_rate: 1.0 } } '
        '} }\n' % (tmp / "models" / "mnist", prefix))
    srv = ServerProcess([f"--model_config_file={tmp / 'models.config'}"])
    srv.wait_ready()
    yield srv, tmp, prefix
    srv.terminate()


def _predict(port: int, rows: np.ndarray, request_id: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/mnist:predict", method="POST",
                                 data=json.dumps({"instances": rows.tolist()}).encode(),
                                 headers={"X-Request-Id": request_id})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def test_logged_requests_and_late_labels_become_a_partition(served):
    from tfmlops import data, feedback, model_data, modelspec, partitions

    srv, tmp, prefix = served
    mnist = data.load_mnist()
    x = (mnist.x_test[:80].reshape(80, 784) / 255.0).astype(np.float32)
    y = mnist.y_test[:80].astype(int)
    for i in range(60):  # one row per request
        _predict(srv.rest_port, x[i:i + 1], f"r{i}")
    _predict(srv.rest_port, x[60:80], "batch")  # 20 rows in one request
    assert srv.terminate() == 0  # closes the log file
    root = str(tmp / "partitions")
    labels_dir = tmp / "partitions" / "mnist" / "feedback" / "labels"
    labels_dir.mkdir(parents=True)
    lines = [{"request_id": f"r{i}", "label": int(y[i])} for i in range(1, 55)]
    lines.insert(0, {"request_id": "r0", "label": str(y[0])})  # a class name: "7" of CLASS_NAMES
    lines += [{"request_id": "batch", "labels": [int(v) for v in y[60:80]]},
              {"request_id": "r55", "labels": [1, 2]},          # wrong row count: refused
              {"request_id": "not-logged-yet", "label": 4}]      # waits for its request
    (labels_dir / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines) + "{broken\n")

    summary = feedback.join_feedback(str(prefix), root, "mnist", min_rows=50)
    assert summary["logged_requests"] == 61 and summary["joined_requests"] == 56 and summary["rows"] == 75
    assert summary["missing"] == 1 and len(summary["refused"]) == 2 and summary["skipped_records"] == 0
    assert any("2 labels for 1 rows" in r for r in summary["refused"])
    # the partition is in the default module's Parquet layout, read by its module like training data
    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    uri = summary["uri"]
    assert uri.endswith(f"{summary['partition_id']}/data.parquet")
    got, _ = model_data.load(spec, modelspec.import_module(spec.module), uri)
    assert len(got.test) == 22 and len(got.train) + len(got.validation) == 53
    rows = np.concatenate([s.features["pixels"] for s in (got.train, got.validation, got.test)])
    labels = np.concatenate([s.labels for s in (got.train, got.validation, got.test)])
    assert rows.dtype == np.float32 and rows.shape == (75, 784)
    # every row is exactly what was sent, with its true label
    sent = {x[i].tobytes(): int(y[i]) for i in list(range(55)) + list(range(60, 80))}
    assert sorted(sent.get(r.tobytes(), -1) for r in rows) == sorted(labels.tolist())
    # the partition passes the checks of ingestion by the default module
    ingested = partitions.ingest(root, "mnist", validate=partitions.module_validate(
        spec, modelspec.import_module(spec.module)))
    assert summary["partition_id"] in json.dumps(ingested)
    # only the label still waiting for its request is left; a second run writes nothing new
    assert [json.loads(s)["request_id"] for s in (labels_dir / "a.jsonl").read_text().splitlines()] == [
        "not-logged-yet"]
    again = feedback.join_feedback(str(prefix), root, "mnist", min_rows=50)
    assert again["partition_id"] is None and again["joined_requests"] == 0


@pytest.mark.e2e
def test_feedback_dag_announces_the_partition(served, champion, airflow_db, airflow_connections):
    """``tf_feedback_join`` from its form, the logs read by the registered champion's spec: the
    joined partition is an event of ``tfmlops_new_partitions`` (which schedules
    ``tf_online_update``); nothing to join → skipped."""
    import pyarrow.parquet as pq

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from tfmlops import data

    from .conftest import MODEL, load_dag, states

    _, tmp, prefix = served
    root = tmp / "partitions"
    y = data.load_mnist().y_test
    (root / "mnist" / "feedback" / "labels" / "b.jsonl").write_text(
        "".join(json.dumps({"request_id": f"r{i}", "label": int(y[i])}) + "\n" for i in range(56, 60)))
    conf = {"root": str(root), "dataset": "mnist", "log_prefix": str(prefix), "min_rows": 2, "model_name": MODEL}
    run = load_dag("tf_feedback_join").test(run_conf=conf)
    assert str(run.state) == "success", states(run)
    with create_session() as session:
        events = {e.partition_key: e.extra for e in session.query(AssetEvent)
                  .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "tfmlops_new_partitions")}
    # this run's event (other tests of the session join feedback under their own roots)
    (key, extra), = [(k, v) for k, v in events.items()
                     if (v or {}).get("source") == "feedback" and (v or {}).get("root") == str(root)]
    assert key == f"mnist|{extra['partition_id']}" and extra["root"] == str(root)
    table = pq.read_table(extra["uri"])
    assert table.num_rows == 4 and set(table.column_names) == {"pixels", "label", "split"}
    run = load_dag("tf_feedback_join").test(run_conf=conf)  # the labels are used: nothing left
    assert states(run) == {"join": "skipped"}
