"""``MLflowHook``: the MLflow tracking and registry server of an Airflow connection."""

from __future__ import annotations

import os
from functools import cached_property

from airflow.sdk import BaseHook


class MLflowHook(BaseHook):
    """Connection: host and port of the MLflow server (schema ``http`` by default), or
    ``extra.tracking_uri`` to give the URI whole (e.g. ``https://mlflow.example.com/``); ``login`` and
    ``password`` for a server with authentication (MLflow's basic-auth app).

    MLflow's clients take credentials only from the environment (``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD``), so a connection's login and password are set there when the
    tracking URI is first read (the task process is the hook's). Without them, variables already
    in the environment apply (compose sets them for its own MLflow).
    """

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
        if conn.login:
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""
        explicit = conn.extra_dejson.get("tracking_uri")
        if explicit:
            return explicit
        port = f":{conn.port}" if conn.port else ""
        return f"{conn.schema or 'http'}://{conn.host}{port}"
