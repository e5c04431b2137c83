"""One TF Serving replica as a rollout (or an Airflow hook, or a docker fleet) addresses it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .client import ServingClient
from .live_metrics import DEFAULT_METRICS_PATH


@dataclass
class Endpoint:
    """One TF Serving replica. ``models_root`` is where versions are published as this process
    sees it (local path or ``s3://``), ``server_models_root`` the same place as the server sees it
    (e.g. ``/models`` in a container). ``model_config_file`` is the server's ModelServerConfig file:
    it is rewritten with every change (so a restart keeps the state) and is where the current
    config is read from; without it the rollout keeps the config in ``config``.

    ``request_log_prefix`` (a folder as the server sees it; tf-serving-local only: real TF Serving
    refuses a ``logging_config``) turns request logging on for every model this endpoint is given:
    ``<prefix>/<model>/requests-….tfrecord`` at ``request_log_sampling_rate``.

    ``metrics_path`` is where the server exports its Prometheus metrics on the REST port (the
    ``path`` of its ``--monitoring_config_file``)."""

    name: str
    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    models_root: str = ""
    server_models_root: str | None = None
    model_config_file: str | None = None
    timeout: float = 30.0
    metrics_path: str = DEFAULT_METRICS_PATH
    request_log_prefix: str | None = None
    request_log_sampling_rate: float = 0.1
    config: object = field(default=None, repr=False)
    _client: ServingClient | None = field(default=None, repr=False, compare=False)

    @property
    def client(self) -> ServingClient:
        if self._client is None:
            self._client = ServingClient(self.host, self.rest_port, self.grpc_port, timeout=self.timeout)
        return self._client

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}/{self.metrics_path.lstrip('/')}"

    @property
    def instance(self) -> str:
        """``host:port`` of the REST port: the ``instance`` label Prometheus gives this replica."""
        return f"{self.host}:{self.rest_port}"

    def base_path(self, model: str) -> str:
        return f"{str(self.server_models_root or self.models_root).rstrip('/')}/{model}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
