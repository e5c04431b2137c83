"""``PrometheusHook``: a Prometheus server of an Airflow connection (the replicas' live metrics)."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

DEFAULT_PORT = 9090  # Prometheus'


class PrometheusHook(BaseHook):
    """Connection: ``schema`` (``http``), ``host``, ``port`` (9090), an optional path prefix in
    ``extra.path_prefix`` (a Prometheus behind a proxy), ``login``/``password`` for basic auth, and
    in ``extra``: ``timeout`` (seconds per query, 10) and ``selector`` (label matchers added to
    every query, e.g. ``job="tf-serving"``).

    Its API is :class:`tfmlops.deploy.live_metrics.PrometheusClient`'s: :meth:`query` (PromQL),
    :meth:`traffic` (a model's request rate, error rate and latency percentiles per replica over a
    window) and :meth:`targets_up`; :attr:`client` is that client. :meth:`configured` says whether
    the connection exists (the health check reads Prometheus only then).
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name):
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id

    @classmethod
    def configured(cls, prometheus_conn_id: str = default_conn_name) -> bool:
        try:
            cls.get_connection(prometheus_conn_id)
        except AirflowNotFoundException:
            return False
        return True

    @cached_property
    def connection(self):
        return self.get_connection(self.prometheus_conn_id)

    @cached_property
    def client(self):
        """The :class:`~tfmlops.deploy.live_metrics.PrometheusClient` of the connection."""
        from tfmlops.deploy.live_metrics import PrometheusClient

        conn = self.connection
        extra = conn.extra_dejson
        prefix = str(extra.get("path_prefix", "")).strip("/")
        url = f"{conn.schema or 'http'}://{conn.host or '127.0.0.1'}:{int(conn.port or DEFAULT_PORT)}"
        return PrometheusClient(f"{url}/{prefix}" if prefix else url, timeout=float(extra.get("timeout", 10.0)),
                                auth=(conn.login, conn.password or "") if conn.login else None,
                                selector=str(extra.get("selector", "")))

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        return self.client.query(promql, at)

    def traffic(self, model: str, window_s: int, at: float | None = None) -> dict:
        return self.client.traffic(model, window_s, at)

    def targets_up(self, at: float | None = None) -> dict[str, float]:
        return self.client.targets_up(at)

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
