"""Bring your own model, part 2: live traffic of a tabular classifier with string columns (churn) and
of a regressor (diabetes) back into training data and into live drift, read by the version's spec.

The versions ``tf_offline_retrain`` registered (``trained``) are served by a tf-serving-local of
this module with request logging (sampling 1.0). Clients send the test rows, with one column
drifted, as they would: REST Predict with named inputs (strings included), REST Classify /
Regress with ``tf.Example`` rows, gRPC Predict with named tensors, each with its request id. Labels
arrive later as JSON lines (class names or ids for the classifier, numbers for the regressor).
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from serving._proc import ServerProcess

from .conftest import EXAMPLES, ROOT, states

pytestmark = pytest.mark.e2e

# example -> (its training data, the column clients' traffic has drifted, how)
TRAFFIC = {"churn": ("examples/churn.parquet", "monthly_charges", lambda v: v * 1.8),
           "diabetes": ("examples/diabetes", "bmi", lambda v: v + 2 * np.std(v))}
NAMES = [n for n in TRAFFIC if n in EXAMPLES]


def _plain(value):
    return value.decode() if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value


def _rest(port: int, model: str, verb: str, body: dict, request_id: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:{verb}", method="POST",
                                 data=json.dumps(body).encode(), headers={"X-Request-Id": request_id})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _grpc_predict(port: int, model: str, spec, rows: dict, request_id: str) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfmlops.serving.tensors import make_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, (dtype, _) in spec.inputs.items():
        values = rows[name] if dtype != "string" else np.asarray([str(_plain(v)).encode() for v in rows[name]], object)
        make_tensor_proto(np.asarray(values), request.inputs[name])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30, metadata=[("x-request-id", request_id)])


@pytest.fixture(scope="module")
def traffic(trained, mlflow_server, serving_server, tmp_path_factory):
    """Each example's champion served with request logging; its test rows (drifted) sent by
    clients, 1/3 as one-row REST Predicts, 1/3 as REST Classify/Regress of 5 examples, the rest as
    gRPC Predicts of 5 rows. Returns ``{name: (spec, log prefix, {request id: (rows, labels)})}``."""
    from tfmlops import model_data, modelspec, registry

    tmp = tmp_path_factory.mktemp("byom-feedback")
    entries, prepared = [], {}
    for name in NAMES:
        uri, column, fn = TRAFFIC[name]
        spec = modelspec.read_spec(f"tfmlops_examples.{name}")
        test = model_data.load(spec, modelspec.import_module(spec.module), uri)[0].test
        features = dict(test.features)
        features[column] = fn(features[column].astype(np.float64)).astype(np.float32)
        version = registry.get_version(mlflow_server, f"byom_{name}", registry.CHAMPION).version
        prefix = tmp / "logs" / f"byom_{name}" / "requests"
        entries.append('config { name: "byom_%s" base_path: "%s" model_platform: "tensorflow" '
                       'model_version_policy { specific { versions: %s } } '
                       'logging_config { log_collector_config { filename_prefix: "%s" } '
                       'sampling_config { sampling_rate: 1.0 } } }'
                       % (name, serving_server["models_root"] / f"byom_{name}", version, prefix))
        prepared[name] = (spec, prefix, features, test.labels)
    (tmp / "models.config").write_text("model_config_list { %s }\n" % " ".join(entries))
    sent = {}
    with ServerProcess.running([f"--model_config_file={tmp / 'models.config'}"]) as srv:
        for name, (spec, prefix, features, labels) in prepared.items():
            model, n = f"byom_{name}", len(labels)
            rows = [{k: _plain(v[i]) for k, v in features.items()} for i in range(n)]
            requests, third = {}, n // 3
            for i in range(third):
                _rest(srv.rest_port, model, "predict", {"instances": rows[i:i + 1]}, f"{name}-p{i}")
                requests[f"{name}-p{i}"] = [i]
            verb = "regress" if spec.task == "regression" else "classify"
            signature = "regression" if verb == "regress" else "classification"
            for i in range(third, 2 * third, 5):
                pick = list(range(i, min(i + 5, 2 * third)))
                got = _rest(srv.rest_port, model, verb, {"signature_name": signature,
                                                         "examples": [rows[j] for j in pick]}, f"{name}-e{i}")
                assert len(got["results"]) == len(pick), got
                requests[f"{name}-e{i}"] = pick
            for i in range(2 * third, n, 5):
                pick = list(range(i, min(i + 5, n)))
                _grpc_predict(srv.grpc_port, model, spec, {k: v[pick] for k, v in features.items()}, f"{name}-g{i}")
                requests[f"{name}-g{i}"] = pick
            sent[name] = (spec, prefix, {rid: ({k: v[idx] for k, v in features.items()}, labels[idx])
                                         for rid, idx in requests.items()})
    return sent  # the server stopped: every log file is complete


def _label_lines(spec, requests: dict) -> list[dict]:
    """The true labels, written as a labelling tool would: a classifier's every other request by
    class name, a regressor's as numbers; plus one label for a request never logged."""
    lines = []
    for n, (rid, (_, y)) in enumerate(requests.items()):
        values = [float(v) for v in y] if spec.task == "regression" else [
            spec.class_names[int(v)] if n % 2 else int(v) for v in y]
        lines.append({"request_id": rid, "labels": values})
    return lines + [{"request_id": "not-logged-yet", "labels": [1]}]


