"""Bring your own model, part 2: ``tf_model_monitor`` on a tabular binary classifier with string
columns (churn) and a regressor (diabetes), each version as ``tf_offline_retrain`` registered it
(``trained``) and served by the session's tf-serving-local.

A partition in the module's own format (Parquet with its named columns, its label and a split) is
read by the version's model module: a clean one raises nothing; one with a column drifted makes the
monitor name that column among the features that moved most and ask for a retrain. Quality is the
task's (AUC, RMSE), the health probe sends the version's own smoke row (strings included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import EXAMPLES, ROOT, states

pytestmark = pytest.mark.e2e

# example -> (its training data, the column to drift, how)
DRIFTS = {"churn": ("examples/churn.parquet", "monthly_charges", lambda v: v * 1.8),
          "diabetes": ("examples/diabetes", "bmi", lambda v: v + 2 * np.std(v))}


def write_partition(root: str, dataset: str, partition: str, spec, split, drift=None) -> str:
    """``<root>/<dataset>/incoming/<partition>/data.parquet``: the named columns, the label, a split
    (the default Parquet loader's layout), rows from ``split`` with ``drift = (column, fn)`` applied."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in spec.inputs:
        values = np.asarray(split.features[name])
        if drift and name == drift[0]:
            values = drift[1](values.astype(np.float64)).astype(values.dtype)
        columns[name] = pa.array([v.decode() if isinstance(v, bytes) else v for v in values.tolist()])
    n = len(split)
    columns[spec.label] = pa.array(split.labels.tolist())
    columns["split"] = pa.array(["train" if i < n // 2 else "test" for i in range(n)])
    path = Path(root) / dataset / "incoming" / partition / "data.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("name", [n for n in DRIFTS if n in EXAMPLES])
def test_monitor_names_the_drifted_column_and_judges_quality_by_task(name, trained, connections, mlflow_server,
                                                                     serving_server, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from mlflow import MlflowClient

    from tfmlops import model_data, modelspec

    uri, column, fn = DRIFTS[name]
    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    data, _ = model_data.load(spec, modelspec.import_module(spec.module), uri)
    root = str(tmp_path)
    write_partition(root, "clean", "p1", spec, data.test)
    write_partition(root, "drifted", "p1", spec, data.test, drift=(column, fn))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "tf_model_monitor.py")).get_dag("tf_model_monitor")
    conf = {"model_name": f"byom_{name}", "root": root, "requests": 5, "max_p99_ms": 5000, "max_error_rate": 0.0,
            "log_prefix": str(tmp_path / "no-logs" / "requests")}

    clean = dag.test(run_conf={**conf, "dataset": "clean"})
    clean_states = states(clean)
    assert str(clean.state) == "success", clean_states
    assert clean_states["health"] == clean_states["quality_drift"] == "success", clean_states
    assert clean_states["trigger_retrain"] == "skipped", clean_states

    drifted = dag.test(run_conf={**conf, "dataset": "drifted"})
    drifted_states = states(drifted)
    assert drifted_states["quality_drift"] == "success" and drifted_states["trigger_retrain"] == "success", \
        drifted_states

    mlf = MlflowClient(mlflow_server)
    experiment = mlf.get_experiment_by_name(f"byom_{name}-monitoring")
    (run,) = mlf.search_runs([experiment.experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert f"input drift: PSI of {column}" in tags["last_breaches"], tags["last_breaches"]
    assert tags["last_drift_moved_most"].split(" ")[0] == column, tags["last_drift_moved_most"]
    headline = {"binary": "auc", "regression": "rmse"}[spec.task]
    history = mlf.get_metric_history(run.info.run_id, f"quality.{headline}")
    assert len(history) == 2 and all(np.isfinite(m.value) for m in history)  # one per monitor run
    assert metrics[f"drift.input_psi.{column}"] > 0.25
    assert "quality.accuracy" not in metrics or spec.task == "binary"  # a regressor has no accuracy
    # the health probe sent the version's own smoke row through REST and gRPC without an error
    health = {k: v for k, v in metrics.items() if k.startswith("health.") and k.endswith(".error_rate")}
    assert health and all(v == 0.0 for v in health.values()), health


@pytest.mark.parametrize("name", [n for n in DRIFTS if n in EXAMPLES])
def test_online_update_reads_partitions_by_module_and_gates_by_the_task_metric(name, trained, connections,
                                                                                mlflow_server, tmp_path):
    """tf_online_update's steps on a partition in the module's format: a partition missing a column is
    quarantined naming it; the drifted one fine-tunes the champion with replay, judged in the task's
    metric on the new rows and the champion's own holdout; a registered challenger keeps the spec."""
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from tfmlops import model_data, modelspec
    from tfmlops.steps import online

    uri, column, fn = DRIFTS[name]
    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    data, _ = model_data.load(spec, modelspec.import_module(spec.module), uri)
    root = str(tmp_path)
    write_partition(root, "stream", "p1-drifted", spec, data.test, drift=(column, fn))
    broken = write_partition(root, "stream", "p2-broken", spec, data.test)
    pq.write_table(pq.read_table(broken).drop([column]), broken)

    ingested = online.ingest(root, "stream", None, mlflow_server, f"byom_{name}")
    assert [v["partition_id"] for v in ingested["valid"]] == ["p1-drifted"], ingested
    (bad,) = ingested["quarantined"]
    assert bad["partition_id"] == "p2-broken" and column in bad["reason"], bad

    result = online.update(mlflow_server, f"byom_{name}", root, "stream", ["p1-drifted"],
                           online.OnlineConfig(epochs=5, learning_rate=1e-3, batch_size=16))
    metric = {"binary": "auc", "regression": "rmse"}[spec.task]
    m = result["metrics"]
    assert {f"new_{metric}", f"holdout_{metric}", f"champion_new_{metric}", f"champion_holdout_{metric}"} <= set(m)
    assert "new_accuracy" not in m or spec.task == "binary"
    assert result["gate"]["reason"].startswith(f"{metric} on ") or f"holdout {metric}" in result["gate"]["reason"]
    sign = 1 if metric == "auc" else -1
    improved = sign * (m[f"new_{metric}"] - m[f"champion_new_{metric}"]) > 0
    assert result["gate"]["tolerance"] == spec.gate["tolerance"]  # the module's GATE, in the metric's unit
    held = sign * (m[f"champion_holdout_{metric}"] - m[f"holdout_{metric}"]) <= spec.gate["tolerance"]
    assert (result["status"] == "registered") == (improved and held), result
    mlf = MlflowClient(mlflow_server)
    run = mlf.get_run(result["run_id"])
    assert run.data.tags["gate.metric"] == metric and run.data.tags["model.module"] == spec.module
    if result["status"] == "registered":
        version = mlf.get_model_version(f"byom_{name}", str(result["version"]))
        assert version.tags["model.module"] == spec.module and version.tags["model.inputs"] == \
            spec.to_tags()["model.inputs"]
        assert version.tags["online.partitions"] == "p1-drifted"
    # consumed: a second update on the same partition is a no-op
    assert online.update(mlflow_server, f"byom_{name}", root, "stream", ["p1-drifted"])["status"] == "noop"
