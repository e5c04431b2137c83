"""tf_offline_retrain end to end with ``dag.test()``, against a real ``mlflow server`` process
and the TF Serving-compatible local server process (both started by fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

MODEL = "e2e_mnist"
SAMPLE = {"sample_fraction": 0.1, "batch_size": 64}

pytestmark = pytest.mark.e2e


def load_dag():
    """A freshly parsed DAG for every ``dag.test()``: in-process runs render templates into the
    operator objects, so a DAG object must not be reused for a second run."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags" / "tf_offline_retrain.py"))
    assert not bag.import_errors
    return bag.get_dag("tf_offline_retrain")


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def served_status(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=10).json()


def test_offline_retrain_then_rejected_candidate(airflow_db, airflow_connections, mlflow_server,
                                                 serving_server):
    import mlflow.tensorflow
    from mlflow import MlflowClient

    # 1. A first run trains, passes the gate (no champion yet) and is served as version 1.
    run = load_dag().test(run_conf={"model_name": MODEL, "epochs": 3, "gate_threshold": 0.8, **SAMPLE})
    assert str(run.state) == "success", states(run)
    # no search asked (search_trials 0): its workers skip, finish passes the module's spec on
    assert {t: s for t, s in states(run).items() if s != "success"} == {
        "search_worker": "skipped", "approve_rollout": "skipped", "approve": "skipped", "conclude": "skipped",
        "watcher": "skipped"}

    mlf = MlflowClient(mlflow_server)
    champion = mlf.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert mlf.get_model_version_by_alias(MODEL, "challenger").version == "1"
    assert champion.tags["airflow.dag_id"] == "tf_offline_retrain" and champion.tags["airflow.run_id"] == run.run_id
    assert len(champion.tags["dataset_fingerprint"]) == 64
    assert not {"search.parent_run_id", "search.best_trial"} & set(champion.tags)
    metrics = mlf.get_run(champion.run_id).data.metrics
    assert metrics["test_accuracy"] >= 0.8 and {"test_f1_macro", "test_precision_macro", "loss"} <= set(metrics)
    assert len(mlf.get_metric_history(champion.run_id, "val_accuracy")) == 3
    artifacts = {a.path for a in mlf.list_artifacts(champion.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/confusion_matrix.png"}

    # the model card, written after the rollout, records this run and the promotion
    assert champion.tags["model_card"] == f"runs:/{champion.run_id}/model_card/model_card.html"
    assert f"`{champion.tags['model_card']}`" in champion.description
    card = json.loads(Path(mlf.download_artifacts(champion.run_id, "model_card/model_card.json")).read_text())
    assert card["lineage"]["dag_run_id"] == run.run_id and card["gate"]["decision"] == "passed"
    assert card["metrics"]["values"]["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert len(card["per_class"]) == 10
    assert [e["event"] for e in card["serving"]["history"]] == ["promoted"]

    # promote announced the new champion on the asset that schedules tf_optimize_export
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "tfmlops_champion").all())
        assert [e.extra for e in events if e.extra["model_name"] == MODEL] == [{"model_name": MODEL, "version": 1}]

    status = served_status(serving_server["rest_port"])
    assert status["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]

    # The served version answers like the registered model run in this process.
    from tfmlops.data import load_validated

    x = load_validated("mnist", 784, 10, sample_fraction=0.01)[0].x_test[:16]
    mlflow.set_tracking_uri(mlflow_server)
    expected = mlflow.tensorflow.load_model(f"models:/{MODEL}@champion")(x).numpy()
    response = requests.post(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{MODEL}:predict",
                             json={"instances": x.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, atol=1e-5)

    # 2. A much worse candidate is rejected by the gate: nothing after it runs, the champion and
    #    the served version stay as they were, and the reason is on the MLflow run.
    rejected = load_dag().test(run_conf={"model_name": MODEL, "epochs": 1, "learning_rate": 1e-5, "gate_threshold": 0.0,
                                  "tolerance": 0.0, **SAMPLE})
    task_states = states(rejected)
    assert task_states["gate"] == "skipped", task_states
    assert all(task_states[t] == "skipped" for t in ("export", "register", "rollout", "model_card", "watcher")), \
        task_states
    assert str(rejected.state) == "success"  # a rejection is the gate doing its job
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert len(mlf.search_model_versions(f"name='{MODEL}'")) == 1
    assert [v["version"] for v in served_status(serving_server["rest_port"])["model_version_status"]] == ["1"]
    runs = mlf.search_runs([mlf.get_experiment_by_name(MODEL).experiment_id], "tags.gate = 'rejected'")
    assert len(runs) == 1 and "worse than the champion" in runs[0].data.tags["gate_reason"]


def test_bad_dataset_fails_validation_naming_file_and_problem(airflow_db, tmp_path, capfd):
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    x_train = rng.random((20, 784))
    x_train[4, 7] = np.nan
    np.savez(bad, x_train=x_train, y_train=rng.integers(0, 10, 20), x_test=rng.random((5, 784)),
             y_test=rng.integers(0, 10, 5))
    run = load_dag().test(run_conf={"model_name": MODEL, "dataset_uri": str(bad)})
    task_states = states(run)
    assert str(run.state) == "failed" and task_states["validate_data"] == "failed", task_states
    assert task_states["train"] in ("upstream_failed", "None"), task_states
    assert task_states["watcher"] == "failed", task_states  # the run stays failed whatever runs after
    problem = f"{bad}: train split: feature 'pixels' has NaN or inf values in 1 rows"
    out = "".join(capfd.readouterr())
    assert problem in out
    assert f"validate_data failed: {problem}" in out  # the run guard names the task and its error
