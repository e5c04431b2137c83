"""Every DAG triggers from the Airflow UI's form with its default values, in a real browser.

A real ``airflow api-server`` (the UI and REST API) runs on the session's throw-away metadata DB
with the DAGs serialized into it; headless Chromium (Debian's, driven by playwright-core) logs in
through the login page and, for every DAG, opens **Trigger**, checks that the form accepts its
defaults (no invalid field, the Trigger button enabled), submits it and lands on the new run; then
it triggers ``tf_offline_retrain`` once more with a non-default example model typed into its form.
The REST API then shows each run with the form's defaults as its conf. No scheduler runs, so the
runs stay queued: the test is about the form, not the pipelines (their end-to-end runs are
elsewhere). Screenshots (the DAG list, every form, one run's grid, the MLflow model page) are
written to ``var/test-output/ui/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import devservers

# a real airflow api-server and headless Chromium: an end-to-end run
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "test-output" / "ui"
DAG_IDS = sorted(p.stem for p in (ROOT / "dags").glob("tf_*.py"))
USER = "admin"
MODEL = "ui_screenshot_model"
# typed into tf_offline_retrain's form: a non-default example model module and its data
FILLED = {"model_name": "ui_reviews", "model_module": "tfmlops_examples.reviews",
          "dataset_uri": "examples/reviews.jsonl"}


def browser_or_skip() -> tuple[str, str]:
    node, chromium = shutil.which("node"), shutil.which("chromium") or os.environ.get("CHROMIUM_PATH")
    if not node or not (ROOT / "web" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("needs node and web/node_modules (npm ci --prefix web)")
    if not chromium:
        pytest.skip("needs Debian's chromium (make system-deps installs it as root)")
    return node, chromium


@pytest.fixture(scope="module")
def airflow_ui(airflow_db, tmp_path_factory):
    """``airflow api-server`` on a free loopback port, the project's DAGs serialized in its DB."""
    run_dir = tmp_path_factory.mktemp("airflow-ui")
    password = secrets.token_urlsafe(16)
    passwords = run_dir / "passwords.json"
    passwords.write_text(json.dumps({USER: password}))
    port = devservers.free_port()
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port)}
    airflow = str(devservers.BIN / "airflow")
    subprocess.run([airflow, "dags", "reserialize"], check=True, env={**os.environ, **env}, capture_output=True,
                   timeout=600)
    devservers.start("airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
                     run_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/api/v2/monitor/health", 180, "airflow-api-server", run_dir)
        yield {"url": url, "password": password}
    finally:
        devservers.stop("airflow-api-server", run_dir)


@pytest.fixture(scope="module")
def registered_model(mlflow_server):
    """A registered model with one version, for the MLflow model page (no TensorFlow needed)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    experiment = client.get_experiment_by_name(MODEL) or client.get_experiment(client.create_experiment(MODEL))
    run = client.create_run(experiment.experiment_id, run_name="ui-screenshot")
    client.log_text(run.info.run_id, "placeholder model for the UI screenshot", "model/README.txt")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL, description="Registered by tests/ui for the model page screenshot.")
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return MODEL


def api(airflow_ui) -> requests.Session:
    session = requests.Session()
    token = session.post(f"{airflow_ui['url']}/auth/token", json={"username": USER, "password": airflow_ui["password"]},
                         timeout=30)
    token.raise_for_status()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return session


def test_every_dag_triggers_from_its_form_with_the_defaults(airflow_ui, mlflow_server, registered_model):
    node, chromium = browser_or_skip()
    OUT.mkdir(parents=True, exist_ok=True)
    result_file = OUT / "result.json"
    run = subprocess.run(
        [node, str(ROOT / "web" / "scripts" / "airflow_ui_check.mjs"), "--airflow", airflow_ui["url"], "--user", USER,
         "--password", airflow_ui["password"], "--dags", ",".join(DAG_IDS), "--out", str(OUT),
         "--result", str(result_file), "--grid-dag", "tf_offline_retrain", "--chromium", chromium,
         "--mlflow-page", f"{mlflow_server}/#/models/{registered_model}", "--mlflow-text", registered_model,
         "--fill-dag", "tf_offline_retrain", "--fill", json.dumps(FILLED)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    print("screenshots:", *result["screenshots"], sep="\n  ", file=sys.stderr)
    assert "error" not in result, result
    assert set(result["dags"]) == set(DAG_IDS)
    for dag_id, seen in result["dags"].items():
        assert seen["errors"] == [] and seen["trigger_enabled"], f"{dag_id}: the form rejects its defaults: {seen}"
        assert seen["landed_on"].startswith(f"/dags/{dag_id}/runs/"), seen

    session = api(airflow_ui)
    for dag_id, seen in result["dags"].items():
        runs = session.get(f"{airflow_ui['url']}/api/v2/dags/{dag_id}/dagRuns", timeout=30).json()["dag_runs"]
        (triggered,) = [r for r in runs if r["dag_run_id"] == seen["run_id"]]
        assert triggered["run_type"] == "manual" and triggered["triggering_user_name"] == USER
        defaults = {k: v["value"] for k, v in session.get(
            f"{airflow_ui['url']}/api/v2/dags/{dag_id}/details", timeout=30).json()["params"].items()}
        assert triggered["conf"] == defaults, dag_id

    # a non-default example model, typed into tf_offline_retrain's form, reaches the run's conf
    assert result["filled"]["errors"] == [], result["filled"]
    runs = session.get(f"{airflow_ui['url']}/api/v2/dags/tf_offline_retrain/dagRuns", timeout=30).json()["dag_runs"]
    (filled,) = [r for r in runs if r["dag_run_id"] == result["filled"]["run_id"]]
    assert {k: filled["conf"][k] for k in FILLED} == FILLED and filled["conf"]["hyperparameters"] == {}

    expected = {"dag_list.png", "run_grid_tf_offline_retrain.png", "mlflow_model.png",
                "trigger_form_tf_offline_retrain_filled.png", *(f"trigger_form_{d}.png" for d in DAG_IDS)}
    assert {Path(p).name for p in result["screenshots"]} == expected
    assert all(Path(p).stat().st_size > 10_000 for p in result["screenshots"])  # rendered pages, not blanks
    assert registered_model in result["mlflow_text"]
