"""tf_hparam_search end to end with ``dag.test()`` on the regression example (diabetes): the study in
a journal file, two mapped worker tasks pulling trials (``dag.test`` runs them one after the other;
tests/core/test_search.py runs two worker processes at once on one study), each trial a nested
MLflow run, Optuna's plots on the parent run, the best configuration retrained, gated, registered
with the search in its lineage, served by the session's model server and named in its model card.
A bad search space fails at ``prepare`` and a search whose every trial fails fails at ``finish``,
each naming why."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_a_search_registers_and_serves_its_best_trial(connections, mlflow_server, serving_server, tmp_path):
    from mlflow import MlflowClient

    conf = {"model_name": "search_diabetes", "model_module": MODULE, "dataset_uri": DATA, "sample_fraction": 1.0,
            "n_trials": 4, "parallelism": 2, "storage": f"journal:{tmp_path}/studies.log", "seed": 3}
    run = _dag().test(run_conf=conf)
    states = _states(run)
    assert str(run.state) == "success", states
    assert states["search_worker[0]"] == states["search_worker[1]"] == "success", states
    assert all(states[t] == "success" for t in ("prepare", "finish", "train", "gate", "register", "rollout",
                                                 "model_card")), states

    mlf = MlflowClient(mlflow_server)
    experiment = mlf.get_experiment_by_name("search_diabetes")
    runs = mlf.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("search.outcome", "").startswith("best trial")]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert 4 <= len(trials) <= 5, len(trials)  # n_trials; two workers starting at once may add one
    # dag.test() runs the two mapped workers one after the other: the first pulls every trial and the
    # second finds the study full (tests/core/test_search.py has two worker processes at once)
    assert {r.data.tags["search.worker"] for r in trials} <= {"0", "1"}
    assert all(r.data.tags["search.state"] in ("complete", "pruned", "failed") for r in trials)
    assert all({"hparams.learning_rate", "hparams.hidden_units"} <= set(r.data.params) for r in trials)
    complete = [r for r in trials if r.data.tags["search.state"] == "complete"]
    assert complete and all("validation_rmse" in r.data.metrics for r in complete)
    assert parent.data.tags["search.objective"] == "validation rmse" and parent.data.tags["search.direction"] == \
        "minimize"
    best_number = int(parent.data.tags["search.best_trial"])
    (best,) = [r for r in trials if r.data.tags["search.trial"] == str(best_number)]
    assert best.data.metrics["validation_rmse"] == min(r.data.metrics["validation_rmse"] for r in complete)
    plots = {a.path for a in mlf.list_artifacts(parent.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/parallel_coordinate.png", "search/summary.json"} <= plots
    assert "search/param_importances.png" in plots or len(complete) < 2

    # the best configuration, retrained and registered with the search in its lineage, is served
    version = mlf.get_model_version_by_alias("search_diabetes", "champion")
    assert version.tags["search.parent_run_id"] == parent.info.run_id
    assert version.tags["search.best_trial"] == str(best_number)
    hparams = json.loads(version.tags["model.hparams"])
    assert hparams["hidden_units"] == int(best.data.params["hparams.hidden_units"])
    assert hparams["learning_rate"] == pytest.approx(float(best.data.params["hparams.learning_rate"]))
    served = json.loads(Path(mlf.download_artifacts(version.run_id, "model_card/model_card.json",
                                                    str(tmp_path))).read_text())
    assert served["lineage"]["search_run"] == parent.info.run_id
    md = Path(mlf.download_artifacts(version.run_id, "model_card/model_card.md", str(tmp_path / "md")))
    assert f"MLflow run {parent.info.run_id}" in md.read_text()
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/search_diabetes",
                                timeout=30) as r:
        status = json.loads(r.read())["model_version_status"]
    assert [s["version"] for s in status if s["state"] == "AVAILABLE"] == [str(version.version)]


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
