"""tf-serving-local against hostile clients: each case reproduced on a real server process, which
must answer it with a clear error (never 500, never a crash), keep its memory under a stated
ceiling, and answer a good request right after.

The REST server's framing and timeouts are also exercised on an in-process ``RestServer`` with
short timeouts (same code, seconds instead of minutes).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfmlops.serving.config import parse_config_text
from tfmlops.serving.model_servers.http_server import RestServer

from ._proc import ServerProcess
from .conftest import model_entry

RSS_CEILING_MB = 1500  # the server with its models loaded is ~500-700 MB; a decoded 1e9-float tensor was 3.7 GB
X = np.ones((2, 4), np.float32)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def hostile(store):
    """A server of its own, on a base path of its own (the reload test publishes a version into it)."""
    store.publish(store.path("staging", "mlp_a"), "hostile_mlp", 1)
    cfg = store.path("hostile.config")
    Path(cfg).write_text("model_config_list {" + model_entry("mlp", store.path("hostile_mlp")) + "}\n")
    with ServerProcess.running([f"--model_config_file={cfg}", "--file_system_poll_wait_seconds=1"]) as srv:
        srv.config_path = cfg
        yield srv


@pytest.fixture(scope="module")
def stubs(hostile):
    channel = grpc.insecure_channel(f"127.0.0.1:{hostile.grpc_port}",
                                    options=[("grpc.max_send_message_length", 2**31 - 1)])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def assert_still_serving(srv, stubs=None):
    """A good request is answered after the hostile one, and the server is within its memory."""
    assert srv.proc.poll() is None, srv.log[-3000:]
    got = requests.post(f"http://127.0.0.1:{srv.rest_port}/v1/models/mlp:predict",
                        json={"instances": X.tolist()}, timeout=30)
    assert got.status_code == 200 and len(got.json()["predictions"]) == 2, got.text
    assert rss_mb(srv.proc.pid) < RSS_CEILING_MB


def predict_request(proto: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mlp"
    req.inputs["x"].CopyFrom(proto)
    return req


# ------------------------------------------------------------------------------------ gRPC
def test_tiny_message_declaring_a_huge_tensor_is_refused_before_allocation(hostile, stubs):
    pred, _ = stubs
    proto = tensor_pb2.TensorProto(dtype=1, float_val=[1.0])
    proto.tensor_shape.dim.add().size = 250_000_000
    proto.tensor_shape.dim.add().size = 4  # 1e9 floats from a ~30-byte message
    assert len(predict_request(proto).SerializeToString()) < 60
    before = rss_mb(hostile.proc.pid)
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(predict_request(proto), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor parsing error: x" in err.value.details() and "exceeds the server's limit" in err.value.details()
    assert rss_mb(hostile.proc.pid) < before + 100
    assert_still_serving(hostile)


@pytest.mark.parametrize("dims", [[2**40, 2**40], [-1, 4], [2**62, 4]], ids=["int64-overflow", "negative", "big"])
def test_invalid_shapes_are_invalid_argument(hostile, stubs, dims):
    pred, _ = stubs
    proto = tensor_pb2.TensorProto(dtype=1, float_val=[1.0])
    for d in dims:
        proto.tensor_shape.dim.add().size = d
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(predict_request(proto), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "tensor parsing error: x" in err.value.details()
    assert_still_serving(hostile)


def test_messages_over_the_limit_are_refused(hostile, stubs):
    pred, _ = stubs
    proto = tensor_pb2.TensorProto(dtype=1, tensor_content=b"\0" * (70 * 1024 * 1024))
    proto.tensor_shape.dim.add().size = 70 * 1024 * 1024 // 16
    proto.tensor_shape.dim.add().size = 4
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(predict_request(proto), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(hostile)


def test_large_answers_use_tensor_content(hostile, stubs):
    pred, _ = stubs
    x = np.random.default_rng(0).random((2000, 4), dtype=np.float32)
    req = predict_request(tensor_pb2.TensorProto())
    from tfmlops.serving.tensors import make_ndarray, make_tensor_proto

    make_tensor_proto(x, req.inputs["x"])
    out = pred.Predict(req, timeout=60).outputs["y"]
    assert out.tensor_content and not out.float_val and make_ndarray(out).shape == (2000, 3)


# ---------------------------------------------------------------------------------- reload
def test_a_reload_that_cannot_finish_blocks_nothing(hostile, stubs, store, tmp_path):
    """A config adding a model with no version used to wait for ever holding the config lock:
    polling stopped for every model and later configs were ignored."""
    _, model_service = stubs
    empty = tmp_path / "empty_model"
    empty.mkdir()
    bad = parse_config_text("model_config_list {" + model_entry("mlp", store.path("hostile_mlp"))
                            + model_entry("ghost", str(empty)) + "}")
    request = model_management_pb2.ReloadConfigRequest(config=bad)
    with pytest.raises(grpc.RpcError) as err:
        model_service.HandleReloadConfigRequest(request, timeout=3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # polling goes on: a new version of another model loads
    store.publish(store.path("staging", "mlp_b"), "hostile_mlp", 2)
    status_url = f"http://127.0.0.1:{hostile.rest_port}/v1/models/mlp/versions/2"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = requests.get(status_url, timeout=10)
        if answer.ok and answer.json()["model_version_status"][0]["state"] == "AVAILABLE":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"version 2 did not load while a reload waited: {hostile.log[-3000:]}")
    # and a later config (the fix) is applied at once
    good = parse_config_text("model_config_list {" + model_entry("mlp", store.path("hostile_mlp")) + "}")
    t0 = time.monotonic()
    model_service.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=good), timeout=30)
    assert time.monotonic() - t0 < 10
    assert requests.get(f"http://127.0.0.1:{hostile.rest_port}/v1/models/ghost", timeout=10).status_code == 404
    assert_still_serving(hostile)


# ------------------------------------------------------------------------------------ REST
def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout): everything it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            out += b"<timeout>"
    return out


def statuses(answer: bytes) -> list[int]:
    return [int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


PREDICT = b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\n"
SMUGGLED = b"GET /v1/models/mlp HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("head, body, status", [
    (b"Transfer-Encoding: chunked\r\n", b"-1\r\n" + SMUGGLED, 400),
    (b"Transfer-Encoding: chunked\r\n", b"0x10\r\n" + SMUGGLED, 400),
    (b"Transfer-Encoding: chunked\r\n", b"5\r\n{}xyz" + SMUGGLED, 400),
    (b"Content-Length: -5\r\n", SMUGGLED, 400),
    (b"Content-Length: +5\r\n", SMUGGLED, 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", SMUGGLED, 400),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED, 400),
    (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + SMUGGLED, 400),
    (b"Content-Length: 999999999999\r\n", b"{}", 413),
], ids=["chunk-negative", "chunk-0x", "chunk-no-crlf", "cl-negative", "cl-signed", "cl-twice", "te-and-cl",
        "te-gzip", "cl-huge"])
def test_bad_framing_is_refused_and_nothing_is_smuggled(hostile, head, body, status):
    answer = raw_exchange(hostile.rest_port, PREDICT + head + b"\r\n" + body)
    assert statuses(answer) == [status], answer[:500]  # one answer: the smuggled request was never served
    assert b"Connection: close" in answer
    assert_still_serving(hostile)


def test_chunked_bodies_count_against_the_limit(hostile):
    """200 MiB offered in 1 MiB chunks (the limit is 64 MiB): 413 and close, read as it arrives."""
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", hostile.rest_port), timeout=30) as sock:
        def read():
            try:
                while data := sock.recv(65536):
                    answer.extend(data)
            except OSError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        sock.sendall(PREDICT + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
        sent = 0
        try:
            for _ in range(200):
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass
        reader.join(30)
    assert statuses(bytes(answer)) == [413], bytes(answer[:300])
    assert sent < 200  # the server stopped reading
    assert_still_serving(hostile)


def test_head_has_no_body(hostile):
    answer = raw_exchange(hostile.rest_port, b"HEAD /v1/models/mlp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(head) and b"Content-Length:" in head and body == b""


def test_deep_json_is_a_client_error(hostile):
    doc = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    got = requests.post(f"http://127.0.0.1:{hostile.rest_port}/v1/models/mlp:predict", data=doc, timeout=30)
    assert got.status_code == 400 and "nested too deeply" in got.json()["error"]
    ragged = {"instances": [1.0, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
    got = requests.post(f"http://127.0.0.1:{hostile.rest_port}/v1/models/mlp:predict", json=ragged, timeout=30)
    assert got.status_code == 400
    assert_still_serving(hostile)


def test_error_previews_are_bounded(hostile):
    doc = {"instances": [{"x": "not a number " * 10}] * 200_000}  # ~30 MB, one bad element
    got = requests.post(f"http://127.0.0.1:{hostile.rest_port}/v1/models/mlp:predict", json=doc, timeout=60)
    assert got.status_code == 400 and len(got.content) < 10_000, len(got.content)
    assert_still_serving(hostile)


def test_many_large_requests_keep_memory_bounded(hostile):
    """Each large request used to leave a malloc arena behind on its thread (~64 MB each)."""
    body = json.dumps({"instances": np.ones((100_000, 4)).tolist()}).encode()
    errors = []

    def send():
        try:
            got = requests.post(f"http://127.0.0.1:{hostile.rest_port}/v1/models/mlp:predict", data=body, timeout=120)
            assert got.status_code == 200
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=send) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors, errors[:2]
    assert_still_serving(hostile)


# -------------------------------------------------------------------- HTTP server in process
class EchoApi:
    def handle(self, method, path, body, request_id=None):
        return 200, json.dumps({"method": method, "bytes": len(body)}).encode()


@pytest.fixture
def small_server():
    server = RestServer("127.0.0.1", 0, EchoApi(), max_body_bytes=1000, max_connections=4,
                        timeouts_s={"idle": 1.0, "header": 1.0, "body": 1.0, "write": 1.0})
    server.start()
    yield server
    server.stop(grace_s=5)


def test_slow_and_idle_clients_are_disconnected(small_server):
    port = small_server.server_address[1]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    socks[0].sendall(b"POST /x HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    socks[1].sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # body never finished
    t0 = time.monotonic()
    for sock in socks:  # the third is idle; each is closed by the server (recv returns b"")
        while sock.recv(100):
            pass
        sock.close()
    assert time.monotonic() - t0 < 5 and small_server.closed_by_watchdog >= 3


def test_connections_beyond_the_cap_get_503(small_server):
    port = small_server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    time.sleep(0.3)
    extra = raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert statuses(extra) == [503]
    for sock in held:
        sock.close()
    time.sleep(0.3)
    assert statuses(raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == [200]


def test_shutdown_does_not_wait_for_idle_or_slow_clients():
    server = RestServer("127.0.0.1", 0, EchoApi(), timeouts_s={"idle": 600, "header": 600, "body": 600})
    server.start()
    port = server.server_address[1]
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow.sendall(b"POST /x HTTP/1.1\r\n")
    time.sleep(0.3)
    t0 = time.monotonic()
    server.stop(grace_s=30)  # only the shutdown can close them: their timeouts are 10 minutes
    assert time.monotonic() - t0 < 3 and server.closed_by_watchdog == 0
    assert idle.recv(100) == b"" and slow.recv(100) == b""
    idle.close()
    slow.close()


# ------------------------------------------------------------------------------------- S3
def test_s3_marker_entries_outside_the_version_are_refused(s3_endpoint, tmp_path):
    """A completion marker is data from the bucket: an entry like ``../../x`` used to be downloaded
    to <cache>/<version>/../../x, outside the cache."""
    from tfmlops.serving.sources.s3_cache import COMPLETE_MARKER, complete_s3_versions, download_s3_version

    client = s3_endpoint["client"]()
    client.create_bucket(Bucket="hostile")
    files = {"saved_model.pb": 1, "../../escaped": 7}
    client.put_object(Bucket="hostile", Key="m/1/saved_model.pb", Body=b"x")
    client.put_object(Bucket="hostile", Key="m/1/../../escaped", Body=b"payload")
    client.put_object(Bucket="hostile", Key=f"m/1/{COMPLETE_MARKER}", Body=json.dumps({"files": files}).encode())
    client.put_object(Bucket="hostile", Key="m/2/saved_model.pb", Body=b"x")
    client.put_object(Bucket="hostile", Key=f"m/2/{COMPLETE_MARKER}",
                      Body=json.dumps({"files": {"saved_model.pb": 1}}).encode())
    assert set(complete_s3_versions("s3://hostile/m", client)) == {2}  # version 1 is ignored
    cache = tmp_path / "cache" / "base"
    with pytest.raises(ValueError, match="outside the version"):
        download_s3_version("s3://hostile/m", 1, files, cache, client)
    assert not list(tmp_path.rglob("escaped")) and not (cache / "1").exists()
    assert (download_s3_version("s3://hostile/m", 2, {"saved_model.pb": 1}, cache, client) / "saved_model.pb").is_file()
