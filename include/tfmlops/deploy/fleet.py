"""A fleet of ``tensorflow/serving`` containers driven with the docker SDK (``docker.from_env()``).

Each replica is one container with its gRPC (8500) and REST (8501) ports published on the host,
the shared models directory mounted read-only at ``/models`` and its own ModelServerConfig file
(``<state_dir>/<replica>/models.config``, mounted at ``/config``). Containers carry labels
(``tfmlops.fleet``, ports, paths), so a fleet is found again from its name alone
(``DockerFleet.from_env(name)``) and handed to the rollout as ``Endpoint`` objects
(``endpoints()``), which reloads each replica's config over gRPC and rewrites its file.

``replace(i)`` swaps one container for a fresh one (e.g. a new image) and waits until it is
healthy before the next: a rolling restart that keeps all-but-one replicas serving.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .endpoint import Endpoint

LABEL = "tfmlops.fleet"
DEFAULT_IMAGE = "tensorflow/serving:2.19.0"


class FleetError(RuntimeError):
    """The docker engine cannot be reached, or a replica did not become healthy (numbers in the message)."""


def docker_client():
    """``docker.from_env()``, pinged; raises FleetError naming the engine that did not answer."""
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception as exc:  # docker.errors.DockerException and connection errors
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise FleetError(f"no Docker engine answers at {host}: {type(exc).__name__}: {exc}") from exc


@dataclass
class Replica:
    name: str
    rest_port: int
    grpc_port: int
    config_file: str
    container_id: str = ""


@dataclass
class DockerFleet:
    name: str
    models_dir: str = ""
    state_dir: str = ""
    image: str = DEFAULT_IMAGE
    host: str = "127.0.0.1"
    client: object = field(default=None, repr=False)
    replicas: list = field(default_factory=list)

    # ------------------------------------------------------------------ discovery
    @classmethod
    def from_env(cls, name: str, **kwargs) -> "DockerFleet":
        """The fleet ``name`` as its running containers describe it (labels)."""
        fleet = cls(name=name, client=kwargs.pop("client", None) or docker_client(), **kwargs)
        fleet.refresh()
        return fleet

    def _docker(self):
        if self.client is None:
            self.client = docker_client()
        return self.client

    def containers(self) -> list:
        return sorted(self._docker().containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}),
                      key=lambda c: c.name)

    def refresh(self) -> None:
        self.replicas = []
        for c in self.containers():
            lb = c.labels
            self.models_dir = self.models_dir or lb.get("tfmlops.models_dir", "")
            self.image = lb.get("tfmlops.image", self.image)
            self.replicas.append(Replica(c.name, int(lb["tfmlops.rest_port"]), int(lb["tfmlops.grpc_port"]),
                                         lb["tfmlops.config_file"], c.id))

    # ------------------------------------------------------------------ lifecycle
    def _run(self, replica: Replica):
        Path(replica.config_file).parent.mkdir(parents=True, exist_ok=True)
        if not Path(replica.config_file).exists():
            Path(replica.config_file).write_text("model_config_list {\n}\n")
        labels = {LABEL: self.name, "tfmlops.rest_port": str(replica.rest_port),
                  "tfmlops.grpc_port": str(replica.grpc_port), "tfmlops.config_file": replica.config_file,
                  "tfmlops.models_dir": self.models_dir, "tfmlops.image": self.image}
        container = self._docker().containers.run(
            self.image, detach=True, name=replica.name, labels=labels,
            ports={"8500/tcp": (self.host, replica.grpc_port), "8501/tcp": (self.host, replica.rest_port)},
            volumes={self.models_dir: {"bind": "/models", "mode": "ro"},
                     str(Path(replica.config_file).parent): {"bind": "/config", "mode": "ro"}},
            command=["--model_config_file=/config/" + Path(replica.config_file).name,
                     "--file_system_poll_wait_seconds=1",
                     # a restarted container reads a config with the rollout's labels before its
                     # versions load: TF Serving refuses that without this flag
                     "--allow_version_labels_for_unavailable_models"])
        replica.container_id = container.id
        return container

    def start(self, replicas: int, rest_port: int = 8501, grpc_port: int = 8500, timeout_s: float = 120) -> None:
        """Start ``replicas`` containers (ports ``rest_port + i`` / ``grpc_port + i``), each healthy
        before the next; containers of this fleet that already run are kept."""
        existing = {r.name for r in self.replicas}
        for i in range(replicas):
            name = f"{self.name}-{i}"
            if name in existing:
                continue
            rep = Replica(name, rest_port + i, grpc_port + i,
                          str(Path(self.state_dir or self.models_dir) / name / "models.config"))
            self._run(rep)
            self.replicas.append(rep)
            self.wait_healthy(rep, timeout_s)

    def healthy(self, replica: Replica) -> bool:
        try:
            c = self._docker().containers.get(replica.container_id or replica.name)
            if c.status != "running":
                return False
            r = requests.get(f"http://{self.host}:{replica.rest_port}/v1/models/_", timeout=2)
            return r.status_code in (200, 404)  # the REST server answers: the process is up
        except Exception:  # noqa: BLE001
            return False

    def wait_healthy(self, replica: Replica, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy(replica):
            if time.monotonic() > deadline:
                logs = ""
                try:
                    logs = self._docker().containers.get(replica.name).logs(tail=20).decode(errors="replace")
                except Exception:  # noqa: BLE001
                    pass
                raise FleetError(f"replica {replica.name} not healthy after {timeout_s:.0f}s "
                                 f"(REST port {replica.rest_port}):\n{logs}")
            time.sleep(1)

    def replace(self, index: int, image: str | None = None, timeout_s: float = 120) -> Replica:
        """Stop and remove replica ``index``, start it again (same ports, mounts, config file;
        optionally a new image) and wait until it is healthy."""
        rep = self.replicas[index]
        old = self._docker().containers.get(rep.container_id or rep.name)
        old.stop(timeout=30)
        old.remove()
        if image:
            self.image = image
        self._run(rep)
        self.wait_healthy(rep, timeout_s)
        return rep

    def rolling_replace(self, image: str | None = None, timeout_s: float = 120) -> None:
        for i in range(len(self.replicas)):
            self.replace(i, image, timeout_s)

    def stop(self) -> None:
        for c in self.containers():
            c.stop(timeout=30)
            c.remove()
        self.replicas = []

    # ------------------------------------------------------------------ rollout
    def endpoints(self, timeout: float = 60.0) -> list[Endpoint]:
        if not self.replicas:
            raise FleetError(f"fleet {self.name!r} has no containers (label {LABEL}={self.name})")
        return [Endpoint(name=r.name, host=self.host, rest_port=r.rest_port, grpc_port=r.grpc_port,
                         models_root=self.models_dir, server_models_root="/models",
                         model_config_file=r.config_file, timeout=timeout) for r in self.replicas]
