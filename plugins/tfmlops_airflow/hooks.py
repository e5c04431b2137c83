"""Hooks: one per external system, each reading its Airflow connection.

- ``MLflowHook`` (``mlflow_default``): the tracking/registry server URI.
- ``TFServingHook`` (``tf_serving_default``): a TF Serving endpoint (REST + gRPC) and where its
  versions are published; works the same against real TensorFlow Serving and the local server.
- S3 goes through the amazon provider's ``S3Hook`` (``aws_default``).

Nothing heavy is imported at module level: DAG files import this module at parse time.
"""

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


class TFServingHook(BaseHook):
    """Connection: ``host``, ``port`` (REST, TF Serving's 8501) and in ``extra``:
    ``grpc_port`` (8500), ``models_root`` (where version directories are published, as this worker
    sees it), ``model_config_file`` (the ModelServerConfig file the server reads) and optionally
    ``server_models_root`` (the same folder as the server sees it, e.g. ``/models`` in a container).
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

    @property
    def extra(self) -> dict:
        return self.connection.extra_dejson

    @property
    def models_root(self) -> str:
        root = self.extra.get("models_root")
        if not root:
            raise ValueError(f"connection {self.tf_serving_conn_id!r} has no extra.models_root")
        return root

    @property
    def server_models_root(self) -> str:
        return self.extra.get("server_models_root") or self.models_root

    @property
    def model_config_file(self) -> str | None:
        return self.extra.get("model_config_file")

    @cached_property
    def client(self):
        from tfmlops.serving.client import ServingClient

        conn = self.connection
        return ServingClient(host=conn.host or "127.0.0.1", rest_port=int(conn.port or 8501),
                             grpc_port=int(self.extra.get("grpc_port", 8500)), timeout=self.timeout)

    # The serving API, over the connection's endpoint (see tfmlops.serving.client for details).
    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """Model status JSON, as ``GET /v1/models/{model}[/versions/{n}]`` returns it."""
        return self.client.status(model, version=version, label=label)

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self.client.metadata(model, version=version, label=label)

    def predict_rest(self, model: str, instances, version: int | None = None, label: str | None = None,
                     signature_name: str | None = None):
        return self.client.predict_rest(model, instances, version=version, label=label,
                                        signature_name=signature_name)

    def predict_grpc(self, model: str, inputs, version: int | None = None, label: str | None = None,
                     signature_name: str = "serving_default") -> dict:
        return self.client.predict_grpc(model, inputs, version=version, label=label, signature_name=signature_name)

    def wait_until_available(self, model: str, version: int, timeout_s: float = 120.0) -> None:
        """Raise ``ModelNotAvailableError`` (state, error) if ``version`` ends or times out first."""
        self.client.wait_until_available(model, version, timeout_s=timeout_s)

    def reload_config(self, model_server_config) -> None:
        """``ModelService.HandleReloadConfigRequest`` with a ModelServerConfig (or its text)."""
        self.client.reload_config(model_server_config)


def s3_client_for(uri: str, aws_conn_id: str = "aws_default"):
    """A boto3 S3 client from the Airflow connection when ``uri`` is on S3, else None."""
    if not str(uri).startswith("s3://"):
        return None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()
