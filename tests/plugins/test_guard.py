"""Unit tests of the run guard (``tfmlops_airflow.guard``): its message, its wiring into a DAG and its
decision from the run's task states (the Task SDK calls mocked). The real runs are in
tests/test_run_guard_e2e.py."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow import guard


def test_summary_names_failed_tasks_with_their_errors_then_those_that_did_not_run():
    states = {"resolve": "failed", "report": "skipped", "card": "success",
              **{f"export_{i}": "upstream_failed" for i in range(10)}}
    assert guard.failure_summary(states, {"resolve": "registered model 'x' has no alias 'champion'"}) == (
        "resolve failed: registered model 'x' has no alias 'champion'; 10 tasks did not run (upstream failed): "
        "export_0, export_1, export_2, export_3, export_4, export_5, export_6, export_7 and 2 more")
    assert guard.failure_summary({"a": "failed", "b": "failed"}, {"b": "boom"}) == \
        "a failed (see its log); b failed: boom"
    from airflow.utils.state import TaskInstanceState

    assert guard.failure_summary({"a": TaskInstanceState.FAILED}, {"a": "boom"}) == "a failed: boom"
    # skipped on purpose, succeeded: nothing to report
    assert guard.failure_summary({"gate": "skipped", "export": "skipped", "train": "success"}, {}) is None


def test_errors_are_described_as_a_person_reads_them():
    assert guard.describe_error(AirflowFailException("model 'x' is not registered")) == "model 'x' is not registered"
    assert guard.describe_error(TypeError("'NoneType' object is not subscriptable")) == \
        "TypeError: 'NoneType' object is not subscriptable"
    assert guard.describe_error(ValueError("line 1\n   line 2")) == "ValueError: line 1 line 2"
    long = guard.describe_error(ValueError("x" * 2000))
    assert len(long) == guard.MAX_MESSAGE and long.endswith("…")
    assert guard.describe_error(None) is None


def test_record_failure_stores_the_error_as_an_xcom():
    ti = mock.Mock()
    guard.record_failure({"ti": ti, "exception": AirflowFailException("no alias 'champion'")})
    ti.xcom_push.assert_called_once_with(key="failure", value="no alias 'champion'")


def build_dag():
    from airflow.sdk import DAG, task

    def alert(context):
        pass

    with DAG(dag_id="guarded", schedule=None, start_date=datetime(2026, 1, 1),
             default_args={"retries": 1, "on_failure_callback": alert}) as dag:
        @task
        def work():
            pass

        @task(trigger_rule="all_done")
        def tail():
            pass

        work() >> tail()
        added = guard.add_run_guard(dag)
    return dag, added, alert


def test_add_run_guard_watches_every_task_and_keeps_their_callbacks():
    dag, added, alert = build_dag()
    assert added.task_id == "watcher" and dag.task_dict["watcher"] is added
    assert added.trigger_rule == "all_done" and added.retries == 1
    assert added.upstream_task_ids == {"work", "tail"} and not added.downstream_task_ids
    for task_id in ("work", "tail"):
        assert dag.task_dict[task_id].on_failure_callback == [alert, guard.record_failure]
    assert guard.record_failure in added.on_failure_callback  # its own message lands in XCom too
    assert guard.runs_after_failure(dag.task_dict["tail"]) and not guard.runs_after_failure(dag.task_dict["work"])


def guard_context(states: dict, errors: dict) -> dict:
    ti = SimpleNamespace(
        dag_id="guarded", run_id="manual__1",
        get_task_states=mock.Mock(return_value={"manual__1": {**states, "watcher": "running"}}),
        xcom_pull=mock.Mock(side_effect=lambda task_ids, key: errors.get(task_ids)))
    return {"ti": ti}


def test_the_guard_fails_on_a_failed_or_upstream_failed_task_and_skips_otherwise():
    _, added, _ = build_dag()
    context = guard_context({"work": "failed", "tail": "success"}, {"work": "ValueError: disk full"})
    with pytest.raises(AirflowFailException, match=r"^work failed: ValueError: disk full$"):
        added.execute(context)
    context["ti"].get_task_states.assert_called_once_with(dag_id="guarded", run_ids=["manual__1"])
    context["ti"].xcom_pull.assert_called_once_with(task_ids="work", key="failure")

    with pytest.raises(AirflowFailException, match="1 task did not run"):
        added.execute(guard_context({"work": "success", "tail": "upstream_failed"}, {}))
    with pytest.raises(AirflowSkipException, match="no task of this run failed"):
        added.execute(guard_context({"work": "skipped", "tail": "success"}, {}))


@pytest.mark.parametrize("operator", ["FormatReportOperator", "MobileBundleOperator"])
def test_tasks_after_failures_skip_without_a_resolved_version(operator):
    """``resolve`` failed: report and bundles skip (the guard names resolve) instead of failing with a
    TypeError and being retried."""
    from tfmlops_airflow.operators import optimize

    op = getattr(optimize, operator)(task_id="t", model=None)
    with pytest.raises(AirflowSkipException, match="no resolved model version"):
        op.execute({"run_id": "manual__1"})
