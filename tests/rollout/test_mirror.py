"""Request logs from the router's mirror, in front of real tf-serving-local replicas that log
nothing themselves (as real TF Serving cannot): real HAProxy with mirror.lua, the real sink
process, REST and gRPC clients through the router. The logged share is the configured one within
binomial tolerance; every record decodes and carries exactly what its client sent and got (id,
input row, output row) and the group/version that answered; ids the clients did not send are the
router's; the clients' latency with the mirror on and off is measured and reported; hostile
input to the sink is refused with 4xx and leaves it serving."""

from __future__ import annotations

import json
import math
import shutil
import socket
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from . import mirror_stack as ms

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="needs HAProxy (Debian: apt-get install haproxy; make system-deps)")]

RATE = 0.25


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, zoo):
    from tfmlops.deploy.publish import publish_version

    def canary_on_v2(groups):  # other outputs: a record's group is checked by its outputs
        canary = groups[1]
        publish_version(zoo.path["v2"], canary.endpoint.models_root, "roll", 2)
        canary.endpoint.client.wait_until_available("roll", 2, 120)

    with ms.mirrored_stack(tmp_path_factory.mktemp("mirror"), zoo, RATE, canary_on_v2) as stack:
        yield stack


def _wait_logged(sink, n: int, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = sink.stats()
        if stats["logged"] >= n or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def test_mirror_logs_the_configured_share_with_what_clients_sent_and_got(mirrored, zoo):
    from tfmlops.serving.tensors import make_ndarray

    config, sink, router = mirrored["config"], mirrored["sink"], mirrored["router"]
    router.set_share(50)
    try:
        clients = ms.RecordingClients(config, "mirror", no_id_every=10).run_until(1200)
    finally:
        router.set_share(0)
    assert clients.failures == [], clients.failures[:5]
    n = clients.total
    deadline = time.monotonic() + 30  # the router's queue drained into the sink
    while True:
        rstats = ms.mirror_stats(config)
        if rstats["sent"] + rstats["failed"] == rstats["queued"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rstats["failed"] == 0 and rstats["dropped_queue_full"] == 0 and rstats["incomplete"] == 0, rstats
    stats = _wait_logged(sink, rstats["sent"])
    assert stats["logged"] == rstats["sent"] and stats["rejected"] == 0, (rstats, stats)
    time.sleep(2.5)  # every file closed by age (--max_file_age_s=1)
    logs = {g: ms.read_group_logs(sink.prefix, g) for g in ("stable", "canary")}
    logged = sum(len(v) for v in logs.values())
    assert logged == stats["logged"], (logged, stats)
    # the logged share: binomial, 4.5 standard deviations
    sd = math.sqrt(RATE * (1 - RATE) / n)
    assert abs(logged / n - RATE) <= 4.5 * sd, (logged, n)
    print(f"\nmirror: {logged} of {n} requests logged ({logged / n:.3f}, rate {RATE}); "
          f"stable {len(logs['stable'])}, canary {len(logs['canary'])}; router {rstats}")
    version_of = {"stable": 1, "canary": 2}
    out_of = {"stable": "v1", "canary": "v2"}
    seen, generated, by_api = set(), 0, {"rest": 0, "grpc": 0}
    for group, plogs in logs.items():
        assert plogs, f"no record of the {group} group"
        for plog in plogs:
            assert plog.WhichOneof("log_type") == "predict_log"
            rid = plog.log_metadata.request_origin
            x = make_ndarray(plog.predict_log.request.inputs["x"], "x")
            y = make_ndarray(plog.predict_log.response.outputs["y"], "y")
            assert plog.log_metadata.model_spec.name == "roll"
            assert plog.log_metadata.model_spec.version.value == version_of[group], (group, plog.log_metadata)
            assert plog.log_metadata.sampling_config.sampling_rate == pytest.approx(RATE)
            # what the group's version answers to that input
            expected = models_predict(zoo, out_of[group], x)
            np.testing.assert_allclose(y, expected, atol=1e-5)
            if rid in clients.sent:
                sent = clients.sent[rid]
                assert rid not in seen, rid
                seen.add(rid)
                by_api[sent["api"]] += 1
                np.testing.assert_array_equal(x, sent["x"])
                np.testing.assert_allclose(y, sent["y"], atol=1e-6)
            else:  # a request sent without an id: the router's uuid
                generated += 1
                assert len(rid) == 36 and rid.count("-") == 4, rid
                assert any(np.array_equal(x, e["x"]) for e in clients.no_id), rid
    assert by_api["rest"] > 0 and by_api["grpc"] > 0, by_api
    assert generated > 0 and len(seen) + generated == logged


_LOADED: dict = {}


def models_predict(zoo, name: str, x: np.ndarray) -> np.ndarray:
    """The version's own answer (SavedModel loaded once per test session)."""
    import tensorflow as tf

    if name not in _LOADED:
        _LOADED[name] = tf.saved_model.load(zoo.path[name])
    return _LOADED[name].signatures["serving_default"](x=tf.constant(x, tf.float32))["y"].numpy()


def test_client_latency_with_mirror_on_and_off(mirrored, tmp_path):
    """The same load through three routers on the same replicas: no mirror, the mirror at 100 %
    delivered by its Lua task (what RouterConfig renders), and at 100 % posted by the response
    action itself (``mirror_delivery="inline"``, the alternative the task replaces): the clients'
    median and p99 latency of each is measured and reported; the task's cost stays within noise."""
    groups = list(mirrored["groups"].values())
    routers = {}
    for label, sink, rate, options in (("off", None, 0.0, {}), ("task", mirrored["sink"].url, 1.0, {}),
                                       ("inline", mirrored["sink"].url, 1.0, {"mirror_delivery": "inline"})):
        (tmp_path / label).mkdir()
        routers[label] = ms.start_router(tmp_path / label, groups, sink, rate, **options)
    try:
        results = {}
        for _ in range(2):  # interleaved twice: drift of the shared machine hits all alike
            for label, (_, config, _) in routers.items():
                c = ms.RecordingClients(config, f"lat-{label}", threads=1).run_until(300)
                assert c.failures == [], c.failures[:5]
                for api, values in c.latency_ms.items():
                    results.setdefault((label, api), []).extend(values)
    finally:
        for proc, _, _ in routers.values():
            proc.terminate()
            proc.wait(10)
    report = {api: {label: {"p50_ms": round(float(np.median(results[(label, api)])), 3),
                            "p99_ms": round(float(np.percentile(results[(label, api)], 99)), 3),
                            "n": len(results[(label, api)])} for label in routers}
              for api in ("rest", "grpc")}
    print("\nclient latency, mirror off / task / inline (100 % mirrored):", json.dumps(report))
    for api, r in report.items():
        # generous: a regression that made clients wait for the sink would add whole round trips
        assert r["task"]["p50_ms"] - r["off"]["p50_ms"] < 5.0, (api, r)


def test_a_body_larger_than_the_routers_buffer_is_answered_and_not_logged(mirrored):
    """A 1,000-row request (~40 KB of JSON, over HAProxy's 16 KiB buffer) is not seen whole by the
    mirror: clients get their full answers, the sampled ones are counted ``incomplete`` and no
    truncated record reaches the logs."""
    import requests

    config, sink = mirrored["config"], mirrored["sink"]
    before_router, before_sink = ms.mirror_stats(config), sink.stats()
    x = np.random.default_rng(1).normal(size=(1000, 4)).round(6).tolist()
    with requests.Session() as session:
        for i in range(40):
            r = session.post(f"http://127.0.0.1:{config.rest_port}/v1/models/roll:predict",
                             data=json.dumps({"instances": x}), headers={"X-Request-Id": f"big-{i}"}, timeout=30)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 1000
    time.sleep(1.0)
    after_router, after_sink = ms.mirror_stats(config), sink.stats()
    sampled = after_router["sampled"] - before_router["sampled"]
    assert sampled > 0 and after_router["incomplete"] - before_router["incomplete"] == sampled, after_router
    assert after_sink["records"] == before_sink["records"], after_sink


def test_a_sink_named_by_host_name_is_reached_through_the_routers_resolvers(mirrored, tmp_path):
    """Compose's case: the router's replicas and its sink are service names resolved by Docker's
    DNS (RouterConfig.nameserver); here a DNS stub on loopback plays Docker's, and HAProxy's
    httpclient delivers every mirrored record to ``mirror-sink.test``."""
    dns = ms.DnsStub("mirror-sink.test")
    sink, groups = mirrored["sink"], list(mirrored["groups"].values())
    proc, config, _ = ms.start_router(tmp_path, groups, f"http://mirror-sink.test:{sink.port}", 1.0,
                                      nameserver=dns.address)
    try:
        before = sink.stats()["logged"]
        time.sleep(1.0)
        clients = ms.RecordingClients(config, "dns", threads=1).run_until(20)
        assert clients.failures == [], clients.failures[:5]
        stats = _wait_logged(sink, before + clients.total)
        assert stats["logged"] - before == clients.total, (stats, clients.total, ms.mirror_stats(config))
        assert dns.queries > 0
    finally:
        proc.terminate()
        proc.wait(10)
        dns.close()


def test_failed_calls_are_counted_and_not_logged(mirrored, tmp_path):
    """Everything mirrored (rate 1): REST calls answered 404 / 400 and gRPC calls answered
    NOT_FOUND (a trailers-only answer: its grpc-status header is what the mirror sees) reach the
    sink as failed calls, counted ``not_ok``; none becomes a record."""
    import grpc
    import requests
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    sink, groups = mirrored["sink"], list(mirrored["groups"].values())
    proc, config, _ = ms.start_router(tmp_path, groups, sink.url, 1.0)
    try:
        before = sink.stats()
        with requests.Session() as session:
            for body, model in (('{"instances": [[1, 2, 3, 4]]}', "nope"), ('{"instances": [[1]]}', "roll"),
                                ("{", "roll")):
                r = session.post(f"http://127.0.0.1:{config.rest_port}/v1/models/{model}:predict", data=body,
                                 timeout=30)
                assert r.status_code in (400, 404), r.status_code
        with grpc.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "nope"
            with pytest.raises(grpc.RpcError) as err:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        deadline = time.monotonic() + 20
        while sink.stats()["records"] - before["records"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = sink.stats()
        assert after["records"] - before["records"] == 4, (after, ms.mirror_stats(config))
        assert after["not_ok"] - before["not_ok"] == 4 and after["logged"] == before["logged"], after
    finally:
        proc.terminate()
        proc.wait(10)


def _post(url: str, body: bytes, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_hostile_input_to_the_sink_is_refused(mirrored):
    from tfmlops.deploy.mirror_sink import pack_frames

    sink = mirrored["sink"]
    url = f"{sink.url}/v1/mirror"
    before = sink.stats()
    good_meta = {"protocol": "grpc", "path": "/tensorflow.serving.PredictionService/Predict", "status": 200,
                 "group": "stable", "server_addr": "127.0.0.1", "server_port": 1}
    cases = {
        "not frames": b"\x00\x00\x10\x00garbage",
        "length past the end": struct.pack(">I", 1 << 30) + b"x",
        "meta not JSON": pack_frames(b"{nope", b"", b""),
        "meta not an object": pack_frames(b"[1]", b"", b""),
        "bad group": pack_frames(json.dumps({**good_meta, "group": "../../etc"}).encode(), b"", b""),
        "gRPC body not a message": pack_frames(json.dumps(good_meta).encode(), b"\x00\x00\x00\x00\x09abc", b""),
        "gRPC proto garbage": pack_frames(json.dumps(good_meta).encode(), b"\x00\x00\x00\x00\x03\xff\xff\xff",
                                          b"\x00\x00\x00\x00\x00"),
        "compressed gRPC": pack_frames(json.dumps(good_meta).encode(), b"\x01\x00\x00\x00\x00", b""),
        "REST not JSON": pack_frames(json.dumps({**good_meta, "protocol": "rest",
                                                 "path": "/v1/models/roll:predict"}).encode(), b"{", b"}"),
        "REST unknown path": pack_frames(json.dumps({**good_meta, "protocol": "rest",
                                                     "path": "/v1/models/roll:explode"}).encode(), b"{}", b"{}"),
        "REST replica unreachable": pack_frames(json.dumps({**good_meta, "protocol": "rest",
                                                            "path": "/v1/models/roll:predict"}).encode(),
                                                b'{"instances": [[1,2,3,4]]}', b'{"predictions": [[1,2,3]]}'),
    }
    for what, body in cases.items():
        assert _post(url, body) == 400, what
    # a declared size over the bound is refused before the body is read
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as s:
        s.sendall(b"POST /v1/mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 413"), "oversized batch"
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as s:
        s.sendall(b"POST /v1/mirror HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 411"), "chunked"
    assert _post(f"{sink.url}/v1/other", b"") == 404
    stats = sink.stats()
    assert stats["logged"] == before["logged"], "nothing hostile was logged"
    assert stats["rejected"] - before["rejected"] >= 8, stats
    assert sink.proc.poll() is None  # still serving
