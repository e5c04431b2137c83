"""A fleet of ``tensorflow/serving`` containers driven with the docker SDK (``docker.from_env()``).

Each replica is one container with the shared models directory mounted read-only at ``/models``
and its own ModelServerConfig file (``<state_dir>/<replica>/models.config``, mounted at
``/config``). Its gRPC (8500) and REST (8501) ports are published on the host
(``network_mode="bridge"``, the default), or, on an engine without the bridge network (dockerd
``--bridge=none``), the container shares the host's network and the server listens on the
replica's ports itself (``network_mode="host"``: ``--port`` / ``--rest_api_port``). Containers
carry labels (``tfmlops.fleet``, ports, paths, network mode, environment), so a fleet is found
again from its name alone (``DockerFleet.from_env(name)``) and handed to the rollout as
``Endpoint`` objects (``endpoints()``), which reloads each replica's config over gRPC and
rewrites its file.

``replace(i)`` swaps one container for a fresh one (e.g. a new image) and waits until it is
ready: its REST and gRPC ports answer and every version its config file asks for (each
``specific`` version, each labelled version, else at least one) is AVAILABLE again.
``rolling_replace`` then leaves it ``min_ready_s`` before taking the next one down, so a rolling
restart keeps all-but-one replicas serving every model while clients fail over between them
(measured on a real engine: 0 failed requests, ``tests/rollout/test_fleet_docker.py``).
Found on a real engine: with a REST-only check, the next replica went down while gRPC clients
could not yet reach the restarted one (hundreds of failed gRPC requests); the pause covers the
clients' reconnect back-off, which grows with the time a replica was down.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .endpoint import Endpoint

LABEL = "tfmlops.fleet"
DEFAULT_IMAGE = "tensorflow/serving:2.19.0"


NETWORK_MODES = ("bridge", "host")


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
    network_mode: str = "bridge"
    environment: dict = field(default_factory=dict)
    client: object = field(default=None, repr=False)
    replicas: list = field(default_factory=list)

    def __post_init__(self):
        if self.network_mode not in NETWORK_MODES:
            raise ValueError(f"network_mode must be one of {NETWORK_MODES}, got {self.network_mode!r}")

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
            self.network_mode = lb.get("tfmlops.network_mode", self.network_mode)
            self.environment = json.loads(lb.get("tfmlops.environment", "null")) or self.environment
            self.replicas.append(Replica(c.name, int(lb["tfmlops.rest_port"]), int(lb["tfmlops.grpc_port"]),
                                         lb["tfmlops.config_file"], c.id))

    # ------------------------------------------------------------------ lifecycle
    def _run(self, replica: Replica):
        Path(replica.config_file).parent.mkdir(parents=True, exist_ok=True)
        if not Path(replica.config_file).exists():
            Path(replica.config_file).write_text("model_config_list {\n}\n")
        labels = {LABEL: self.name, "tfmlops.rest_port": str(replica.rest_port),
                  "tfmlops.grpc_port": str(replica.grpc_port), "tfmlops.config_file": replica.config_file,
                  "tfmlops.models_dir": self.models_dir, "tfmlops.image": self.image,
                  "tfmlops.network_mode": self.network_mode, "tfmlops.environment": json.dumps(self.environment)}
        command = ["--model_config_file=/config/" + Path(replica.config_file).name,
                   "--file_system_poll_wait_seconds=1",
                   # a restarted container reads a config with the rollout's labels before its
                   # versions load: TF Serving refuses that without this flag
                   "--allow_version_labels_for_unavailable_models"]
        if self.network_mode == "host":  # the host's ports: the server listens on the replica's own
            network = {"network_mode": "host"}
            command += [f"--port={replica.grpc_port}", f"--rest_api_port={replica.rest_port}"]
        else:
            self._check_bridge()
            network = {"ports": {"8500/tcp": (self.host, replica.grpc_port),
                                 "8501/tcp": (self.host, replica.rest_port)}}
        container = self._docker().containers.run(
            self.image, detach=True, name=replica.name, labels=labels, environment=self.environment,
            volumes={self.models_dir: {"bind": "/models", "mode": "ro"},
                     str(Path(replica.config_file).parent): {"bind": "/config", "mode": "ro"}},
            command=command, **network)
        replica.container_id = container.id
        return container

    def _check_bridge(self) -> None:
        """Published ports need the engine's default bridge network: without it (dockerd
        ``--bridge=none``) a container starts but its ports never answer, so say it up front."""
        if not self._docker().networks.list(names=["bridge"]):
            raise FleetError("the Docker engine has no bridge network (dockerd --bridge=none?): ports cannot be "
                             "published; use DockerFleet(..., network_mode='host')")

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
            # the REST server answers (the process is up), and so does the gRPC one
            return r.status_code in (200, 404) and self._grpc_answers(replica)
        except Exception:  # noqa: BLE001
            return False

    def _grpc_answers(self, replica: Replica) -> bool:
        from .client import ServingClient, ServingError

        with ServingClient(self.host, None, replica.grpc_port, timeout=2) as client:  # a fresh channel
            try:
                client.status_grpc("_")
            except ServingError as exc:
                return exc.grpc_code in ("NOT_FOUND", "INVALID_ARGUMENT")
        return True

    def missing_versions(self, replica: Replica) -> dict[str, list]:
        """{model: versions its config file asks for that are not AVAILABLE yet} ("any" when the
        policy is latest/all and none is); {} when the replica serves everything it should."""
        from tfmlops.serving.config import load_config

        from .client import ServingClient
        from .status import version_states

        if not Path(replica.config_file).exists():
            return {}
        missing = {}
        with ServingClient(self.host, replica.rest_port, None, timeout=5) as client:
            for entry in load_config(replica.config_file).model_config_list.config:
                states = version_states(client, entry.name)
                available = {v for v, (state, _) in states.items() if state == "AVAILABLE"}
                wanted = set(entry.version_labels.values())
                if entry.model_version_policy.WhichOneof("policy_choice") == "specific":
                    wanted |= set(entry.model_version_policy.specific.versions)
                if wanted - available:
                    missing[entry.name] = sorted(wanted - available)
                elif not available:
                    missing[entry.name] = ["any"]
        return missing

    def wait_healthy(self, replica: Replica, timeout_s: float = 120) -> None:
        """Until the replica's REST port answers and it serves every version its config asks for."""
        deadline = time.monotonic() + timeout_s
        missing: dict = {"(server)": ["REST port not answering"]}
        while True:
            if self.healthy(replica):
                try:
                    missing = self.missing_versions(replica)
                except Exception as exc:  # noqa: BLE001 - a server still starting: refused, reset, 5xx
                    missing = {"(status)": [f"{type(exc).__name__}: {exc}"]}
                if not missing:
                    return
            if time.monotonic() > deadline:
                logs = ""
                try:
                    logs = self._docker().containers.get(replica.name).logs(tail=20).decode(errors="replace")
                except Exception:  # noqa: BLE001 - the logs only decorate the error
                    pass
                raise FleetError(f"replica {replica.name} not ready after {timeout_s:.0f}s (REST port "
                                 f"{replica.rest_port}; not available: {missing}):\n{logs}")
            time.sleep(0.5)

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

    def remove(self, index: int) -> Replica:
        """Stop and remove replica ``index`` (scaling the fleet down by one); its config file stays."""
        rep = self.replicas.pop(index)
        c = self._docker().containers.get(rep.container_id or rep.name)
        c.stop(timeout=30)
        c.remove()
        return rep

    def rolling_replace(self, image: str | None = None, timeout_s: float = 120, min_ready_s: float = 5.0) -> None:
        """Replace every replica in turn. Each must have been ready ``min_ready_s`` before the next
        goes down (as Kubernetes' ``minReadySeconds``): clients that saw it refuse connections
        reconnect only after their back-off (gRPC: seconds), and meanwhile need the others."""
        for i in range(len(self.replicas)):
            if i:
                time.sleep(min_ready_s)
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
