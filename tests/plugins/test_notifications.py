"""Notifications through Airflow's notifiers to a real SMTP server (aiosmtpd) and a real webhook
receiver on loopback: the content of each event (model, version, reason, links), the webhook's
signature, the async path the triggerer runs for deadlines, channels that fail, and the
operators that send them. Airflow's own delivery of a failed run and a missed deadline (worker,
scheduler, triggerer) is in tests/rollout/test_notifications_e2e.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

import devservers

SECRET = "chat-signing-secret"


@pytest.fixture
def channels(monkeypatch, notify_sinks):
    """Every channel on, pointing at the sinks; the sinks' earlier messages forgotten."""
    for key, value in notify_sinks.airflow_env(SECRET).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.test")
    monkeypatch.setenv("AIRFLOW__TFMLOPS__MLFLOW_UI_URL", "https://mlflow.example.test")
    notify_sinks.clear()
    return notify_sinks


def context(dag_id="tf_serving_rollout", task_id="rollout", **extra) -> dict:
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id=task_id), "run_id": "manual__2026-12-06", **extra}


def arrived(sinks, count: int = 1):
    return devservers.wait_for(lambda: len(sinks.mails()) >= count and len(sinks.posts()) >= count and
                               (sinks.mails(), sinks.posts()), 10, "the notification")


def test_off_by_default_nothing_is_sent_or_looked_up(monkeypatch):
    from tfmlops_airflow import notifications

    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    with mock.patch.object(notifications, "event_from") as build:
        assert notifications.notify(context(), "rollback", model="m", version=2, reason="r") == []
    build.assert_not_called()
    with pytest.raises(ValueError, match="unknown notification event 'rolback'"):
        notifications.notify(context(), "rolback", model="m")


def test_an_event_arrives_by_mail_and_signed_webhook_with_its_facts_and_links(channels):
    from tfmlops_airflow.notifications import SIGNATURE_HEADER, TIMESTAMP_HEADER, notify, signature

    sent = notify(context(), "rollback", model="churn", version=3, reason="p99 912 ms over 500 ms", strategy="gray")
    assert sent == ["SmtpNotifier", "WebhookNotifier"]
    (mails, posts) = arrived(channels)
    subject, body = mails[0]
    assert subject == "[tfmlops] churn version 3: rolled back"
    for fact in ("churn", ">3<", "p99 912 ms over 500 ms", "gray", "tf_serving_rollout", "manual__2026-12-06",
                 "https://airflow.example.test/dags/tf_serving_rollout/runs/manual__2026-12-06",
                 "https://mlflow.example.test/#/models/churn/versions/3"):
        assert fact in body, fact
    headers, raw, payload = posts[0]
    assert headers[SIGNATURE_HEADER] == signature(SECRET, headers[TIMESTAMP_HEADER], raw)
    assert payload["event"] == "rollback" and payload["model"] == "churn" and payload["version"] == "3"
    assert payload["reason"] == "p99 912 ms over 500 ms" and payload["details"] == {"strategy": "gray"}
    assert payload["links"]["MLflow model"] == "https://mlflow.example.test/#/models/churn/versions/3"
    assert payload["text"].startswith("[tfmlops] churn version 3: rolled back\nReason: p99 912 ms")


def test_a_reason_is_never_rendered_as_a_template_and_is_escaped_in_html(channels):
    from tfmlops_airflow.notifications import notify

    notify(context(), "gate_rejected", model="m", reason="{{ 7 * 7 }} <b>not bold</b> {% if x %}")
    (mails, posts) = arrived(channels)
    assert "{{ 7 * 7 }} &lt;b&gt;not bold&lt;/b&gt; {% if x %}" in mails[0][1]
    assert posts[0][2]["reason"] == "{{ 7 * 7 }} <b>not bold</b> {% if x %}"


def test_events_can_be_chosen_and_a_failing_channel_does_not_stop_the_others(channels, monkeypatch, caplog):
    from tfmlops_airflow.notifications import notify

    monkeypatch.setenv("AIRFLOW__TFMLOPS__NOTIFY_EVENTS", "rollback, run_failed")
    assert notify(context(), "promotion", model="m", version=1) == []
    closed = devservers.free_port()
    monkeypatch.setenv("AIRFLOW_CONN_TFMLOPS_SMTP", json.dumps({"conn_type": "smtp", "host": "127.0.0.1",
                                                                "port": closed, "extra": {"disable_ssl": True}}))
    with caplog.at_level("ERROR", logger="tfmlops.notifications"):
        assert notify(context(), "rollback", model="m", version=1, reason="r") == ["WebhookNotifier"]
    assert "through SmtpNotifier failed" in caplog.text
    assert channels.posts()[0][2]["event"] == "rollback"


def test_the_deadline_callback_runs_async_on_the_triggerers_context(channels):
    from tfmlops_airflow.notifications import deadline_missed

    simple_context = {"dag_run": {"dag_id": "tf_offline_retrain", "dag_run_id": "scheduled__x", "state": "running",
                                  "queued_at": "2026-12-06T01:00:00Z", "conf": {"model_name": "churn"}},
                      "deadline": {"id": "d-1", "deadline_time": "2026-12-06T03:00:00Z"}}
    sent = asyncio.run(deadline_missed(context=simple_context, interval="2:00:00"))
    assert sent == "SmtpNotifier, WebhookNotifier"
    (mails, posts) = arrived(channels)
    assert mails[0][0] == "[tfmlops] churn: deadline missed"
    assert "not finished 2:00:00 after it was queued (deadline 2026-12-06T03:00:00Z)" in mails[0][1]
    assert posts[0][2]["links"] == {"Airflow run": "https://airflow.example.test/dags/tf_offline_retrain/runs/scheduled__x"}


