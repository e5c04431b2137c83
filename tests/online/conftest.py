"""Fixtures of the online-update and monitoring tests: one small champion, trained once per
session through the retraining steps, registered in the session's real MLflow server and
rolled out to the session's local serving server as version 1 (champion)."""

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
    from tfmlops.models import TrainConfig
    from tfmlops.steps import retrain as pipeline
    from tfmlops.steps.rollout import Endpoint, rollout_registered

    spec = pipeline.DataSpec(uri="mnist", sample_fraction=0.05)
    trained = pipeline.train(mlflow_server, MODEL, "champion", {"airflow.dag_id": "test"}, spec,
                             train_config=TrainConfig(epochs=4, batch_size=64))
    metrics = pipeline.evaluate(mlflow_server, trained["run_id"], trained["model_uri"], spec)
    pipeline.export(mlflow_server, trained["run_id"], trained["model_uri"], spec)
    version = pipeline.register(mlflow_server, MODEL, trained["run_id"], trained["model_uri"], metrics, {})["version"]
    # every request to the champion is logged (the embedded stack's way: the endpoint's request_log_prefix)
    endpoint = Endpoint("local", "127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"],
                        str(serving_server["models_root"]), model_config_file=str(serving_server["config_file"]),
                        request_log_prefix=str(serving_server["request_logs"]), request_log_sampling_rate=1.0)
    try:
        assert rollout_registered(mlflow_server, MODEL, version, [endpoint])["outcome"] == "promoted"
    finally:
        endpoint.close()
    return {"version": version, "accuracy": metrics["accuracy"], "run_id": trained["run_id"]}
