"""MLflow with authentication, as the production stack runs it: a real ``mlflow server --app-name
basic-auth`` configured by docker/mlflow/basic_auth.ini, reached by the project's hook and registry
code with the credentials of an Airflow connection; without them it answers 401."""

from __future__ import annotations

import json
import secrets

import pytest
import requests

import devservers
from conftest import ROOT

# a real mlflow server with basic auth: an end-to-end run
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = (ROOT / "docker" / "mlflow" / "basic_auth.ini").read_text()
    assert "database_uri = sqlite:////var/lib/mlflow-auth/basic_auth.db" in ini  # the compose volume
    (root / "basic_auth.ini").write_text(ini.replace("/var/lib/mlflow-auth", str(root)))
    password = secrets.token_urlsafe(16)
    port = devservers.free_port()
    argv = [*devservers.mlflow_server_argv(root, port), "--app-name", "basic-auth"]
    env = {**devservers.mlflow_server_env(), "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(16)}
    devservers.start("mlflow", argv, root, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/health", 120, "mlflow", root)
        yield {"url": url, "port": port, "password": password}
    finally:
        devservers.stop("mlflow", root)


def test_anonymous_requests_are_refused(auth_mlflow):
    response = requests.get(f"{auth_mlflow['url']}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            timeout=30)
    assert response.status_code == 401
    wrong = requests.get(f"{auth_mlflow['url']}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                         auth=("admin", "wrong"), timeout=30)
    assert wrong.status_code == 401


def test_the_hook_carries_the_connection_credentials(auth_mlflow, monkeypatch):
    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops_airflow.hooks import MLflowHook

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # restored after the test (the hook sets them)
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_AUTH", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": auth_mlflow["port"], "login": "admin",
        "password": auth_mlflow["password"]}))
    uri = MLflowHook("mlflow_auth").tracking_uri
    assert uri == auth_mlflow["url"]  # no credentials in the URI (it lands in logs and tags)
    run_id = registry.start_run(uri, "auth-check", "run", {"airflow.dag_id": "test"})
    registry.log_metrics(uri, run_id, {"accuracy": 0.5})
    assert MlflowClient(uri).get_run(run_id).data.metrics == {"accuracy": 0.5}
