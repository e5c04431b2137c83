"""A real HAProxy router (Debian's) in front of two real tf-serving-local replicas, the ``stable``
and the ``canary`` replica group, each with its own models root, config file, TF Serving metrics
and request logs of every request (sampling rate 1, files closed every 2 s), for the tests of
releases through the router (gray, A/B)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

import pytest

from serving._proc import ServerProcess  # tests/ is on sys.path: tests/serving is a package

from .conftest import MODEL

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="needs HAProxy (Debian: apt-get install haproxy; make system-deps)")

MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'


class Group:
    """One replica: a tf-serving-local process on its own models root and config file, logging
    every request (the entry's ``logging_config`` is the one ``Endpoint.request_log_prefix`` gives)."""

    def __init__(self, root, name: str, group: str, zoo, initial: str = "v1", model: str = MODEL):
        from tfmlops.deploy.endpoint import Endpoint
        from tfmlops.deploy.publish import publish_version

        self.name, self.group, self.root = name, group, os.path.join(str(root), name)
        models_root = os.path.join(self.root, "models")
        self.config_file = os.path.join(self.root, "models.config")
        self.log_dir = os.path.join(self.root, "logs")
        self.models_root, self.log_prefix = models_root, f"{self.log_dir}/{model}/requests"
        publish_version(zoo.path[initial], models_root, model, 1)
        with open(self.config_file, "w") as fh:
            fh.write(f'model_config_list {{ config {{ name: "{model}" base_path: "{models_root}/{model}" '
                     'model_platform: "tensorflow" logging_config { log_collector_config { filename_prefix: '
                     f'"{self.log_prefix}" }} sampling_config {{ sampling_rate: 1.0 }} }} }} }}\n')
        monitoring = os.path.join(self.root, "monitoring.config")
        with open(monitoring, "w") as fh:
            fh.write(MONITORING)
        self.args = [f"--model_config_file={self.config_file}", "--file_system_poll_wait_seconds=1",
                     f"--monitoring_config_file={monitoring}", "--request_log_max_file_age_s=2"]
        self.proc = ServerProcess(self.args)
        self.endpoint = Endpoint(name=name, rest_port=self.proc.rest_port, grpc_port=self.proc.grpc_port,
                                 models_root=models_root, model_config_file=self.config_file, timeout=60,
                                 request_log_prefix=self.log_dir, request_log_sampling_rate=1.0)

    def replica(self):
        from tfmlops.deploy.router import Replica

        return Replica(self.name, self.group, "127.0.0.1", self.proc.rest_port, self.proc.grpc_port)


@contextlib.contextmanager
def router_stack(root, zoo, initial: str = "v1", model: str = MODEL):
    """``{"groups": {group: Group}, "router": Router, "config": RouterConfig}``; every replica
    starts on ``zoo``'s ``initial`` model as version 1 of ``model``."""
    from devservers import free_port
    from tfmlops.deploy.router import Router, RouterConfig

    groups = [Group(root, name, group, zoo, initial, model)
              for name, group in (("stable-0", "stable"), ("canary-0", "canary"))]
    router_proc = None
    try:
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
        yield {"groups": {g.group: g for g in groups}, "router": router, "config": config}
    finally:
        if router_proc is not None:
            router_proc.terminate()
            router_proc.wait(10)
        for g in groups:
            g.endpoint.close()
            g.proc.terminate()


def served(stack, model: str = MODEL) -> dict:
    """The versions each group serves."""
    from tfmlops.deploy.status import serving_versions

    return {g: tuple(serving_versions(s.endpoint.client, model)) for g, s in stack["groups"].items()}
