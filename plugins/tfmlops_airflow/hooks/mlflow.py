"""``MLflowHook``: the MLflow tracking and registry server of an Airflow connection."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook


class MLflowHook(BaseHook):
    """Connection: host and port of the MLflow server (schema ``http`` by default), or
    ``extra.tracking_uri`` to give the URI whole (e.g. ``https://mlflow.example.com/``)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name):
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        conn = self.get_connection(self.mlflow_conn_id)
        explicit = conn.extra_dejson.get("tracking_uri")
        if explicit:
            return explicit
        port = f":{conn.port}" if conn.port else ""
        return f"{conn.schema or 'http'}://{conn.host}{port}"
