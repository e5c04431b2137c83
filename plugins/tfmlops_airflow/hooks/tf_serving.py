"""``TFServingHook``: a TensorFlow Serving endpoint of an Airflow connection."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook

DEFAULT_REST_PORT, DEFAULT_GRPC_PORT = 8501, 8500  # TF Serving's


class TFServingHook(BaseHook):
    """Connection: ``host``, ``port`` (REST, TF Serving's 8501) and in ``extra``:
    ``grpc_port`` (8500), ``models_root`` (where version directories are published, as this worker
    sees it: a folder or ``s3://``), ``model_config_file`` (the ModelServerConfig file the server
    reads) and optionally ``server_models_root`` (the same folder as the server sees it, e.g.
    ``/models`` in a container) and ``metrics_path`` (where the server exports its Prometheus
    metrics, TF Serving's ``/monitoring/prometheus/metrics`` by default).

    :meth:`endpoint` is the endpoint as :mod:`tfmlops.deploy` drives it (publish, config reloads,
    rollouts, checks); :attr:`client` its REST + gRPC client (status, metadata, predict, reload).
    """

    conn_name_attr = "tf_serving_conn_id"
    default_conn_name = "tf_serving_default"
    conn_type = "http"
    hook_name = "TensorFlow Serving"

    def __init__(self, tf_serving_conn_id: str = default_conn_name, timeout: float = 30.0):
        super().__init__()
        self.tf_serving_conn_id = tf_serving_conn_id
        self.timeout = timeout

    @cached_property
    def connection(self):
        return self.get_connection(self.tf_serving_conn_id)

    def endpoint(self):
        """The connection as a :class:`tfmlops.deploy.endpoint.Endpoint` named after the connection id
        (one per hook: its client is shared). ``models_root`` is empty when the connection has none
        (enough to probe or predict, not to publish)."""
        return self._endpoint

    @cached_property
    def _endpoint(self):
        from tfmlops.deploy.endpoint import Endpoint

        conn = self.connection
        extra = conn.extra_dejson
        return Endpoint(name=self.tf_serving_conn_id, host=conn.host or "127.0.0.1",
                        rest_port=int(conn.port or DEFAULT_REST_PORT),
                        grpc_port=int(extra.get("grpc_port", DEFAULT_GRPC_PORT)),
                        models_root=extra.get("models_root", ""),
                        server_models_root=extra.get("server_models_root") or None,
                        model_config_file=extra.get("model_config_file") or None, timeout=self.timeout,
                        request_log_prefix=extra.get("request_log_prefix") or None,
                        request_log_sampling_rate=float(extra.get("request_log_sampling_rate", 0.1)),
                        **({"metrics_path": extra["metrics_path"]} if extra.get("metrics_path") else {}))

    @property
    def client(self):
        """The endpoint's :class:`tfmlops.deploy.client.ServingClient` (REST and gRPC)."""
        return self.endpoint().client

    def close(self) -> None:
        """Close the client's connections (REST session, gRPC channel)."""
        if "_endpoint" in self.__dict__:
            self._endpoint.close()
