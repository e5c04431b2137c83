"""A whole Airflow for the end-to-end tests of the serving DAGs and of what people see: API
server (with the project plugin's webhook receiver), scheduler, DAG processor and triggerer,
LocalExecutor, on a SQLite DB of its own (a copy of the session's freshly migrated one), parsing
the two serving DAGs, ``tf_hparam_search`` and the test DAGs of ``tests/rollout/dags``; wired to
the session's MLflow and TF Serving-compatible server, its notifications sent to the session's SMTP
server and webhook receiver. Started once for the package (``airflow`` fixture in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import requests

import devservers

USER = "admin"  # triggers the runs
APPROVER = "alice"  # answers approvals: the person who triggered a run may not approve it
ROOT = Path(__file__).resolve().parents[2]
DAGS = [ROOT / "dags" / "tf_serving_reconcile.py", ROOT / "dags" / "tf_serving_rollout.py",
        ROOT / "dags" / "tf_hparam_search.py", *sorted((Path(__file__).parent / "dags").glob("*.py"))]
RECONCILED = "reconciled"  # the reconciler's model (the session's registry holds other tests' models)
NOTIFY_SECRET = "e2e-chat-secret"
PROBE_DEADLINE_S = 3  # tests/rollout/dags/tfmlops_notify_probe.py: a deadline that passes


def airflow_env(home: Path, port: int, mlflow_server: str, serving_server: dict, webhook_secret: str) -> dict:
    host, mlflow_port = mlflow_server.removeprefix("http://").split(":")
    return {
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin,{APPROVER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__TFMLOPS__MLFLOW_WEBHOOK_SECRET": webhook_secret,
        "TFMLOPS_RECONCILE_POLL_S": "5",
        "TFMLOPS_RECONCILE_MODELS": RECONCILED,
        "TFMLOPS_PROBE_DEADLINE_MIN": str(PROBE_DEADLINE_S / 60),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": host, "port": int(mlflow_port)}),
        "AIRFLOW_CONN_TF_SERVING_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": serving_server["rest_port"],
            "extra": {"grpc_port": serving_server["grpc_port"], "models_root": str(serving_server["models_root"]),
                      "model_config_file": str(serving_server["config_file"])}}),
    }


@contextlib.contextmanager
def airflow_stack(home: Path, airflow_db: Path, mlflow_server: str, serving_server: dict, notify_sinks):
    shutil.copyfile(airflow_db / "airflow-migrated.db", home / "airflow.db")
    (home / "dags").mkdir()
    for dag_file in DAGS:
        (home / "dags" / dag_file.name).symlink_to(dag_file)
    passwords = {USER: secrets.token_urlsafe(12), APPROVER: secrets.token_urlsafe(12)}
    (home / "passwords.json").write_text(json.dumps(passwords))
    port, secret = devservers.free_port(), secrets.token_urlsafe(24)
    env = {**airflow_env(home, port, mlflow_server, serving_server, secret), **notify_sinks.airflow_env(NOTIFY_SECRET)}
    airflow = str(devservers.BIN / "airflow")
    subprocess.run([airflow, "pools", "set", "--include-deferred", "tf_serving_rollout", "1", "rollouts"],
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=600)
    services = {"airflow-api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port)],
                "airflow-scheduler": ["scheduler", "--skip-serve-logs"],
                "airflow-dag-processor": ["dag-processor"],
                "airflow-triggerer": ["triggerer", "--skip-serve-logs"]}
    for name, args in services.items():
        devservers.start(name, [airflow, *args], home, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/api/v2/monitor/health", 180, "airflow-api-server", home)
        yield {"url": url, "api": api_session(url, USER, passwords[USER]), "home": home, "secret": secret,
               "password": passwords[USER], "approver": api_session(url, APPROVER, passwords[APPROVER]),
               "approver_password": passwords[APPROVER], "webhook": f"{url}/tfmlops/webhooks/mlflow"}
    finally:
        for name in reversed(services):
            devservers.stop(name, home)


def api_session(url: str, user: str, password: str) -> requests.Session:
    """A REST session of ``user`` (the simple auth manager's token)."""
    session = requests.Session()
    token = session.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30)
    token.raise_for_status()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return session


def wait_for(what: str, check, timeout_s: float, airflow, poll_s: float = 1.0):
    """``devservers.wait_for``, failing with the tails of the triggerer's and scheduler's logs."""
    try:
        return devservers.wait_for(check, timeout_s, what, poll_s)
    except TimeoutError as exc:
        logs = "".join(f"\n--- {n} ---\n{devservers.log_tail(n, airflow['home'], 40)}"
                       for n in ("airflow-triggerer", "airflow-scheduler"))
        raise AssertionError(f"{exc}{logs}") from None


def runs(airflow, dag_id: str) -> list[dict]:
    answer = airflow["api"].get(f"{airflow['url']}/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100}, timeout=30)
    return answer.json().get("dag_runs", []) if answer.status_code == 200 else []


def unpause(airflow, dag_id: str) -> None:
    """Unpause ``dag_id`` once the DAG processor has parsed it (a DAG is created paused)."""
    def unpaused() -> bool:
        answer = airflow["api"].patch(f"{airflow['url']}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=30)
        return answer.status_code == 200 and not answer.json()["is_paused"]
    wait_for(f"{dag_id} parsed and unpaused", unpaused, 180, airflow, poll_s=2)


def dag_ready(airflow, dag_id: str) -> bool:
    answer = airflow["api"].get(f"{airflow['url']}/api/v2/dags/{dag_id}", timeout=30)
    return answer.status_code == 200 and not answer.json()["is_paused"]
