"""Gray release through a real router (Debian's HAProxy) in front of two real tf-serving-local
replica groups, under real client load (REST and gRPC, single-row predicts, through the router's
two addresses): a good version climbs every step and is promoted with 0 failed client requests and
the configured share reaching the canary; a version that fails live requests, one that answers
them 60 ms late and a canary replica that crashes are each rolled back by themselves, with the
reason, after at most one step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from serving._proc import ServerProcess  # tests/ is on sys.path: tests/serving is a package

from . import models
from .conftest import MODEL

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="needs HAProxy (Debian: apt-get install haproxy; make system-deps)")]

MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'


class Group:
    """One replica: a tf-serving-local process on its own models root and config file."""

    def __init__(self, root, name: str, group: str, zoo):
        from tfmlops.deploy.endpoint import Endpoint
        from tfmlops.deploy.publish import publish_version

        self.name, self.group, self.root = name, group, os.path.join(str(root), name)
        models_root = os.path.join(self.root, "models")
        self.config_file = os.path.join(self.root, "models.config")
        publish_version(zoo.path["v1"], models_root, MODEL, 1)
        with open(self.config_file, "w") as fh:
            fh.write(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_root}/{MODEL}" '
                     'model_platform: "tensorflow" } }\n')
        monitoring = os.path.join(self.root, "monitoring.config")
        with open(monitoring, "w") as fh:
            fh.write(MONITORING)
        self.args = [f"--model_config_file={self.config_file}", "--file_system_poll_wait_seconds=1",
                     f"--monitoring_config_file={monitoring}"]
        self.proc = ServerProcess(self.args)
        self.endpoint = Endpoint(name=name, rest_port=self.proc.rest_port, grpc_port=self.proc.grpc_port,
                                 models_root=models_root, model_config_file=self.config_file, timeout=60)

    def replica(self):
        from tfmlops.deploy.router import Replica

        return Replica(self.name, self.group, "127.0.0.1", self.proc.rest_port, self.proc.grpc_port)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, zoo):
    from devservers import free_port
    from tfmlops.deploy.router import Router, RouterConfig

    root = tmp_path_factory.mktemp("gray")
    groups = [Group(root, "stable-0", "stable", zoo), Group(root, "canary-0", "canary", zoo)]
    for g in groups:
        g.proc.wait_ready()
    config = RouterConfig([g.replica() for g in groups], rest_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), admin_socket=str(root / "haproxy.sock"))
    cfg = root / "haproxy.cfg"
    cfg.write_text(config.render())
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    router_proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    router = Router(config.admin_socket, config.replicas)
    deadline = time.monotonic() + 20
    while not os.path.exists(config.admin_socket) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield {"groups": {g.group: g for g in groups}, "router": router, "config": config}
    finally:
        router_proc.terminate()
        router_proc.wait(10)
        for g in groups:
            g.endpoint.close()
            g.proc.terminate()


class Clients:
    """Closed-loop REST and gRPC clients through the router (single rows); every answer checked."""

    def __init__(self, config, outputs: dict[int, np.ndarray], threads: int = 2, pause_s: float = 0.005):
        from tfmlops.deploy.client import ServingClient

        self.config, self.outputs = config, outputs
        self.x = np.asarray(models.X_SMOKE[:1], np.float32)
        self.ok, self.failures, self.versions = 0, [], {}
        self._stop, self._lock, self.pause_s = threading.Event(), threading.Lock(), pause_s
        self._clients = [ServingClient("127.0.0.1", config.rest_port, config.grpc_port, timeout=30)
                         for _ in range(threads * 2)]
        self._threads = [threading.Thread(target=self._run, args=(c, "grpc" if i % 2 else "rest"), daemon=True)
                         for i, c in enumerate(self._clients)]

    def _run(self, client, api: str) -> None:
        while not self._stop.is_set():
            try:
                if api == "rest":
                    got, version = np.asarray(client.predict_rest(MODEL, self.x.tolist())), None
                else:
                    resp = client.predict_grpc_response(MODEL, {"x": self.x})
                    from tfmlops.serving.tensors import make_ndarray

                    got, version = make_ndarray(resp.outputs["y"], "y"), resp.model_spec.version.value
                if not any(np.allclose(got, out[:1], atol=1e-5) for out in self.outputs.values()):
                    raise AssertionError(f"unexpected answer {got}")
                with self._lock:
                    self.ok += 1
                    if version is not None:
                        self.versions[version] = self.versions.get(version, 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                with self._lock:
                    self.failures.append(f"{api}: {type(exc).__name__}: {exc}")
            time.sleep(self.pause_s)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for c in self._clients:
            c.close()


def _release(stack, zoo, name: str, version: int, **kwargs):
    from tfmlops.deploy.progressive import GrayThresholds, gray_release
    from tfmlops.deploy.rollout import Candidate

    groups = {g: [s.endpoint] for g, s in stack["groups"].items()}
    defaults = {"steps": (5, 25, 50, 100), "window_s": 4.0, "poll_s": 0.25,
                "thresholds": GrayThresholds(max_error_rate_increase=0.01, max_p99_increase_ms=25.0, min_requests=5)}
    return gray_release(Candidate(MODEL, version, zoo.path[name], zoo.smoke[name]), stack["router"], groups,
                        **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def faulty(zoo):
    for name, fault in (("v2_error", "error"), ("v2_slow", "slow")):
        path = os.path.join(zoo.root, name)
        if name not in zoo.path:
            zoo.smoke[name] = models.build(path, 1, 1.5, fault=fault)
            zoo.path[name] = path
            zoo.out[name] = zoo.out["v2"]
    return zoo


def _served(stack, version: int) -> set:
    from tfmlops.deploy.status import serving_versions

    return {g: tuple(serving_versions(s.endpoint.client, MODEL)) for g, s in stack["groups"].items()}


def test_bad_versions_are_rolled_back_by_themselves(stack, faulty):
    """Live errors, then +60 ms: each breaches at the first step (5 %) and the share goes back to 0."""
    outputs = {1: faulty.out["v1"], 2: faulty.out["v2"]}
    for name, version, why in (("v2_error", 2, "error rate"), ("v2_slow", 3, "p99")):
        with Clients(stack["config"], outputs) as clients:
            res = _release(stack, faulty, name, version)
        assert res.outcome == "rolled_back", res.to_dict()
        assert why in res.reason and res.reason.startswith("at 5 %"), res.reason
        assert len(res.steps) == 1 and stack["router"].share_pct == 0.0
        assert _served(stack, version) == {"stable": (1,), "canary": (1,)}, res.reason
        # the injected errors reached clients only in the canary's 5 % share of one step
        bad = [f for f in clients.failures if "injected fault" in f]
        assert len(clients.failures) == len(bad), clients.failures[:5]
        assert len(bad) <= 0.15 * (clients.ok + len(bad)), (len(bad), clients.ok)


def test_good_version_is_promoted_step_by_step_with_no_failed_request(stack, zoo):
    outputs = {1: zoo.out["v1"], 4: zoo.out["v2"]}
    with Clients(stack["config"], outputs) as clients:
        res = _release(stack, zoo, "v2", 4)
    assert res.outcome == "promoted", res.to_dict()
    json.dumps(res.to_dict(), allow_nan=False)  # what Airflow stores as the task's XCom
    assert [s["share_pct"] for s in res.steps] == [5, 25, 50, 100]
    assert clients.failures == [] and clients.ok > 200, (clients.failures[:5], clients.ok)
    for step in res.steps:  # the canary's share of the requests follows the configured one
        measured = 100 * step["canary"]["requests"] / (step["canary"]["requests"] + step["stable"]["requests"])
        assert abs(measured - step["share_pct"]) <= 10, (measured, step)
        assert step["breaches"] == []
    assert _served(stack, 4) == {"stable": (4,), "canary": (4,)}
    assert stack["router"].share_pct == 0.0


def test_a_crashed_canary_replica_is_rolled_back_without_failed_requests(stack, zoo):
    outputs = {4: zoo.out["v2"], 5: zoo.out["v3"]}
    canary, router = stack["groups"]["canary"], stack["router"]

    def kill_when_it_takes_traffic():
        while router.share_pct < 25:
            time.sleep(0.05)
        time.sleep(1.0)
        canary.proc.kill()

    killer = threading.Thread(target=kill_when_it_takes_traffic, daemon=True)
    with Clients(stack["config"], outputs) as clients:
        killer.start()
        res = _release(stack, zoo, "v3", 5, window_s=5.0, timeout_s=20)
    killer.join(5)
    assert res.outcome == "rolled_back" and "down" in res.reason and res.reason.startswith("at 25 %"), res.reason
    assert stack["router"].share_pct == 0.0
    assert clients.failures == [], clients.failures[:5]  # the router retried every request elsewhere
