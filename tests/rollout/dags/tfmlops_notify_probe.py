"""A test DAG built as the project's DAGs are (their ``default_args`` and ``deadline_alert``): its
one task outlives the DAG's deadline (``$TFMLOPS_PROBE_DEADLINE_MIN``), then fails — the missed
deadline (scheduler → triggerer) and the failed run (the task's failure callback) are notified."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from tfmlops_airflow import params
from tfmlops_airflow.notifications import deadline_alert

with DAG(
    dag_id="tfmlops_notify_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    params={"model_name": Param("probe-model", type="string")},
    default_args={**params.default_args(timedelta(seconds=1)), "retries": 0},
    deadline=deadline_alert("TFMLOPS_PROBE_DEADLINE_MIN", default_minutes=1),
):

    @task
    def late_and_broken(seconds: float = 12):
        import time

        time.sleep(seconds)
        raise RuntimeError("probe: broken on purpose")

    late_and_broken()
