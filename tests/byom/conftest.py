"""Shared by the bring-your-own-model e2e tests: one ``tf_offline_retrain`` run per shipped example
module (``trained``, package scope), against the session's real MLflow server and tf-serving-local;
the serving, optimization and card tests all reuse those registered versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# module -> (dataset URI, the run's form values beyond the defaults, the plot its task logs)
EXAMPLES_ALL = {
    "digits_cnn": ("sklearn-digits", {}, "confusion_matrix.png"),
    "churn": ("examples/churn.parquet", {}, "roc_curve.png"),
    "diabetes": ("examples/diabetes", {}, "residuals.png"),
    "reviews": ("examples/reviews.jsonl", {}, "confusion_matrix.png"),
}
ROWS = 16
# BYOM_ONLY=churn,diabetes trains only those (a quicker loop while working on one kind of model)
EXAMPLES = {k: v for k, v in EXAMPLES_ALL.items()
            if k in os.environ.get("BYOM_ONLY", ",".join(EXAMPLES_ALL)).split(",")}


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tf_offline_retrain.py"))
    assert not bag.import_errors
    return bag.get_dag("tf_offline_retrain")


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="package")
def connections(airflow_db, mlflow_server, serving_server):
    """``mlflow_default`` / ``tf_serving_default`` for the package's runs (the top conftest's fixture is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        host, port = mlflow_server.removeprefix("http://").split(":")
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": host, "port": int(port)}))
        mp.setenv("AIRFLOW_CONN_TF_SERVING_DEFAULT", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": serving_server["rest_port"],
            "extra": {"grpc_port": serving_server["grpc_port"], "models_root": str(serving_server["models_root"]),
                      "model_config_file": str(serving_server["config_file"])}}))
        yield


@pytest.fixture(scope="package")
def trained(connections, mlflow_server):
    """One tf_offline_retrain run per example module: {module: (dag run, task states)}."""
    runs = {}
    for name, (uri, conf, _) in EXAMPLES.items():
        run = load_dag().test(run_conf={"model_name": f"byom_{name}", "model_module": f"tfmlops_examples.{name}",
                                        "dataset_uri": uri, **conf})
        runs[name] = (run, states(run))
    return runs




def require_tfjs():
    """Skip (saying what to install) without node + web/node_modules + chromium: the TF.js checks."""
    from tfmlops.formats import runtimes

    try:
        runtimes.node_binary()
        runtimes.chromium_binary()
    except runtimes.RuntimeUnavailable as exc:
        pytest.skip(f"TF.js runtime unavailable: {exc}")
