"""Every DAG file imports cleanly, cheaply (no TensorFlow/MLflow/tfmot at parse time) and has
the properties the UI and operations rely on. Each file is parsed in a fresh interpreter, as
Airflow's DAG processor does, so sys.modules shows what parsing really imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ("tensorflow", "tf_keras", "keras", "mlflow", "tensorflow_model_optimization", "tensorflowjs",
         "tf2onnx", "onnxruntime")

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "heavy": sorted(m for m in sys.argv[2].split(",") if m in sys.modules),
    "dags": {d.dag_id: {"tags": sorted(d.tags), "doc_md": d.doc_md or "", "owners": d.owner,
                        "retries": {t.task_id: t.retries for t in d.tasks},
                        "params": {k: {**d.params.get_param(k).schema, "description": d.params.get_param(k).description,
                                       "default": d.params.get_param(k).value} for k in d.params},
                        "max_active_runs": d.max_active_runs,
                        "deadlines": [{"reference": type(a.reference).__name__, "seconds": a.interval.total_seconds(),
                                       "callback": a.callback.path, "async": type(a.callback).__name__}
                                      for a in d.deadline or ()],
                        "tasks": {t.task_id: {"trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                                              "operator": f"{type(t).__module__}.{type(t).__qualname__}",
                                              "upstream": sorted(t.upstream_task_ids),
                                              "downstream": sorted(t.downstream_task_ids),
                                              "on_failure_callback": [f"{c.__module__}.{c.__qualname__}"
                                                                      for c in t.on_failure_callback or ()]}
                                  for t in d.tasks}} for d in bag.dags.values()},
}))
"""


def parse(path: Path, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PARSE, str(path), ",".join(HEAVY)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=DAG_FILES, ids=lambda p: p.name)
def parsed(request):
    return parse(request.param)


def test_imports_without_errors(parsed):
    assert parsed["errors"] == {}
    assert parsed["dags"], "the file defines no DAG"


def test_no_heavy_imports_at_parse_time(parsed):
    assert parsed["heavy"] == []