@pytest.mark.parametrize("name", NAMES)
def test_feedback_join_writes_what_clients_sent_in_the_modules_layout(name, traffic, connections, mlflow_server,
                                                                      tmp_path):
    """tf_feedback_join with the model's name: Predict (REST rows, gRPC tensors) and Classify /
    Regress records all read by the spec; the partition holds exactly the sent rows (strings as sent)
    with their labels, and ingestion by the champion's module finds it valid."""
    from airflow.dag_processing.dagbag import DagBag

    from tfmlops import model_data, modelspec
    from tfmlops.steps import online

    spec, prefix, requests = traffic[name]
    root = tmp_path / "partitions"
    labels_dir = root / "live" / "feedback" / "labels"
    labels_dir.mkdir(parents=True)
    (labels_dir / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _label_lines(spec, requests)))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "tf_feedback_join.py")).get_dag("tf_feedback_join")
    conf = {"model_name": f"byom_{name}", "root": str(root), "dataset": "live", "log_prefix": str(prefix),
            "min_rows": 20}
    run = dag.test(run_conf=conf)
    assert states(run) == {"join": "success"}, states(run)

    ingested = online.ingest(str(root), "live", None, mlflow_server, f"byom_{name}")
    (valid,) = ingested["valid"]
    assert not ingested["quarantined"]
    data, _ = model_data.load(spec, modelspec.import_module(spec.module), valid["uri"])
    parts = [s for s in (data.train, data.validation, data.test) if len(s)]
    got = {k: np.concatenate([s.features[k] for s in parts]) for k in spec.inputs}
    got_y = np.concatenate([s.labels for s in parts])
    n_sent = sum(len(y) for _, y in requests.values())
    assert len(got_y) == n_sent and abs(len(data.test) - 0.3 * n_sent) <= 1

    def key(features, i):
        return tuple(str(_plain(features[k][i])) if spec.inputs[k][0] == "string" else
                     round(float(features[k][i]), 4) for k in sorted(spec.inputs))

    expected = {}
    for rows, y in requests.values():
        for i in range(len(y)):
            expected[key(rows, i)] = float(y[i])
    assert sorted(expected.get(key(got, i), np.nan) for i in range(len(got_y))) == pytest.approx(
        sorted(float(v) for v in got_y), abs=1e-4)
    # the labels are used: a second run has nothing left to join but the one still waiting
    again = dag.test(run_conf=conf)
    assert states(again) == {"join": "skipped"}
    assert [json.loads(s)["request_id"] for s in (labels_dir / "a.jsonl").read_text().splitlines()] == [
        "not-logged-yet"]


@pytest.mark.parametrize("name", NAMES)
def test_live_drift_from_request_logs_names_the_drifted_column(name, traffic, mlflow_server, serving_server):
    """check_live_drift reads the logged requests by the champion's spec (every record kind) and
    measures each named input against the version's training profile."""
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.monitoring import Thresholds
    from tfmlops.steps.monitor import check_live_drift

    spec, prefix, requests = traffic[name]
    column = TRAFFIC[name][1]
    endpoint = Endpoint("local", "127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"],
                        str(serving_server["models_root"]), model_config_file=str(serving_server["config_file"]))
    try:
        result = check_live_drift(mlflow_server, f"byom_{name}", endpoint, str(prefix), Thresholds(), min_rows=50)
    finally:
        endpoint.close()
    assert result["rows"] == sum(len(y) for _, y in requests.values()), result
    assert result["retrain"] and result["drift"]["input_psi_worst"] == column, result
    assert result["drift"]["top"][0][0] == column and f"PSI of {column}" in result["breaches"][0], result
