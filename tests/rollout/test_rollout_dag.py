"""``tf_serving_rollout`` end to end with ``dag.test()`` against a real ``mlflow server`` and the
local TF Serving-compatible server (config-file polling on), with MLflow aliases and tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .models import register

pytestmark = pytest.mark.e2e

MODEL = "dagroll"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tf_serving_rollout.py"))
    assert not bag.import_errors
    return bag.get_dag("tf_serving_rollout")


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_rollout_dag_replace_canary_rerun_and_rollback(dag, zoo, airflow_db, airflow_connections, mlflow_server,
                                                       serving_server, tmp_path):
    from mlflow import MlflowClient

    from tfmlops.deploy.client import ServingClient
    from tfmlops.serving.config import load_config

    mlf = MlflowClient(mlflow_server)
    client = ServingClient("127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"])
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, x=zoo.holdout_x, y=zoo.holdout_y)
    conf = {"model_name": MODEL, "canary_holdout_uri": str(holdout), "canary_min_accuracy": 0.9,
            "latency_budget_ms": 5000}

    # 1. first deployment of version 1 by number, replace
    assert register(mlflow_server, zoo, "v1", MODEL) == 1
    run = dag.test(run_conf={**conf, "version": "1", "strategy": "replace"})
    assert str(run.state) == "success", states(run)
    assert [int(s["version"]) for s in client.status(MODEL)["model_version_status"]] == [1]
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "1"

    # 2. version 2 by alias, canary with holdout accuracy and latency checks
    assert register(mlflow_server, zoo, "v2", MODEL) == 2
    mlf.set_registered_model_alias(MODEL, "challenger", "2")
    run = dag.test(run_conf={**conf, "version": "challenger", "strategy": "canary"})
    assert str(run.state) == "success", states(run)
    v2 = mlf.get_model_version(MODEL, "2")
    assert {k: v2.tags[k] for k in ("serving.outcome", "serving.strategy", "serving.version")} == {
        "serving.outcome": "promoted", "serving.strategy": "canary", "serving.version": "2"}
    assert v2.tags["serving.endpoints"] == "tf_serving_default"
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert mlf.get_model_version_by_alias(MODEL, "previous").version == "1"
    np.testing.assert_allclose(client.predict_rest(MODEL, zoo.smoke["v2"]["instances"], label="stable"),
                               zoo.out["v2"], atol=1e-5)

    # 3. re-running the same rollout leaves serving and registry as they are
    config_before = load_config(serving_server["config_file"])
    run = dag.test(run_conf={**conf, "version": "2", "strategy": "canary"})
    assert str(run.state) == "success", states(run)
    assert load_config(serving_server["config_file"]) == config_before
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert mlf.get_model_version_by_alias(MODEL, "previous").version == "1"

    # 4. a version whose outputs differ from its registered model's: rolled back, task failed
    assert register(mlflow_server, zoo, "bad", MODEL, smoke="v3") == 3
    mlf.set_registered_model_alias(MODEL, "challenger", "3")
    run = dag.test(run_conf={**conf, "version": "challenger", "strategy": "canary"})
    assert states(run)["rollout"] == "failed", states(run)
    v3 = mlf.get_model_version(MODEL, "3")
    assert v3.tags["serving.outcome"] == "rolled_back" and "differ from the registered model" in \
        v3.tags["serving.reason"]
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert "challenger" not in mlf.get_registered_model(MODEL).aliases
    served = {int(s["version"]): s["state"] for s in client.status(MODEL)["model_version_status"]}
    assert served[2] == "AVAILABLE" and served[3] == "END"
    assert load_config(serving_server["config_file"]) == config_before

    # 5. the champion itself failing a re-check (here: a holdout with wrong labels) fails the task
    #    but changes nothing: it keeps serving and stays champion
    wrong = tmp_path / "wrong_labels.npz"
    np.savez(wrong, x=zoo.holdout_x, y=(np.asarray(zoo.holdout_y) + 1) % 10)
    run = dag.test(run_conf={**conf, "version": "champion", "strategy": "canary", "canary_holdout_uri": str(wrong)})
    assert states(run)["rollout"] == "failed", states(run)
    assert "holdout accuracy" in mlf.get_model_version(MODEL, "2").tags["serving.reason"]
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert load_config(serving_server["config_file"]) == config_before
    assert {int(s["version"]): s["state"] for s in client.status(MODEL)["model_version_status"]}[2] == "AVAILABLE"
    client.close()


def test_rollout_dag_contract(airflow_db, dag):
    """Two rollouts never interleave: one active run, every task that touches the targets in the
    1-slot rollout pool (an approval of a held release holds it too: the pool counts deferred
    tasks); the approval before a rollout holds nothing and waits in the default pool."""
    assert dag.max_active_runs == 1
    assert {t.task_id: t.pool for t in dag.tasks} == {
        **{t: "tf_serving_rollout" for t in ("resolve", "publish", "rollout", "approve", "conclude")},
        "approve_rollout": "default_pool"}
    assert {"model_name", "version", "strategy", "canary_holdout_uri", "canary_min_accuracy", "latency_budget_ms",
            "keep", "targets", "router", "gray_steps", "gray_window_s", "gray_max_error_rate_increase",
            "gray_max_p99_increase_ms", "gray_max_prediction_tvd", "ab_share_pct", "ab_window_s", "ab_alpha",
            "ab_min_samples", "ab_labels_uri", "ab_labels_wait_s", "shadow_window_s", "shadow_min_agreement",
            "shadow_min_compared"} <= set(dag.params)
    assert dag.params.get_param("strategy").schema["enum"] == ["replace", "canary", "gray", "ab", "shadow"]
    assert dag.params["gray_steps"] == [5, 25, 50, 100] and dag.params["router"] == "tf_serving_router"
    roll = dag.get_task("rollout")
    assert (roll.router_conn_id, roll.gray_steps) == ("{{ params.router }}", "{{ params.gray_steps }}")
    assert (roll.ab_labels_uri, roll.ab_alpha, roll.max_prediction_tvd) == (
        "{{ params.ab_labels_uri }}", "{{ params.ab_alpha }}", "{{ params.gray_max_prediction_tvd }}")
    assert roll.shadow_min_agreement == "{{ params.shadow_min_agreement }}"
    assert {"ab_labels_uri", "ab_share_pct", "ab_window_s", "max_prediction_tvd", "shadow_window_s",
            "shadow_min_agreement", "shadow_min_compared"} <= set(roll.template_fields)
    assert all(t.retries >= 1 for t in dag.tasks) and dag.owner == "ml-platform"
