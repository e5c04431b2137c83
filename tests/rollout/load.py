"""A steady client loop (REST and gRPC threads per endpoint) that records every failure and checks
that every answer comes from a fully loaded version: gRPC answers name their version and must equal
that version's outputs; REST answers must equal the outputs of one of the published versions.
``UserClients``: users of the router with their own request ids (and, for A/B tests, the labels
of what they sent)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from tfmlops.deploy.client import ServingClient


class LoadLoop:
    def __init__(self, endpoints, model: str, x: np.ndarray, outputs: dict[int, np.ndarray], *,
                 label: str | None = None, pause_s: float = 0.01):
        self.endpoints, self.model, self.x, self.outputs = endpoints, model, x, outputs
        self.label, self.pause_s = label, pause_s
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(ep, api), daemon=True)
                         for ep in endpoints for api in ("rest", "grpc")]

    def _match(self, got: np.ndarray) -> int | None:
        for v, expected in self.outputs.items():
            if got.shape == expected.shape and np.allclose(got, expected, atol=1e-5):
                return v
        return None

    def _run(self, ep, api: str) -> None:
        client = ServingClient(ep.host, ep.rest_port, ep.grpc_port, timeout=30)
        try:
            while not self._stop.is_set():
                try:
                    if api == "rest":
                        got = np.asarray(client.predict_rest(self.model, self.x.tolist(), label=self.label))
                        version = self._match(got)
                        problem = None if version is not None else f"REST {ep.name}: outputs of no known version"
                    else:
                        resp = client.predict_grpc_response(self.model, {"x": self.x}, label=self.label)
                        from tfmlops.serving import tensors

                        version = int(resp.model_spec.version.value)
                        got = tensors.make_ndarray(resp.outputs["y"], "y")
                        expected = self.outputs.get(version)
                        problem = None if expected is not None and np.allclose(got, expected, atol=1e-5) else \
                            f"gRPC {ep.name}: version {version} answered outputs that are not its own"
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    version, problem = None, f"{api} {ep.name}: {type(exc).__name__}: {exc}"
                with self._lock:
                    if problem:
                        self.failures.append(problem)
                    else:
                        self.ok += 1
                        self.versions.add(version)
                time.sleep(self.pause_s)
        finally:
            client.close()

    def __enter__(self):
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 30
        while self.ok < 2 * len(self._threads) and time.monotonic() < deadline and not self.failures:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)  # keep the load on a moment after the rollout returned
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return False


class FailoverLoop(LoadLoop):
    """Steady REST and gRPC clients of a fleet as a whole, as a load balancer sees it: each request
    goes to the next replica in turn and, when that one does not answer (stopped, restarting),
    to the others. A request counts as failed only when no replica answered it correctly."""

    def __init__(self, endpoints, model: str, x: np.ndarray, outputs: dict[int, np.ndarray], *,
                 label: str | None = None, pause_s: float = 0.01, threads_per_api: int = 2):
        super().__init__(endpoints, model, x, outputs, label=label, pause_s=pause_s)
        self.failovers = 0
        self._threads = [threading.Thread(target=self._run_fleet, args=(api, i), daemon=True)
                         for api in ("rest", "grpc") for i in range(threads_per_api)]

    def _ask(self, client, ep, api: str) -> int:
        """The version that answered (correct outputs), else raises."""
        if api == "rest":
            got = np.asarray(client.predict_rest(self.model, self.x.tolist(), label=self.label))
            version = self._match(got)
            if version is None:
                raise AssertionError(f"REST {ep.name}: outputs of no known version")
            return version
        from tfmlops.serving import tensors

        resp = client.predict_grpc_response(self.model, {"x": self.x}, label=self.label)
        version = int(resp.model_spec.version.value)
        expected = self.outputs.get(version)
        if expected is None or not np.allclose(tensors.make_ndarray(resp.outputs["y"], "y"), expected, atol=1e-5):
            raise AssertionError(f"gRPC {ep.name}: version {version} answered outputs that are not its own")
        return version

    def _run_fleet(self, api: str, start: int) -> None:
        clients = [ServingClient(ep.host, ep.rest_port, ep.grpc_port, timeout=10) for ep in self.endpoints]
        turn = start
        try:
            while not self._stop.is_set():
                errors = []
                version = None
                for k in range(len(self.endpoints)):
                    i = (turn + k) % len(self.endpoints)
                    try:
                        version = self._ask(clients[i], self.endpoints[i], api)
                        break
                    except AssertionError as exc:  # a wrong answer is a failure, never failed over
                        errors.append(str(exc))
                        break
                    except Exception as exc:  # noqa: BLE001 - not answering: the next replica
                        errors.append(f"{api} {self.endpoints[i].name}: {type(exc).__name__}: {exc}")
                turn += 1
                with self._lock:
                    if version is None:
                        self.failures.append("; ".join(errors))
                    else:
                        self.ok += 1
                        self.versions.add(version)
                        self.failovers += len(errors)
                time.sleep(self.pause_s)
        finally:
            for c in clients:
                c.close()


class ClientThreads:
    """Client threads (``_threads``, stopped by ``_stop``) started for a ``with`` block, joined after it."""

    _threads: list[threading.Thread]
    _stop: threading.Event

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return False


class UserClients(ClientThreads):
    """Closed-loop users of one address (the router's): REST and gRPC threads, each request a batch
    of ``batch`` consecutive rows of ``x`` (a random batch) with the user's own request id
    (``X-Request-Id`` / ``x-request-id``, ``user-…``, not the project's ``tfmlops-``). Every answer
    must equal, row for row, the outputs of one of the ``allowed`` models on those rows
    (``{name: outputs on x}``; ``answered[name]`` counts them). With ``labels_path``, each answered
    request's true labels (``y`` of its rows) are appended to that JSON-lines file in
    :func:`tfmlops.feedback.read_labels`' format, as a labeler who learns the truth would."""

    def __init__(self, host: str, rest_port: int, grpc_port: int, model: str, x: np.ndarray,
                 allowed: dict[str, np.ndarray], *, y: np.ndarray | None = None, labels_path: str | None = None,
                 batch: int = 1, threads_per_api: int = 2, pause_s: float = 0.005, seed: int = 0):
        self.host, self.rest_port, self.grpc_port, self.model = host, rest_port, grpc_port, model
        self.x, self.allowed, self.y, self.labels_path = np.asarray(x, np.float32), allowed, y, labels_path
        self.batch, self.pause_s = batch, pause_s
        self.ok, self.failures, self.answered = 0, [], {name: 0 for name in allowed}
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(api, seed * 100 + i), daemon=True)
                         for i in range(threads_per_api) for api in ("rest", "grpc")]

    def _rest(self, session, rows: np.ndarray, rid: str) -> np.ndarray:
        r = session.post(f"http://{self.host}:{self.rest_port}/v1/models/{self.model}:predict",
                         json={"instances": rows.tolist()}, headers={"X-Request-Id": rid}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return np.asarray(r.json()["predictions"], np.float32)

    def _grpc(self, stub, rows: np.ndarray, rid: str) -> np.ndarray:
        from tensorflow_serving.apis import predict_pb2

        from tfmlops.serving import tensors

        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.model
        tensors.make_tensor_proto(rows, req.inputs["x"])
        resp = stub.Predict(req, timeout=30, metadata=(("x-request-id", rid),))
        return tensors.make_ndarray(resp.outputs["y"], "y")

    def _run(self, api: str, seed: int) -> None:
        import uuid

        import grpc
        import requests
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        rng = np.random.default_rng(seed)
        session = requests.Session()
        channel = grpc.insecure_channel(f"{self.host}:{self.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            while not self._stop.is_set():
                start = int(rng.integers(len(self.x) // self.batch)) * self.batch
                rows, rid = self.x[start:start + self.batch], f"user-{uuid.uuid4().hex}"
                try:
                    got = self._rest(session, rows, rid) if api == "rest" else self._grpc(stub, rows, rid)
                    name = next((n for n, out in self.allowed.items()
                                 if got.shape == out[start:start + self.batch].shape
                                 and np.allclose(got, out[start:start + self.batch], atol=1e-5)), None)
                    problem = None if name else f"{api}: outputs of no allowed model for rows {start}.."
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    name, problem = None, f"{api}: {type(exc).__name__}: {exc}"
                with self._lock:
                    if problem:
                        self.failures.append(problem)
                    else:
                        self.ok += 1
                        self.answered[name] += 1
                        if self.labels_path:
                            with open(self.labels_path, "a") as fh:
                                labels = [int(v) for v in self.y[start:start + self.batch]]
                                fh.write(json.dumps({"request_id": rid, "labels": labels}) + "\n")
                time.sleep(self.pause_s)
        finally:
            session.close()
            channel.close()

