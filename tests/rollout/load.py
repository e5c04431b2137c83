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
