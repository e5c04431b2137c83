"""tf_hparam_search through a real Airflow with LocalExecutor and ``parallelism`` 2
(tests/rollout/airflow_stack.py: API server, scheduler, DAG processor, triggerer — the embedded
stack's executor), on the regression example (diabetes): the run triggered over the REST API, its
two mapped worker tasks running **at once** as separate task processes and both pulling trials
from one journal study, each trial a nested MLflow run, Optuna's plots on the parent run, the best
configuration retrained, gated, registered with the search in its lineage, served by the session's
model server and named in its model card. (The failure paths — a bad space, a search whose every
trial fails — run with ``dag.test()`` in tests/byom/test_examples_search_e2e.py.)"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from .airflow_stack import runs, unpause, wait_for

pytestmark = pytest.mark.e2e

DAG_ID, MODEL = "tf_hparam_search", "search_diabetes"


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_two_worker_tasks_search_at_once_and_the_best_trial_is_served(airflow, mlflow_server, serving_server,
                                                                       tmp_path):
    from mlflow import MlflowClient

    api, url = airflow["api"], airflow["url"]
    unpause(airflow, DAG_ID)
    conf = {"model_name": MODEL, "model_module": "tfmlops_examples.diabetes", "dataset_uri": "examples/diabetes",
            "sample_fraction": 1.0, "n_trials": 4, "parallelism": 2, "storage": f"journal:{tmp_path}/studies.log",
            "seed": 3}
    answer = api.post(f"{url}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30)
    answer.raise_for_status()
    run_id = answer.json()["dag_run_id"]
    (run,) = wait_for(f"{run_id} finished", lambda: [r for r in runs(airflow, DAG_ID) if r["dag_run_id"] == run_id
                                                     and r["state"] in ("success", "failed")], 900, airflow, poll_s=3)
    tis = api.get(f"{url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100},
                  timeout=30).json()["task_instances"]
    states = {f"{t['task_id']}[{t['map_index']}]" if t["map_index"] >= 0 else t["task_id"]: t["state"] for t in tis}
    assert run["state"] == "success", states
    assert all(states[t] == "success" for t in ("prepare", "finish", "train", "gate", "register", "rollout",
                                                 "model_card")), states

    # LocalExecutor ran the two mapped workers as two task processes at the same time
    workers = sorted((t for t in tis if t["task_id"] == "search_worker"), key=lambda t: t["map_index"])
    assert [(t["map_index"], t["state"]) for t in workers] == [(0, "success"), (1, "success")], workers
    assert workers[0]["pid"] != workers[1]["pid"]
    starts, ends = [_when(t["start_date"]) for t in workers], [_when(t["end_date"]) for t in workers]
    assert max(starts) < min(ends), f"the workers did not overlap: {list(zip(starts, ends))}"

    mlf = MlflowClient(mlflow_server)
    experiment = mlf.get_experiment_by_name(MODEL)
    found = mlf.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in found if r.data.tags.get("search.outcome", "").startswith("best trial")]
    trials = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert 4 <= len(trials) <= 5, len(trials)  # n_trials; two workers starting at once may add one
    by_worker = {w: sum(r.data.tags["search.worker"] == w for r in trials) for w in ("0", "1")}
    assert by_worker["0"] and by_worker["1"] and sum(by_worker.values()) == len(trials), by_worker  # one study
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
    version = mlf.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["search.parent_run_id"] == parent.info.run_id
    assert version.tags["search.best_trial"] == str(best_number)
    assert version.tags["airflow.run_id"] == run_id
    hparams = json.loads(version.tags["model.hparams"])
    assert hparams["hidden_units"] == int(best.data.params["hparams.hidden_units"])
    assert hparams["learning_rate"] == pytest.approx(float(best.data.params["hparams.learning_rate"]))
    card = json.loads(Path(mlf.download_artifacts(version.run_id, "model_card/model_card.json",
                                                  str(tmp_path))).read_text())
    assert card["lineage"]["search_run"] == parent.info.run_id
    md = Path(mlf.download_artifacts(version.run_id, "model_card/model_card.md", str(tmp_path / "md")))
    assert f"MLflow run {parent.info.run_id}" in md.read_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{MODEL}",
                                timeout=30) as r:
        status = json.loads(r.read())["model_version_status"]
    assert [s["version"] for s in status if s["state"] == "AVAILABLE"] == [str(version.version)]
