"""The mirror sink's conversion and writing without a router: gRPC Predict, Classify and Regress
frames become the PredictionLogs they are, failed calls are counted and not logged, a resent batch
is taken once, and an ``s3://`` prefix puts each group's files under ``<prefix>/<group>/`` in a
real S3 protocol server (moto)."""

from __future__ import annotations

import json
import struct
import uuid

import numpy as np


def _grpc(message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def _record(method: str, request, response, rid: str, group: str = "stable", status: int = 200,
            grpc_status: str = "") -> bytes:
    from tfmlops.deploy.mirror_sink import pack_frames

    meta = {"protocol": "grpc", "path": f"/tensorflow.serving.PredictionService/{method}", "request_id": rid,
            "server": f"{group}-0", "group": group, "status": status, "grpc_status": grpc_status,
            "latency_ms": 1.5, "time_ms": 1.7e12, "server_addr": "127.0.0.1", "server_port": 1, "rate": 0.5}
    return pack_frames(json.dumps(meta).encode(), _grpc(request), _grpc(response) if response is not None else b"")


def _calls():
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

    from tfmlops.serving.tensors import make_tensor_proto

    pred_req, pred_resp = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    pred_req.model_spec.name = "m"
    make_tensor_proto(np.array([[1.0, 2.0]], np.float32), pred_req.inputs["x"])
    pred_resp.model_spec.name, pred_resp.model_spec.version.value = "m", 7
    make_tensor_proto(np.array([[0.1, 0.9]], np.float32), pred_resp.outputs["y"])
    cls_req, cls_resp = classification_pb2.ClassificationRequest(), classification_pb2.ClassificationResponse()
    cls_req.model_spec.name = "m"
    cls_req.input.example_list.examples.add().features.feature["f"].float_list.value.append(3.0)
    cls_resp.model_spec.name, cls_resp.model_spec.version.value = "m", 7
    cls_resp.result.classifications.add().classes.add(label=b"cat", score=0.75)
    reg_req, reg_resp = regression_pb2.RegressionRequest(), regression_pb2.RegressionResponse()
    reg_req.model_spec.name = "m"
    reg_req.input.example_list.examples.add().features.feature["f"].float_list.value.append(4.0)
    reg_resp.model_spec.name, reg_resp.model_spec.version.value = "m", 7
    reg_resp.result.regressions.add().value = 2.5
    return {"Predict": (pred_req, pred_resp), "Classify": (cls_req, cls_resp), "Regress": (reg_req, reg_resp)}


def _read(paths):
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.servables.warmup import read_tfrecords

    return [prediction_log_pb2.PredictionLog.FromString(r) for p in paths for r in read_tfrecords(str(p))]


def test_grpc_calls_become_their_prediction_logs_and_a_resent_batch_is_taken_once(tmp_path):
    from tfmlops.deploy.mirror_sink import MirrorSink, group_log_prefix
    from tfmlops.feedback import list_request_logs

    sink = MirrorSink(str(tmp_path / "logs"))
    calls = _calls()
    batch = b"".join(_record(m, req, resp, f"id-{m}", group="canary" if m == "Regress" else "stable")
                     for m, (req, resp) in calls.items())
    failed = _record("Predict", calls["Predict"][0], None, "id-failed", grpc_status="3")
    result = sink.add_batch(batch + failed)
    assert (result["records"], result["accepted"], result["rejected"]) == (4, 4, 0), result
    assert not sink.seen_batch("b-1") and sink.seen_batch("b-1")  # the HTTP front end's resend guard
    sink.flush()
    sink.close()
    stats = sink.stats()
    assert (stats["logged"], stats["not_ok"]) == (3, 1), stats
    stable = _read(list_request_logs(group_log_prefix(str(tmp_path / "logs"), "stable")))
    canary = _read(list_request_logs(group_log_prefix(str(tmp_path / "logs"), "canary")))
    assert sorted(p.log_metadata.request_origin for p in stable) == ["id-Classify", "id-Predict"]
    assert [p.log_metadata.request_origin for p in canary] == ["id-Regress"]
    by_id = {p.log_metadata.request_origin: p for p in stable + canary}
    assert by_id["id-Predict"].predict_log.response == calls["Predict"][1]
    assert by_id["id-Predict"].predict_log.request == calls["Predict"][0]
    assert by_id["id-Classify"].classify_log.response == calls["Classify"][1]
    assert by_id["id-Regress"].regress_log.request == calls["Regress"][0]
    for p in by_id.values():  # the answering version, the router's rate and time
        assert p.log_metadata.model_spec.version.value == 7 and p.log_metadata.model_spec.name == "m"
        assert abs(p.log_metadata.sampling_config.sampling_rate - 0.5) < 1e-9
        assert p.log_metadata.timestamp_secs == 1_700_000_000


def test_an_s3_prefix_gets_one_folder_per_group(s3_endpoint, tmp_path):
    from tfmlops.deploy.mirror_sink import MirrorSink

    client = s3_endpoint["client"]()
    bucket = f"mirror-{uuid.uuid4().hex[:8]}"  # the endpoint is shared by the session
    client.create_bucket(Bucket=bucket)
    sink = MirrorSink(f"s3://{bucket}/router", s3_client=client, spool_dir=str(tmp_path / "spool"))
    req, resp = _calls()["Predict"]
    sink.add_batch(b"".join(_record("Predict", req, resp, f"id-{g}-{i}", group=g)
                            for g in ("stable", "canary") for i in range(3)))
    sink.flush()
    sink.close()  # closes the files: they are uploaded and leave the spool
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert [k.rsplit("/", 1)[0] for k in keys] == ["router/canary", "router/stable"], keys
    assert all(k.split("/")[-1].startswith("requests-") and k.endswith(".tfrecord") for k in keys)
    got = []
    for key in keys:
        local = tmp_path / key.replace("/", "_")
        client.download_file(bucket, key, str(local))
        got += [p.log_metadata.request_origin for p in _read([local])]
    assert sorted(got) == sorted(f"id-{g}-{i}" for g in ("stable", "canary") for i in range(3))
    assert not list((tmp_path / "spool").rglob("*.tfrecord*"))


def test_a_replica_whose_metadata_cannot_be_read_costs_one_look_up_per_ttl():
    import pytest

    from tfmlops.deploy.mirror_sink import BadRecord, SignatureCache

    cache = SignatureCache(ttl_s=60, timeout_s=1)
    calls = []
    real = cache._fetch
    cache._fetch = lambda *a: calls.append(a) or real(*a)
    for _ in range(3):
        with pytest.raises(BadRecord, match="metadata of m from http://127.0.0.1:1/"):
            cache.get("127.0.0.1", 1, "m", None, None)
    assert len(calls) == 1
    with pytest.raises(BadRecord, match="unusable"):
        cache.get("bad host!", 1, "m", None, None)
