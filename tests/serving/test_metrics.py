"""TF Serving's Prometheus metrics and request logging in tf-serving-local.

* The metric definitions equal TF Serving's (``upstream/testdata/tf_serving_metrics.json``, copied
  from its sources): names, kinds, labels, buckets, and nothing else is exported.
* A real server with ``--monitoring_config_file`` and a ``logging_config``: known REST and gRPC
  traffic (good, malformed, unknown model) moves each counter and histogram by exactly what was
  sent; the warmup records of a version are counted; every sampled request is a
  ``tensorflow.serving.PredictionLog`` with the request, the answer and the client's request id;
  after SIGTERM every log file is complete; a 20 % sampling rate logs 20 % of the requests.
"""

from __future__ import annotations

import glob
import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from ._proc import ServerProcess
from .conftest import model_entry

UPSTREAM = json.loads((Path(__file__).parent / "upstream" / "testdata" / "tf_serving_metrics.json").read_text())
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_page(text: str) -> tuple[dict, dict]:
    """``({(name, frozenset(labels)): value}, {name: type})`` of a Prometheus text page."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metric_definitions_are_tf_servings():
    from tfmlops.serving import batching  # noqa: F401 - each module defines its metrics on import
    from tfmlops.serving.core import server_request_logger  # noqa: F401
    from tfmlops.serving.servables import util, warmup  # noqa: F401
    from tfmlops.serving.util import monitoring

    ours = {m.name: m for m in monitoring.REGISTRY.metrics()}
    assert sorted(ours) == sorted(m["name"] for m in UPSTREAM["metrics"])
    for spec in UPSTREAM["metrics"]:
        m = ours[spec["name"]]
        assert m.kind == spec["kind"], spec["name"]
        assert list(m.labels) == spec["labels"], spec["name"]
        if spec["kind"] == "histogram":
            assert m.bucket_limits == monitoring.exponential_buckets(*spec["buckets"]), spec["name"]


@pytest.fixture(scope="module")
def logged_server(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    monitoring_cfg = tmp / "monitoring.config"
    monitoring_cfg.write_text('prometheus_config { enable: true path: "/metrics/tf" }\n')
    logs = tmp / "logs"
    logging = ('logging_config { log_collector_config { type: "tfrecord" filename_prefix: "%s" } '
               'sampling_config { sampling_rate: %s } }')
    cfg = tmp / "models.config"
    cfg.write_text("model_config_list {\n"
                   + model_entry("mlp", store.path("mlp"), logging % (logs / "mlp" / "requests", 1.0))
                   + model_entry("life", store.path("life"), logging % (logs / "life" / "requests", 0.2))
                   + model_entry("warm", store.path("warm"))
                   + "}\n")
    srv = ServerProcess([f"--model_config_file={cfg}", f"--monitoring_config_file={monitoring_cfg}",
                         "--request_log_max_file_bytes=20000", "--request_log_max_file_age_s=600"])
    srv.wait_ready()
    srv.logs = logs
    yield srv
    srv.terminate()


def _scrape(srv) -> tuple[dict, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.rest_port}/metrics/tf", timeout=10) as r:
        assert r.headers["Content-Type"] == "text/plain"
        return parse_page(r.read().decode())


def _rest(srv, model: str, body: dict, request_id: str | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.rest_port}/v1/models/{model}:predict",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"X-Request-Id": request_id} if request_id else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sampled_share_matches_the_rate(logged_server, reference):
    """``life`` logs at 20 %: over 1,000 requests the logged share is 20 % ± 6 pp (4.7 sigma)."""
    srv = logged_server
    before, _ = _scrape(srv)
    body = {"instances": reference["x"][:1].tolist()}
    for i in range(1000):
        assert _rest(srv, "life", body, request_id=f"life-{i}") == 200
    after, _ = _scrape(srv)
    logged = (value(after, ":tensorflow:serving:request_log_count", model_name="life", status_code="OK")
              - value(before, ":tensorflow:serving:request_log_count", model_name="life", status_code="OK"))
    assert 140 <= logged <= 260, logged


def test_counters_move_with_traffic_and_requests_are_logged(logged_server, reference):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfmlops.serving.tensors import make_ndarray, make_tensor_proto

    srv = logged_server
    before, types = _scrape(srv)
    assert types[":tensorflow:serving:request_count"] == "counter"
    assert types[":tensorflow:serving:request_latency"] == "histogram"
    # the warmup file of "warm" (two PredictionLog records) was replayed while it loaded
    warm_path = [dict(k[1])["model_path"] for k in before
                 if k[0] == ":tensorflow:serving:model_warmup_records_read"]
    assert len(warm_path) == 1 and warm_path[0].endswith("/warm/1")
    assert value(before, ":tensorflow:serving:model_warmup_records_read", model_path=warm_path[0], status="OK") == 2
    assert value(before, ":tensorflow:serving:model_warmup_latency_count", model_path=warm_path[0], status="OK") == 1

    x = reference["x"]
    for i in range(5):
        assert _rest(srv, "mlp", {"instances": x.tolist()}, request_id=f"rest-{i}") == 200
    assert _rest(srv, "mlp", {"instances": [["not", "numbers"]]}) == 400
    assert _rest(srv, "mlp", {"inputs": {"nope": [1.0]}}) == 400
    assert _rest(srv, "missing_model", {"instances": x.tolist()}) == 404
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(3):
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "mlp"
            make_tensor_proto(x, req.inputs["x"])
            stub.Predict(req, timeout=30, metadata=[("x-request-id", f"grpc-{i}")])
    after, _ = _scrape(srv)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(":tensorflow:serving:request_count", model_name="mlp", status="OK") == 8
    assert delta(":tensorflow:serving:request_count", model_name="mlp", status="INVALID_ARGUMENT") == 2
    assert delta(":tensorflow:serving:request_count", model_name="missing_model", status="NOT_FOUND") == 1
    assert delta(":tensorflow:serving:request_latency_count", model_name="mlp", API="predict", entrypoint="REST") == 5
    assert delta(":tensorflow:serving:request_latency_count", model_name="mlp", API="Predict", entrypoint="GRPC") == 3
    assert delta(":tensorflow:serving:runtime_latency_count", model_name="mlp", API="Predict", runtime="TF1") == 8
    assert delta(":tensorflow:serving:request_log_count", model_name="mlp", status_code="OK") == 8
    # a histogram's buckets are cumulative and end in +Inf == _count; the sum is in microseconds
    labels = {"model_name": "mlp", "API": "predict", "entrypoint": "REST"}
    buckets = sorted(((float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"])), v)
                     for k, v in after.items() if k[0] == ":tensorflow:serving:request_latency_bucket"
                     and {a: b for a, b in k[1] if a != "le"} == labels)
    assert len(buckets) == 34 and buckets[-1][1] == value(after, ":tensorflow:serving:request_latency_count", **labels)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    mean_us = value(after, ":tensorflow:serving:request_latency_sum", **labels) / buckets[-1][1]
    assert 10 < mean_us < 30e6

    # SIGTERM: every log file is closed and complete; the 8 answered requests are all there
    assert srv.terminate() == 0
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.servables.warmup import read_tfrecords

    assert not glob.glob(str(srv.logs / "**" / "*.partial"), recursive=True)
    files = sorted(glob.glob(str(srv.logs / "mlp" / "requests-*.tfrecord")))
    assert files
    logs = []
    for f in files:
        for rec in read_tfrecords(f):
            plog = prediction_log_pb2.PredictionLog()
            plog.ParseFromString(rec)
            logs.append(plog)
    ids = sorted(p.log_metadata.request_origin for p in logs)
    assert ids == sorted([f"rest-{i}" for i in range(5)] + [f"grpc-{i}" for i in range(3)])
    for p in logs:
        assert p.WhichOneof("log_type") == "predict_log"
        assert p.log_metadata.model_spec.name == "mlp" and p.log_metadata.model_spec.version.value == 1
        assert p.log_metadata.sampling_config.sampling_rate == 1.0
        assert list(p.log_metadata.saved_model_tags) == ["serve"]
        np.testing.assert_allclose(make_ndarray(p.predict_log.request.inputs["x"], "x"), x)
        np.testing.assert_allclose(make_ndarray(p.predict_log.response.outputs["y"], "y"), reference["mlp_a"],
                                   rtol=1e-5)


def test_request_logs_go_to_s3_and_a_failed_upload_is_retried(s3_endpoint, tmp_path):
    """An ``s3://`` filename_prefix: closed files are uploaded (a real S3 protocol server); while the
    bucket cannot be written they wait in the local spool, and go up at the next rotation."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.core.log_collector import TFRecordLogCollector
    from tfmlops.serving.servables.warmup import read_tfrecords

    client = s3_endpoint["client"]()  # the endpoint is shared by the session: a bucket no other test uses
    bucket = f"request-logs-{uuid.uuid4().hex[:8]}"
    collector = TFRecordLogCollector(f"s3://{bucket}/mnist/requests", max_file_bytes=2000, s3_client=client,
                                     spool_dir=str(tmp_path / "spool"))
    sent = []
    for i in range(30):  # no bucket yet: every upload fails, the files stay in the spool
        plog = prediction_log_pb2.PredictionLog()
        plog.log_metadata.request_origin = f"id-{i}"
        plog.predict_log.request.model_spec.name = "mnist" + "x" * 200
        collector.collect_message(plog)
        sent.append(f"id-{i}")
    spooled = sorted((tmp_path / "spool").rglob("*.tfrecord"))
    assert len(spooled) >= 2  # nothing could be uploaded
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    client.create_bucket(Bucket=bucket)
    collector.close()
    assert not list((tmp_path / "spool").rglob("*.tfrecord*"))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("mnist/requests-") and k.endswith(".tfrecord") for k in keys)
    got = []
    for key in keys:
        local = tmp_path / key.replace("/", "_")
        client.download_file(bucket, key, str(local))
        got += [prediction_log_pb2.PredictionLog.FromString(r).log_metadata.request_origin
                for r in read_tfrecords(str(local))]
    assert sorted(got) == sorted(sent)
