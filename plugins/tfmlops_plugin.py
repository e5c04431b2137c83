"""The project's Airflow plugin: the receiver of MLflow's registry webhooks
(:mod:`tfmlops_airflow.webhooks`), mounted by the API server at ``/tfmlops``."""

from airflow.plugins_manager import AirflowPlugin

from tfmlops_airflow.webhooks import app


class TFMLOpsPlugin(AirflowPlugin):
    name = "tfmlops"
    fastapi_apps = [{"app": app, "url_prefix": "/tfmlops", "name": "MLflow registry webhooks"}]
