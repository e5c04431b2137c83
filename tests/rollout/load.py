"""A steady client loop (REST and gRPC threads per endpoint) that records every failure and checks
that every answer comes from a fully loaded version: gRPC answers name their version and must equal
that version's outputs; REST answers must equal the outputs of one of the published versions."""

from __future__ import annotations

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