def test_deadline_alert_reads_its_minutes_and_refuses_nonsense(monkeypatch):
    from datetime import timedelta

    from tfmlops_airflow.notifications import deadline_alert

    monkeypatch.setenv("TFMLOPS_X_DEADLINE_MIN", "0.5")
    alert = deadline_alert("TFMLOPS_X_DEADLINE_MIN", default_minutes=120)
    assert alert.interval == timedelta(seconds=30)
    assert alert.callback.path == "tfmlops_airflow.notifications.deadline_missed"
    for bad in ("-1", "two hours"):
        monkeypatch.setenv("TFMLOPS_X_DEADLINE_MIN", bad)
        with pytest.raises(ValueError, match=f"must be a positive number of minutes, got '{bad}'"):
            deadline_alert("TFMLOPS_X_DEADLINE_MIN", default_minutes=120)


def test_run_failed_sends_once_per_run(channels):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from tfmlops_airflow.guard import GUARD_TASK_ID, add_run_guard
    from tfmlops_airflow.notifications import run_failed

    with DAG("tf_offline_retrain", schedule=None) as guarded:
        EmptyOperator(task_id="train")
        add_run_guard(guarded)
    run_failed(context(dag_id="tf_offline_retrain", task_id="train", dag=guarded, exception=RuntimeError("OOM")))
    notified = AirflowFailException("rolled back")
    notified.tfmlops_notified = True
    run_failed(context(exception=notified))
    assert channels.mails() == []  # the guard speaks for the run; a rollback already sent its own
    run_failed(context(dag_id="tf_offline_retrain", task_id=GUARD_TASK_ID, dag=guarded, params={"model_name": "churn"},
                       exception=AirflowFailException("train failed: OOM")))
    (mails, _) = arrived(channels)
    assert mails[0][0] == "[tfmlops] churn: run failed"
    assert "AirflowFailException: train failed: OOM" in mails[0][1]


def test_operators_send_their_events(channels, monkeypatch):
    """The gate's rejection, a rollout's promotion and rollback, a drift alarm: each operator sends
    its event with what it knows (steps mocked, as in test_operators.py)."""
    from tfmlops_airflow.operators.monitor import LiveDriftOperator
    from tfmlops_airflow.operators.retrain import ModelGateOperator
    from tfmlops_airflow.operators.rollout import ServingRolloutOperator

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": "mlflow.test"}))
    monkeypatch.setenv("AIRFLOW_CONN_TF_SERVING_DEFAULT", json.dumps({
        "conn_type": "http", "host": "serving.test", "port": 9501, "extra": {"grpc_port": 9500, "models_root": "/m"}}))
    gate = ModelGateOperator(task_id="gate", model_name="churn", run_id="r1", metrics={"auc": 0.6},
                             model_module="tfmlops_examples.mnist_mlp")
    with mock.patch("tfmlops.steps.retrain.gate_against_champion",
                    return_value={"passed": False, "reason": "auc 0.6 under 0.8"}):
        with pytest.raises(AirflowSkipException):
            gate.execute(context(dag_id="tf_offline_retrain", task_id="gate"))
    rollout = ServingRolloutOperator(task_id="rollout", model_name="churn", version="4")
    promoted = {"model": "churn", "version": 4, "strategy": "replace", "outcome": "promoted", "endpoints": ["a:1"],
                "old_versions": [3], "checks": {}, "published": [], "retired": [], "aliases": {}, "seconds": 1.0}
    with mock.patch("tfmlops.steps.rollout.rollout_registered", return_value=promoted), \
            mock.patch("tfmlops_airflow.operators.base.TFMLOpsBaseOperator.serving_endpoints", return_value=[]):
        rollout.execute(context(outlet_events=mock.MagicMock()))
        rolled_back = {**promoted, "outcome": "rolled_back", "rolled_back": ["a:1"], "reason": "accuracy 0.41"}
        with mock.patch("tfmlops.steps.rollout.rollout_registered", return_value=rolled_back):
            with pytest.raises(AirflowFailException) as failed:
                rollout.execute(context(outlet_events=mock.MagicMock()))
    assert failed.value.tfmlops_notified
    drift = LiveDriftOperator(task_id="drift", model_name="churn", log_prefix="/logs/x")
    with mock.patch("tfmlops.steps.monitor.check_live_drift",
                    return_value={"retrain": True, "reason": "input PSI 0.4 over 0.25", "version": 4}):
        drift.execute(context(dag_id="tf_model_monitor", task_id="drift"))
    (mails, posts) = arrived(channels, 4)
    assert [m[0] for m in mails] == ["[tfmlops] churn: candidate rejected at the gate",
                                     "[tfmlops] churn version 4: promoted", "[tfmlops] churn version 4: rolled back",
                                     "[tfmlops] churn version 4: drift alarm: retrain asked"]
    assert [p[2]["reason"] for p in posts] == ["auc 0.6 under 0.8", "rollout", "accuracy 0.41",
                                               "input PSI 0.4 over 0.25"]
    assert posts[0][2]["details"] == {"mlflow_run": "r1"} and posts[1][2]["details"]["endpoints"] == "a:1"
