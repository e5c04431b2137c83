"""The run guard: a DAG run is green only when its work succeeded.

Airflow decides a run's state from its leaf tasks. A task that runs after failures (trigger rule
``all_done``: the model card, the trade-off report, the mobile bundles) is a leaf that succeeds or
skips whatever happened before it, so a run whose real work failed would show ``success`` to the
grid, to notifications, to the assets it feeds and to API clients.

:func:`add_run_guard` is the one way a DAG prevents that: it adds a :class:`RunGuardOperator`
(task id ``watcher``) downstream of every other task of the DAG, with ``trigger_rule=all_done``.
Once every task has finished, the guard reads the run's task states (``get_task_states`` of the
Task SDK, through the Execution API: a task never queries the metadata DB) and

- fails (``AirflowFailException``: no retry) when a task failed or was upstream-failed, with a
  message naming each failed task and its error — ``resolve failed: registered model 'x' has no
  alias 'champion'`` — and the tasks that did not run because of it;
- skips itself otherwise: a task skipped on purpose (a gate rejection, a variant or format not
  selected or not applicable) leaves the run green.

The errors come from :func:`record_failure`, an ``on_failure_callback`` that :func:`add_run_guard`
appends to every task of the DAG (next to the callbacks it has): it stores the exception's message
as the task's XCom ``failure``. The guard's own message is stored there too (``watcher`` /
``failure``), for API clients and notifiers.
"""

from __future__ import annotations

from typing import Any, Mapping

from airflow.sdk import BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

GUARD_TASK_ID = "watcher"
FAILURE_KEY = "failure"
#: trigger rules that let a task run although an upstream task failed: a DAG with such a task needs the guard
RUNS_AFTER_FAILURE = frozenset(TriggerRule) - {TriggerRule.ALL_SUCCESS, TriggerRule.NONE_FAILED,
                                               TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, TriggerRule.ALL_SKIPPED}
MAX_MESSAGE = 500  # characters of one task's error in the guard's message
MAX_NAMED = 8  # tasks named in the list of those that did not run


def runs_after_failure(task) -> bool:
    """Whether ``task``'s trigger rule lets it run after an upstream failure."""
    return task.trigger_rule in RUNS_AFTER_FAILURE


def describe_error(error: BaseException | str | None) -> str | None:
    """One task's error as the guard shows it: an Airflow exception's own message (they are written
    to be read), any other exception with its type; cut to :data:`MAX_MESSAGE` characters."""
    if error is None:
        return None
    text = str(error) if isinstance(error, (str, AirflowException)) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def record_failure(context) -> None:
    """``on_failure_callback``: the failed task's error as its XCom ``failure`` (read by the guard)."""
    context["ti"].xcom_push(key=FAILURE_KEY, value=describe_error(context.get("exception")))


def _state(state: Any) -> str:
    return str(getattr(state, "value", state))


def failure_summary(states: Mapping[str, Any], errors: Mapping[str, str | None]) -> str | None:
    """The guard's message for a run's task states (``{task_id: state}``) and the recorded errors of
    its failed tasks; None when no task failed or was upstream-failed."""
    failed = sorted(t for t, s in states.items() if _state(s) == "failed")
    not_run = sorted(t for t, s in states.items() if _state(s) == "upstream_failed")
    if not failed and not not_run:
        return None
    parts = [f"{t} failed: {errors[t]}" if errors.get(t) else f"{t} failed (see its log)" for t in failed]
    if not_run:
        named = ", ".join(not_run[:MAX_NAMED]) + (f" and {len(not_run) - MAX_NAMED} more"
                                                  if len(not_run) > MAX_NAMED else "")
        parts.append(f"{len(not_run)} task{'s' if len(not_run) > 1 else ''} did not run (upstream failed): {named}")
    return "; ".join(parts)


class RunGuardOperator(BaseOperator):
    """Fail the run, naming each failed task and its error, when a task of the run failed or was
    upstream-failed; skip otherwise. Runs when every upstream task has finished
    (``trigger_rule=all_done``). Add it with :func:`add_run_guard`, not by hand."""

    ui_color = "#fde2e2"

    def __init__(self, **kwargs):
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        kwargs.setdefault("task_display_name", "Fail the run if a task failed")
        super().__init__(**kwargs)

    def execute(self, context) -> None:
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
        states = {t: s for t, s in states.items() if t != self.task_id}
        errors = {t: ti.xcom_pull(task_ids=t, key=FAILURE_KEY) for t, s in states.items() if _state(s) == "failed"}
        message = failure_summary(states, errors)
        if message is None:
            raise AirflowSkipException("no task of this run failed")
        raise AirflowFailException(message)


def add_run_guard(dag, task_id: str = GUARD_TASK_ID) -> RunGuardOperator:
    """Add the run guard to ``dag``, downstream of every task it has (call it once all are defined),
    and :func:`record_failure` to each task's ``on_failure_callback``. Returns the guard."""
    guarded = list(dag.tasks)
    guard = RunGuardOperator(task_id=task_id, dag=dag)
    for task in (*guarded, guard):
        callbacks = list(task.on_failure_callback or ())
        if record_failure not in callbacks:
            task.on_failure_callback = [*callbacks, record_failure]
    guard.set_upstream(guarded)
    return guard