def test_every_dag_is_documented_tagged_and_retried(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert len(dag["doc_md"]) > 200, f"{dag_id} has no real doc_md"
        assert dag["owners"] and dag["owners"] != "airflow", f"{dag_id} has no owner"
        assert all(r >= 1 for r in dag["retries"].values()), f"{dag_id}: tasks without retries {dag['retries']}"
        for name, schema in dag["params"].items():
            assert schema.get("title") and schema.get("description") and schema.get("type"), f"{dag_id}.{name}"


def test_a_dag_whose_tasks_run_after_failures_carries_the_run_guard(parsed):
    """A task that runs after an upstream failure (trigger rule all_done, one_failed, …) can end the
    run green whatever failed before it: such a DAG must carry the shared run guard, last, watching
    every other task and recording each one's error (issue 24)."""
    from tfmlops_airflow.guard import GUARD_TASK_ID, RUNS_AFTER_FAILURE, RunGuardOperator, record_failure

    guard_class = f"{RunGuardOperator.__module__}.{RunGuardOperator.__qualname__}"
    recorder = f"{record_failure.__module__}.{record_failure.__qualname__}"
    for dag_id, dag in parsed["dags"].items():
        tasks = dag["tasks"]
        guards = [t for t, info in tasks.items() if info["operator"] == guard_class]
        after_failure = sorted(t for t, info in tasks.items()
                               if info["trigger_rule"] in RUNS_AFTER_FAILURE and t not in guards)
        if not after_failure:
            assert not guards, f"{dag_id}: a run guard without a task that runs after failures"
            continue
        assert guards == [GUARD_TASK_ID], f"{dag_id}: {after_failure} run after failures, but no run guard"
        watched = tasks[GUARD_TASK_ID]
        assert watched["upstream"] == sorted(set(tasks) - {GUARD_TASK_ID}) and not watched["downstream"], dag_id
        assert all(recorder in info["on_failure_callback"] for info in tasks.values()), dag_id


def test_every_task_notifies_a_failure_and_long_runs_carry_a_deadline(parsed):
    """Notifications (issue 27): every task's failure callback sends ``run_failed`` (when
    configured); the retraining, search and optimization DAGs carry a ``DeadlineAlert`` whose async
    callback (the triggerer's) sends ``deadline_missed``."""
    from tfmlops_airflow.notifications import deadline_missed, run_failed

    notifier = f"{run_failed.__module__}.{run_failed.__qualname__}"
    for dag_id, dag in parsed["dags"].items():
        assert all(notifier in info["on_failure_callback"] for info in dag["tasks"].values()), dag_id
        if dag_id in ("tf_offline_retrain", "tf_online_update", "tf_optimize_export", "tf_hparam_search"):
            (alert,) = dag["deadlines"]
            assert alert == {"reference": "DagRunQueuedAtDeadline", "seconds": alert["seconds"],
                             "async": "AsyncCallback",
                             "callback": f"{deadline_missed.__module__}.{deadline_missed.__qualname__}"}, dag_id
            assert 3600 <= alert["seconds"] <= 4 * 3600, dag_id


def test_offline_retrain_contract():
    dag = parse(ROOT / "dags" / "tf_offline_retrain.py")["dags"]["tf_offline_retrain"]
    assert dag["max_active_runs"] == 1
    assert set(dag["retries"]) == {"validate_data", "prepare", "search_worker", "finish", "train", "evaluate", "gate",
                                  "export", "register", "approve_rollout", "rollout", "approve", "conclude",
                                  "model_card", "watcher"}
    # the release: approval before the rollout (asked only with approval=before_rollout) → rollout →
    # approval (asked only when held) → promote or roll back
    tasks = dag["tasks"]
    assert {"register", "approve_rollout"} <= set(tasks["rollout"]["upstream"])
    assert "rollout" in tasks["approve"]["upstream"] and "approve" in tasks["conclude"]["upstream"]
    assert "conclude" in tasks["model_card"]["upstream"]
    # the optional search (issue 26), the same tasks as tf_hparam_search's: by default (0 trials) the
    # workers skip and finish (none_failed) passes the module's spec on to train
    assert tasks["prepare"]["upstream"] == ["validate_data"] and "prepare" in tasks["search_worker"]["upstream"]
    assert {"search_worker", "prepare"} <= set(tasks["finish"]["upstream"]) and "finish" in tasks["train"]["upstream"]
    assert tasks["finish"]["trigger_rule"] == "none_failed"
    params = dag["params"]
    assert params["search_trials"]["default"] == 0 and params["search_trials"]["minimum"] == 0
    assert {"model_name", "dataset_uri", "epochs", "batch_size", "learning_rate", "sample_fraction"} <= set(params)
    for numeric in ("epochs", "batch_size", "learning_rate", "sample_fraction"):
        assert {"minimum", "exclusiveMinimum"} & set(params[numeric]) and "maximum" in params[numeric], numeric


def test_partitions_root_default_comes_from_the_environment():
    """Compose (or any deployment) points every partitions form at S3 with one variable."""
    dags = {name: parse(ROOT / "dags" / f"{name}.py", TFMLOPS_PARTITIONS_ROOT="s3://parts/stream")["dags"][name]
            for name in ("tf_data_simulator", "tf_online_update", "tf_model_monitor")}
    assert {name: dag["params"]["root"]["default"] for name, dag in dags.items()} == dict.fromkeys(
        dags, "s3://parts/stream")
    default = parse(ROOT / "dags" / "tf_online_update.py")["dags"]["tf_online_update"]["params"]["root"]["default"]
    assert default == str(ROOT / "var" / "partitions")


def test_optimize_export_lists_are_the_librarys():
    """The form's variant and format choices, and the export tasks, are the ones the library builds."""
    from tfmlops.formats import FLOAT_FORMATS, VARIANTS, artifact_name, artifacts

    dag = parse(ROOT / "dags" / "tf_optimize_export.py")["dags"]["tf_optimize_export"]
    assert dag["params"]["variants"]["items"]["enum"] == list(VARIANTS) == dag["params"]["variants"]["default"]
    assert dag["params"]["formats"]["items"]["enum"] == list(FLOAT_FORMATS) == dag["params"]["formats"]["default"]
    exports = {task.removeprefix("export_") for task in dag["retries"] if task.startswith("export_")}
    assert exports == {artifact_name(variant, fmt).replace("-", "_") for variant, fmt in artifacts()}
    assert {task.removeprefix("optimize_") for task in dag["retries"] if task.startswith("optimize_")} == set(VARIANTS)


def test_optimize_form_defaults_are_the_librarys():
    """The form's defaults are OptimizeConfig's (the ones the formats benchmark shows passing); the
    fine-tuning fields a model may need its own of are empty by default (the model module's
    OPTIMIZE, else OptimizeConfig's, which their description states)."""
    from dataclasses import fields

    from tfmlops.optimize import OptimizeConfig

    params = parse(ROOT / "dags" / "tf_optimize_export.py")["dags"]["tf_optimize_export"]["params"]
    library = {f.name: f.default for f in fields(OptimizeConfig) if f.name in params}
    by_model = {"target_sparsity", "pruning_epochs", "qat_epochs", "distill_epochs"}
    assert len(library) >= 8 and by_model <= set(library)
    assert {k: params[k]["default"] for k in library if k not in by_model} == \
        {k: v for k, v in library.items() if k not in by_model}
    for name in by_model:
        assert params[name]["default"] is None and "null" in params[name]["type"]
        assert f"OPTIMIZE, else {library[name]}." in params[name]["description"], params[name]
