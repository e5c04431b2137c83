"""``tf_model_monitor`` end to end with ``dag.test()``: real ``mlflow server``, the local serving
server, the champion of the session. A clean partition does not trigger a retrain; a drifted
one does (with the reason), and a latency threshold breach fails the health task with the numbers."""

from __future__ import annotations

import pytest

from tfmlops import simulate

from .conftest import MODEL, load_dag, states

pytestmark = pytest.mark.e2e

CONF = {"model_name": MODEL, "requests": 10, "max_p99_ms": 5000, "max_error_rate": 0.0, "gate_threshold": 0.7}


def users_send(serving_server, images) -> None:
    """Clients (not the project's own tools) send these images to the champion, one per request."""
    import json
    import urllib.request

    rows = (images.reshape(len(images), -1) / 255.0).astype("float32")
    for i, row in enumerate(rows):
        req = urllib.request.Request(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{MODEL}:predict",
                                     data=json.dumps({"instances": [row.tolist()]}).encode(), method="POST",
                                     headers={"X-Request-Id": f"user-{id(images)}-{i}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200


def retrain_runs():
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [(r.run_id, dict(r.conf or {})) for r in
                session.query(DagRun).filter(DagRun.dag_id == "tf_offline_retrain", DagRun.run_type != "scheduled")]


def test_monitor_clean_then_drifted(champion, airflow_db, airflow_connections, mlflow_server, serving_server,
                                    tmp_path):
    from mlflow import MlflowClient

    # live drift reads the champion's request logs (every request to it is logged in these tests),
    # without the project's own requests (this monitor's probes and evaluation, the rollout's checks)
    conf = {**CONF, "log_prefix": str(serving_server["request_logs"] / MODEL / "requests"), "live_min_rows": 50}
    root = str(tmp_path)
    x, y = simulate.pool()
    clean = simulate.make_partition(x, y, 300, seed=11)
    simulate.write_partition(root, "clean", "p1", clean)
    users_send(serving_server, clean["x_test"])  # 90 rows
    before = retrain_runs()

    # 1. clean data: healthy, accurate, no drift → no retrain
    run = load_dag("tf_model_monitor").test(run_conf={**conf, "root": root, "dataset": "clean"})
    assert str(run.state) == "success", states(run)
    task_states = states(run)
    assert task_states["health"] == task_states["quality_drift"] == task_states["live_drift"] == "success", task_states
    assert task_states["trigger_retrain"] == "skipped", task_states
    assert retrain_runs() == before

    mlf = MlflowClient(mlflow_server)
    monitor_run = mlf.search_runs([mlf.get_experiment_by_name(f"{MODEL}-monitoring").experiment_id])[0]
    metrics = monitor_run.data.metrics
    assert metrics["quality.accuracy"] >= 0.7 and metrics["drift.input_psi_max"] < 0.25
    assert {"quality.f1.class_0", "quality.f1_macro", "quality.recall_macro", "drift.prediction_psi",
            f"health.tf_serving_default.v{champion['version']}.rest.p99_ms",
            f"health.tf_serving_default.v{champion['version']}.grpc.throughput_rps",
            f"health.tf_serving_default.v{champion['version']}.grpc.error_rate"} <= set(metrics)
    assert {a.path for a in mlf.list_artifacts(monitor_run.info.run_id, "charts")} == {
        "charts/monitoring_trends.png"}
    # the drift profile was computed once and stored with the registered version
    assert "monitoring/profile.json" in {a.path for a in mlf.list_artifacts(champion["run_id"], "monitoring")}

    # 2. rotated data → accuracy drop / input drift → tf_offline_retrain triggered with the reason;
    #    an impossible latency threshold fails the health task with the numbers
    drifted = simulate.make_partition(x, y, 300, "rotation", 0.75, seed=12)
    simulate.write_partition(root, "drifted", "p1", drifted)
    users_send(serving_server, drifted["x_test"])  # 90 rotated rows
    assert metrics["live.rows"] == 90, metrics  # only what users sent
    run = load_dag("tf_model_monitor").test(run_conf={**conf, "root": root, "dataset": "drifted",
                                                      "max_p99_ms": 0.001})
    task_states = states(run)
    assert task_states["health"] == "failed" and task_states["trigger_retrain"] == "success", task_states
    new = [r for r in retrain_runs() if r not in before]
    assert len(new) == 1, new
    conf = new[0][1]
    assert conf["model_name"] == MODEL
    assert "input drift" in conf["reason"] or "accuracy" in conf["reason"], conf
    assert len(mlf.get_metric_history(monitor_run.info.run_id, "quality.accuracy")) == 2
    # live traffic now holds the rotated rows too: more logged rows, and its input drift went up
    rows = [m.value for m in mlf.get_metric_history(monitor_run.info.run_id, "live.rows")]
    psi = [m.value for m in mlf.get_metric_history(monitor_run.info.run_id, "live.input_psi_max")]
    assert len(rows) == len(psi) == 2 and rows == [90, 180] and psi[1] > psi[0], (rows, psi)

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:  # leave no queued retrain run behind for other tests
        session.query(DagRun).filter(DagRun.dag_id == "tf_offline_retrain", DagRun.run_id == new[0][0]).delete()
