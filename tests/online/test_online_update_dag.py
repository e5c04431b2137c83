"""``tf_online_update`` end to end with ``dag.test()``: real ``mlflow server`` and the local serving
server. A bad partition is quarantined and nothing is registered; an update on rotated data beats
the champion there, keeps the holdout, is registered with lineage and rolled out as a canary;
re-running on the consumed partition changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfmlops import simulate

from .conftest import MODEL, load_dag, states

pytestmark = pytest.mark.e2e

CONF = {"model_name": MODEL, "epochs": 3, "learning_rate": 0.001, "tolerance": 0.03, "holdout_rows": 1000,
        "latency_budget_ms": 5000}


def versions(mlf) -> list[int]:
    return sorted(int(v.version) for v in mlf.search_model_versions(f"name='{MODEL}'"))


def test_bad_partition_is_quarantined_and_nothing_registered(champion, airflow_db, airflow_connections,
                                                             mlflow_server, tmp_path):
    from mlflow import MlflowClient

    mlf = MlflowClient(mlflow_server)
    before = versions(mlf)
    x, y = simulate.pool()
    bad = simulate.make_partition(x, y, 100, seed=31)
    bad["x_train"] = bad["x_train"].astype(np.float32)
    bad["x_train"][3, 5, 5] = np.nan
    simulate.write_partition(str(tmp_path), "bad", "p-bad", bad)

    run = load_dag("tf_online_update").test(run_conf={**CONF, "root": str(tmp_path), "dataset": "bad"})
    task_states = states(run)
    assert set(task_states.values()) == {"skipped"}, task_states
    reason = json.loads((tmp_path / "bad" / "quarantine" / "p-bad" / "reason.json").read_text())
    assert "has NaN or inf values in 1 rows" in reason["reason"]  # the champion module's check of its input
    assert not (tmp_path / "bad" / "incoming" / "p-bad").exists()
    assert versions(mlf) == before
    assert not (tmp_path / "bad" / "ledger.json").exists()


def test_online_update_canary_then_rerun_is_noop(champion, airflow_db, airflow_connections, mlflow_server,
                                                 serving_server, tmp_path):
    from mlflow import MlflowClient

    from tfmlops.deploy.client import ServingClient

    mlf = MlflowClient(mlflow_server)
    parent = int(mlf.get_model_version_by_alias(MODEL, "champion").version)
    before = versions(mlf)
    x, y = simulate.pool()
    simulate.write_partition(str(tmp_path), "shifted", "p-rot", simulate.make_partition(x, y, 1000, "rotation", 0.5,
                                                                                        seed=21))
    holdout = tmp_path / "canary_holdout.npz"  # canary accuracy check through the server
    np.savez(holdout, x=x[:200].reshape(200, -1).astype(np.float32) / 255.0, y=y[:200])
    conf = {**CONF, "root": str(tmp_path), "dataset": "shifted", "canary_holdout_uri": str(holdout),
            "canary_min_accuracy": 0.5}

    run = load_dag("tf_online_update").test(run_conf=conf)
    assert str(run.state) == "success", states(run)
    assert versions(mlf) == before + [before[-1] + 1]
    new = mlf.get_model_version(MODEL, str(before[-1] + 1))
    assert new.tags["online.parent_version"] == str(parent) and new.tags["online.partitions"] == "p-rot"
    assert new.tags["airflow.dag_id"] == "tf_online_update" and new.tags["airflow.run_id"] == run.run_id
    metrics = mlf.get_run(new.run_id).data.metrics
    assert metrics["new_accuracy"] > metrics["champion_new_accuracy"], metrics
    assert metrics["holdout_accuracy"] >= metrics["champion_holdout_accuracy"] - 0.03, metrics
    assert mlf.get_run(new.run_id).data.params["data.replay_rows"] == "700"
    # rolled out as a canary and promoted: MLflow aliases and tags, served under the stable label
    assert {k: new.tags[k] for k in ("serving.outcome", "serving.strategy")} == {
        "serving.outcome": "promoted", "serving.strategy": "canary"}
    assert int(mlf.get_model_version_by_alias(MODEL, "champion").version) == int(new.version)
    assert int(mlf.get_model_version_by_alias(MODEL, "previous").version) == parent
    with ServingClient("127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"]) as client:
        probs = client.predict_rest(MODEL, x[:4].reshape(4, -1).astype(np.float32) / 255.0, label="stable")
        assert probs.shape == (4, 10)
    ledger_file = Path(tmp_path) / "shifted" / "ledger.json"
    ledger = json.loads(ledger_file.read_text())
    assert ledger["partitions"]["p-rot"]["version"] == int(new.version)

    # re-running on the consumed partition changes nothing
    rerun = load_dag("tf_online_update").test(run_conf={**conf, "partitions": "p-rot"})
    assert set(states(rerun).values()) == {"skipped"}, states(rerun)
    assert versions(mlf) == before + [int(new.version)]
    assert int(mlf.get_model_version_by_alias(MODEL, "champion").version) == int(new.version)
    assert json.loads(ledger_file.read_text()) == ledger
