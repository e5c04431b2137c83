"""Fixtures of the online-update and monitoring tests: one small champion, trained once per
session through the pipeline functions, registered in the session's real MLflow server and
deployed to the session's local serving server as version 1."""

from __future__ import annotations

from pathlib import Path

import pytest

MODEL = "online_mnist"
ROOT = Path(__file__).resolve().parents[2]


def load_dag(dag_id: str):
    """A freshly parsed DAG for every ``dag.test()`` (runs render templates into the operators)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="session")
def champion(mlflow_server, serving_server):
    from tfmlops import pipeline
    from tfmlops.models import TrainConfig
    from tfmlops.serving.client import ServingClient

    spec = pipeline.DataSpec(uri="mnist", sample_fraction=0.05)
    trained = pipeline.train(mlflow_server, MODEL, "champion", {"airflow.dag_id": "test"}, spec,
                             train_config=TrainConfig(epochs=4, batch_size=64))
    metrics = pipeline.evaluate(mlflow_server, trained["run_id"], trained["model_uri"], spec)
    exported = pipeline.export(mlflow_server, trained["run_id"], trained["model_uri"], spec)
    version = pipeline.register(mlflow_server, MODEL, trained["run_id"], trained["model_uri"], metrics, {})["version"]
    with ServingClient("127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"], timeout=60) as client:
        pipeline.deploy(mlflow_server, client, MODEL, version, exported["serving_artifact_uri"],
                        str(serving_server["models_root"]), str(serving_server["config_file"]))
    pipeline.promote(mlflow_server, MODEL, version)
    return {"version": version, "accuracy": metrics["accuracy"], "run_id": trained["run_id"]}
