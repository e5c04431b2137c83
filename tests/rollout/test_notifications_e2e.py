"""Notifications sent by a real Airflow (tests/rollout/airflow_stack.py) to the session's real SMTP
server and webhook receiver: a run whose task fails (the task's failure callback, in the worker)
and a run that outlives its deadline (the scheduler finds it missed, the triggerer runs the async
callback). The events' content per channel is in tests/plugins/test_notifications.py."""

from __future__ import annotations

import time

import pytest

import devservers

from .airflow_stack import NOTIFY_SECRET, PROBE_DEADLINE_S, dag_ready, runs, wait_for

pytestmark = pytest.mark.e2e

DAG_ID = "tfmlops_notify_probe"


def test_a_failed_run_and_a_missed_deadline_are_notified(airflow, notify_sinks):
    from tfmlops_airflow.notifications import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

    wait_for("the probe DAG parsed and unpaused", lambda: dag_ready(airflow, DAG_ID), 180, airflow)
    answer = airflow["api"].post(f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns", timeout=30,
                                 json={"logical_date": None, "conf": {"model_name": "churn-e2e"}})
    answer.raise_for_status()
    run_id = answer.json()["dag_run_id"]
    wait_for("the probe run failed", lambda: [r for r in runs(airflow, DAG_ID)
                                              if r["dag_run_id"] == run_id and r["state"] == "failed"], 180, airflow)

    def delivered(event: str):
        mails = [m for m in notify_sinks.mails() if m[0] == f"[tfmlops] churn-e2e: {event}" and run_id in m[1]]
        posts = [p for p in notify_sinks.posts() if p[2]["run_id"] == run_id and p[2]["title"].endswith(event)]
        return mails and posts and (mails[0], posts[0])

    (subject, body), (headers, raw, payload) = wait_for("the run_failed notification", lambda: delivered("run failed"),
                                                        60, airflow)
    assert "RuntimeError: probe: broken on purpose" in body and "late_and_broken" in body
    assert f"{airflow['url']}/dags/{DAG_ID}/runs/{run_id}" in body
    assert headers[SIGNATURE_HEADER] == signature(NOTIFY_SECRET, headers[TIMESTAMP_HEADER], raw)
    assert (payload["event"], payload["model"], payload["task_id"]) == ("run_failed", "churn-e2e", "late_and_broken")

    (subject, body), (headers, raw, payload) = wait_for("the deadline_missed notification",
                                                        lambda: delivered("deadline missed"), 60, airflow)
    assert f"not finished 0:00:0{PROBE_DEADLINE_S} after it was queued" in body
    assert headers[SIGNATURE_HEADER] == signature(NOTIFY_SECRET, headers[TIMESTAMP_HEADER], raw)
    assert payload["event"] == "deadline_missed" and payload["dag_id"] == DAG_ID
    # the triggerer stored the callback's outcome (a text column) and lives on
    time.sleep(3)
    assert devservers.running_pid("airflow-triggerer", airflow["home"]), devservers.log_tail(
        "airflow-triggerer", airflow["home"], 40)
    assert "Exception when executing" not in (airflow["home"] / "airflow-triggerer.log").read_text()
    # one of each for the run
    assert sorted(p[2]["event"] for p in notify_sinks.posts() if p[2]["run_id"] == run_id) == \
        ["deadline_missed", "run_failed"]
