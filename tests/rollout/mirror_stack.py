"""A router with its request mirror on, its sink (a real ``python -m tfmlops.deploy.mirror_sink``
process) and two real tf-serving-local replica groups; clients that record exactly what they sent
and got back (request id, input row, output row, latency)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

from .conftest import MODEL


class Sink:
    """The sink as a subprocess on a free loopback port."""

    def __init__(self, root, max_file_age_s: float = 1.0):
        from devservers import free_port

        self.port = free_port()
        self.prefix = os.path.join(str(root), "mirror")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(str(root), "sink.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfmlops.deploy.mirror_sink", f"--port={self.port}", f"--log_prefix={self.prefix}",
             f"--max_file_age_s={max_file_age_s}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        deadline = time.monotonic() + 120
        while True:
            try:
                self.stats()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mirror sink did not start: {open(self.log.name).read()[-2000:]}") from None
                time.sleep(0.2)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/v1/mirror/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def start_router(root, groups, sink_url: str | None, rate: float, **options):
    from devservers import free_port
    from tfmlops.deploy.router import Router, RouterConfig

    config = RouterConfig([g.replica() for g in groups], rest_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), admin_socket=os.path.join(str(root), "haproxy.sock"),
                          mirror_rate=rate, mirror_sink=sink_url and f"{sink_url}/v1/mirror", **options)
    cfg = os.path.join(str(root), "haproxy.cfg")
    with open(cfg, "w") as fh:
        fh.write(config.render())
    check = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(config.admin_socket) and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, config, Router(config.admin_socket, config.replicas)


@contextlib.contextmanager
def mirrored_stack(root, zoo, rate: float, prepare=None):
    """A stable and a canary replica (version 1), the sink and the router mirroring ``rate`` of the
    calls; ``prepare(groups)`` runs once the replicas are ready, before the router starts."""
    from .router_stack import Group

    groups = [Group(root, "stable-0", "stable", zoo), Group(root, "canary-0", "canary", zoo)]
    sink = Sink(root)
    proc = None
    try:
        for g in groups:
            g.proc.wait_ready()
        if prepare is not None:
            prepare(groups)
        proc, config, router = start_router(root, groups, sink.url, rate)
        yield {"groups": {g.group: g for g in groups}, "router": router, "config": config, "sink": sink,
               "root": root}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        sink.stop()
        for g in groups:
            g.endpoint.close()
            g.proc.terminate()


def mirror_stats(config) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/mirror/stats", timeout=5) as r:
        return json.loads(r.read())


class RecordingClients:
    """``threads`` closed-loop clients per protocol through the router; each request a new random
    row and id (``<tag>-<api>-<n>``, or none at all for every ``no_id_every``-th request), every
    (id, x, y, latency) kept."""

    def __init__(self, config, tag: str, threads: int = 2, no_id_every: int = 0, seed: int = 0):
        self.config, self.tag, self.no_id_every = config, tag, no_id_every
        self.sent: dict[str, dict] = {}
        self.no_id: list[dict] = []
        self.failures: list[str] = []
        self.latency_ms: dict[str, list[float]] = {"rest": [], "grpc": []}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._rng = np.random.default_rng(seed)
        self._threads = [threading.Thread(target=self._run, args=(api, i), daemon=True)
                         for api in ("rest", "grpc") for i in range(threads)]

    def _run(self, api: str, worker: int) -> None:
        import grpc
        import requests
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from tfmlops.serving.tensors import make_ndarray, make_tensor_proto

        session = requests.Session()
        channel = grpc.insecure_channel(f"127.0.0.1:{self.config.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                with self._lock:
                    x = self._rng.normal(size=(1, 4)).astype(np.float32)
                rid = None if self.no_id_every and n % self.no_id_every == 0 else f"{self.tag}-{api}{worker}-{n}"
                try:
                    t0 = time.perf_counter()
                    if api == "rest":
                        r = session.post(f"http://127.0.0.1:{self.config.rest_port}/v1/models/{MODEL}:predict",
                                         data=json.dumps({"instances": x.tolist()}),
                                         headers={"X-Request-Id": rid} if rid else {}, timeout=30)
                        dt = (time.perf_counter() - t0) * 1000
                        if r.status_code != 200:
                            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                        y = np.asarray(r.json()["predictions"], np.float32)
                    else:
                        req = predict_pb2.PredictRequest()
                        req.model_spec.name = MODEL
                        make_tensor_proto(x, req.inputs["x"])
                        resp = stub.Predict(req, timeout=30, metadata=(("x-request-id", rid),) if rid else ())
                        dt = (time.perf_counter() - t0) * 1000
                        y = make_ndarray(resp.outputs["y"], "y")
                except Exception as exc:  # noqa: BLE001 - every failure is asserted on
                    with self._lock:
                        self.failures.append(f"{api}: {type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.latency_ms[api].append(dt)
                    entry = {"api": api, "x": x, "y": y}
                    if rid:
                        self.sent[rid] = entry
                    else:
                        self.no_id.append(entry)
        finally:
            session.close()
            channel.close()

    @property
    def total(self) -> int:
        return len(self.sent) + len(self.no_id)

    def __enter__(self) -> RecordingClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def run_until(self, total: int, timeout_s: float = 120.0) -> RecordingClients:
        with self:
            deadline = time.monotonic() + timeout_s
            while self.total < total and time.monotonic() < deadline and len(self.failures) < 20:
                time.sleep(0.05)
        return self


def read_group_logs(prefix: str, group: str) -> list:
    """The PredictionLogs in a group's complete files."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.deploy.mirror_sink import group_log_prefix
    from tfmlops.feedback import complete_records, list_request_logs

    return [prediction_log_pb2.PredictionLog.FromString(rec)
            for path in list_request_logs(group_log_prefix(prefix, group)) for rec in complete_records(path)]


class DnsStub:
    """A DNS server on a loopback UDP port answering A records of ``names`` with 127.0.0.1 (and
    NXDOMAIN otherwise): what Docker's 127.0.0.11 does for compose service names."""

    def __init__(self, *names: str):
        self.names = {n.encode() for n in names}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            try:
                tid = struct.unpack(">H", data[:2])[0]
                i, labels = 12, []
                while data[i]:
                    labels.append(data[i + 1:i + 1 + data[i]])
                    i += 1 + data[i]
                qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
                question = data[12:i + 5]
            except (IndexError, struct.error):
                continue
            self.queries += 1
            name = b".".join(labels)
            if name in self.names and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
                reply = struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + answer
            else:  # no AAAA (IPv4 only, as a compose network), unknown names: NXDOMAIN
                rcode = 0 if name in self.names else 3
                reply = struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
