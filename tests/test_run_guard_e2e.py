"""The run guard (``tfmlops_airflow.guard``) in real ``dag.test()`` runs: a run whose work failed ends
``failed`` with a message naming the failed task and its error; a run with tasks skipped on purpose
ends ``success``. A small DAG of the guard's own, and ``tf_optimize_export`` (for an unregistered
model; with nothing selected) against a real ``mlflow server``. Nothing is trained.

``tf_offline_retrain``'s guard is checked by tests/test_offline_retrain_e2e.py (a bad dataset fails
the run naming ``validate_data``; a rejected candidate leaves it green)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

PROBE_DAG = '''
from datetime import datetime

from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowSkipException

from tfmlops_airflow.guard import add_run_guard

with DAG(dag_id="tfmlops_guard_probe", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         params={"fail": False}, default_args={"retries": 0}) as dag:
    @task
    def work(**context):
        if context["params"]["fail"]:
            raise ValueError("disk full")

    @task
    def variant():
        raise AirflowSkipException("variant not selected")

    @task
    def export():
        pass

    @task(trigger_rule="all_done")
    def report():
        pass

    done = work()
    done >> export()
    [done, variant()] >> report()
    add_run_guard(dag)
'''


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def guard_message(run) -> str | None:
    """What the guard said (its XCom ``failure``, recorded by its failure callback)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tfmlops_airflow.guard import FAILURE_KEY, GUARD_TASK_ID

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=GUARD_TASK_ID,
                                                 key=FAILURE_KEY).one_or_none()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def probe_dag(airflow_db, tmp_path):
    """A fresh probe DAG per call, parsed from a file and written to the metadata DB (``dag.test()``
    runs only serialized DAGs; the dags folder is the project's); deleted from the DB afterwards."""
    from airflow.api.common.delete_dag import delete_dag
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    path = tmp_path / "tfmlops_guard_probe.py"
    path.write_text(PROBE_DAG)

    def parsed():
        bag = DagBag(dag_folder=str(path))
        assert not bag.import_errors, bag.import_errors
        DagBundlesManager().sync_bundles_to_db()  # the bundle the DAG is recorded in
        sync_bag_to_db(bag, "dags-folder", None)
        return bag.get_dag("tfmlops_guard_probe")

    yield parsed
    delete_dag("tfmlops_guard_probe")


def test_a_failed_task_fails_the_run_naming_it_a_skipped_one_does_not(probe_dag):
    failed = probe_dag().test(run_conf={"fail": True})
    assert str(failed.state) == "failed", states(failed)
    assert states(failed) == {"work": "failed", "export": "upstream_failed", "variant": "skipped",
                              "report": "success", "watcher": "failed"}
    assert guard_message(failed) == "work failed: ValueError: disk full; 1 task did not run (upstream failed): export"

    green = probe_dag().test(run_conf={"fail": False})
    assert str(green.state) == "success", states(green)
    assert states(green) == {"work": "success", "export": "success", "variant": "skipped", "report": "success",
                             "watcher": "skipped"}
    assert guard_message(green) is None


def optimize_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tf_optimize_export.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("tf_optimize_export")


@pytest.fixture
def mlflow_connection(monkeypatch, mlflow_server):
    host, port = mlflow_server.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": host,
                                                                  "port": int(port)}))
    return mlflow_server


def test_optimize_export_for_an_unregistered_model_fails_naming_resolve(airflow_db, mlflow_connection):
    run = optimize_dag().test(run_conf={"model_name": "guard_not_registered"})
    task_states = states(run)
    assert str(run.state) == "failed", task_states
    assert task_states["resolve"] == "failed" and task_states["watcher"] == "failed", task_states
    work = {t for t in task_states if t.startswith(("optimize_", "export_"))}
    assert len(work) == 25 and {task_states[t] for t in work} == {"upstream_failed"}, task_states
    # the tasks that run after failures skip without a resolved version (no cascade of errors, no retries)
    assert {t: task_states[t] for t in ("mobile_bundles", "report", "model_card")} == dict.fromkeys(
        ("mobile_bundles", "report", "model_card"), "skipped")
    resolve = next(ti for ti in run.get_task_instances() if ti.task_id == "resolve")
    assert resolve.try_number == 1  # a missing model will not appear in a minute: no retry
    message = guard_message(run)
    assert message.startswith("resolve failed: model 'guard_not_registered' is not registered in MLflow; "
                              "25 tasks did not run (upstream failed): export_"), message


def test_optimize_export_with_nothing_selected_ends_green(airflow_db, mlflow_connection):
    """Every variant and format deselected: each task skips on purpose, and the run is a success."""
    import numpy as np
    import tf_keras

    from tfmlops import registry

    name = "guard_nothing_selected"
    model = tf_keras.Sequential([tf_keras.Input((784,)), tf_keras.layers.Dense(10, activation="softmax")])
    run_id = registry.start_run(mlflow_connection, name, "seed", {"purpose": "test"})
    model_uri = registry.log_keras_model(mlflow_connection, run_id, model, np.zeros((1, 784), np.float32))
    version = registry.register(mlflow_connection, name, model_uri, run_id, {})

    run = optimize_dag().test(run_conf={"model_name": name, "version": str(version), "variants": [],
                                        "formats": [], "sample_fraction": 0.01})
    task_states = states(run)
    assert str(run.state) == "success", task_states
    skipped = {t for t, s in task_states.items() if s == "skipped"}
    assert {t for t in task_states if t.startswith(("optimize_", "export_"))} | {"mobile_bundles", "watcher"} \
        == skipped, task_states
    assert guard_message(run) is None
