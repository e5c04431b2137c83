"""Hooks: one per external system, each the API of its system built from an Airflow connection.

- :class:`~tfmlops_airflow.hooks.mlflow.MLflowHook` (``mlflow_default``): the tracking/registry URI.
- :class:`~tfmlops_airflow.hooks.tf_serving.TFServingHook` (``tf_serving_default``): a TF Serving
  endpoint (REST + gRPC) and where its versions are published; works the same against real
  TensorFlow Serving and ``tf-serving-local``.
- :class:`~tfmlops_airflow.hooks.prometheus.PrometheusHook` (``prometheus_default``): a Prometheus
  server that scrapes the replicas (live request rate, error rate, latency percentiles).
- S3 goes through the amazon provider's ``S3Hook`` (``aws_default``): :func:`s3_client_for`.

Nothing heavy is imported at module level: DAG files import these modules at parse time.
"""

from tfmlops_airflow.hooks.mlflow import MLflowHook
from tfmlops_airflow.hooks.prometheus import PrometheusHook
from tfmlops_airflow.hooks.s3 import s3_client_for
from tfmlops_airflow.hooks.tf_serving import TFServingHook

__all__ = ["MLflowHook", "PrometheusHook", "TFServingHook", "s3_client_for"]
