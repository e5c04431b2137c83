"""tf_hparam_search's failure paths with ``dag.test()`` on the regression example (diabetes): a bad
search space fails at ``prepare`` and a search whose every trial fails fails at ``finish``, each
naming why. The successful search runs through a real Airflow with LocalExecutor and two workers
at once: tests/rollout/test_search_e2e.py."""

from __future__ import annotations


import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e

MODULE, DATA = "tfmlops_examples.diabetes", "examples/diabetes"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tf_hparam_search.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("tf_hparam_search")


def _states(run) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
            for ti in run.get_task_instances()}


def _guard_message(run) -> str:
    """The run guard's message: each failed task and its error (its XCom ``failure``)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tfmlops_airflow.guard import FAILURE_KEY, GUARD_TASK_ID

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=GUARD_TASK_ID,
                                                 key=FAILURE_KEY).one_or_none()
        return "" if row is None else str(XComModel.deserialize_value(row))


@pytest.mark.parametrize("space, task, words", [
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}, "prepare",
     "'learning_rate': low (0.1) must be below high (0.01)"),
    ({"hidden_units": {"type": "int", "low": -8, "high": -4}}, "finish", "no trial completed out of 2"),
])
def test_a_bad_space_or_a_search_of_failed_trials_fails_naming_why(space, task, words, connections, tmp_path):
    conf = {"model_name": "search_broken", "model_module": MODULE, "dataset_uri": DATA, "n_trials": 2,
            "parallelism": 1, "search_space": space, "storage": f"journal:{tmp_path}/studies.log"}
    run = _dag().test(run_conf=conf)
    states = _states(run)
    assert str(run.state) == "failed" and states[task] == "failed" and states["watcher"] == "failed", states
    assert states["register"] == "upstream_failed" and states["rollout"] == "upstream_failed", states
    message = _guard_message(run)
    assert f"{task} failed" in message and words in message, message
    if task == "finish":  # each trial failed for its own reason, recorded in the study and on its run
        assert "hidden_units" in message or "Dense" in message or "units" in message, message
