"""The registry's ``@champion`` is what is served: a moved alias is rolled out within a minute."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, Param

from tfmlops_airflow import params
from tfmlops_airflow.assets import SERVING_INTENT
from tfmlops_airflow.operators.reconcile import ReconcileServingOperator
from tfmlops_airflow.triggers import ChampionMovedTrigger

DOC = """
### Serving follows the registry's `champion`

The MLflow registry is the control panel: a person who moves a model's **`@champion`** alias in
MLflow's UI (to roll back after an incident, or to promote a version trained elsewhere) changes
what is served. This DAG compares, per model, the champion with what each of its targets serves
and starts a **`tf_serving_rollout`** run for every model that differs, with the model's serving
settings; the rollout records the change in the model's audit trail (tag `serving.audit`, from →
to, the run, the reason "reconcile: champion moved in the registry"), shown in the model card.

When it runs:
- **at once** on MLflow's `model_version_alias.created/deleted` webhooks for `champion`, received
  by Airflow's API server at `/tfmlops/webhooks/mlflow` (HMAC-signed; forged or replayed calls
  are refused);
- **every few seconds** a registry poll in the triggerer (`ChampionMovedTrigger`, one registry
  call per look) compares each champion with the version its rollouts recorded as served — so a
  lost webhook delays nothing by more than a poll;
- **daily**, a full look at every target (a server restarted on an old config is caught too).

A DAG's own promotion records what it served before it moves the alias, so it starts nothing.
Runs here only *plan*: the rollout itself is the `tf_serving_rollout` run it starts and waits for
(deferred, in the triggerer). One reconcile run at a time, so a wake-up that arrives during a rollout
(the webhook and the poll both report one move) looks after it and finds nothing to do; the plan
is taken in the rollout pool, so a rollout of another DAG in progress finishes first.

**Serving settings per model**: the Variable `tfmlops_serving_<model>` — a JSON object of
`tf_serving_rollout` form fields, e.g. `{"strategy": "canary", "targets": ["tf_serving_default"],
"canary_holdout_uri": "…"}`; none: the form's defaults. Models watched: those named in the
environment variable `TFMLOPS_RECONCILE_MODELS` (comma-separated), else every model a rollout has
served (registered-model tag `serving.version`). A deleted `champion` takes nothing down.
"""

# Deployment settings, read at parse time (environment variables: nothing to import):
# TFMLOPS_RECONCILE_MODELS — the models this Airflow reconciles, comma-separated (several deployments
#   may share one registry); empty: every model a rollout has served.
# TFMLOPS_RECONCILE_POLL_S — seconds between two looks of the registry poll.
MODELS = [m.strip() for m in os.environ.get("TFMLOPS_RECONCILE_MODELS", "").split(",") if m.strip()]
POLL_S = float(os.environ.get("TFMLOPS_RECONCILE_POLL_S", "15"))

WATCHED_INTENT = Asset(name=SERVING_INTENT.name, watchers=[
    AssetWatcher(name="tfmlops_champion_poll", trigger=ChampionMovedTrigger(models=MODELS, poll_s=POLL_S))])

with DAG(
    dag_id="tf_serving_reconcile",
    description="MLflow @champion → TF Serving: a moved alias is rolled out (webhook, registry poll, daily)",
    doc_md=DOC,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
                                 assets=WATCHED_INTENT),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # the registry is the control panel from the first start
    # null, not "": the UI form takes an empty string for a missing value and keeps Trigger disabled
    params={"model_name": Param(None, type=["null", "string"], maxLength=250, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                title="Model",
                                description="One registered model, or empty for every model this "
                                            "deployment reconciles.")},
    tags=["tensorflow", "serving", "mlflow", "reconcile"],
    default_args=params.default_args(timedelta(seconds=30)),
) as dag:
    plan = ReconcileServingOperator(task_id="plan", task_display_name="Champion vs served",
                                    model_name="{{ params.model_name }}", models=MODELS)
    # waits (deferred: no worker slot held) until the rollout has promoted or rolled back, so that the
    # next reconcile run (one at a time) looks at serving after it, not at a rollout half-way
    TriggerDagRunOperator.partial(task_id="rollout", task_display_name="Run tf_serving_rollout",
                                  trigger_dag_id="tf_serving_rollout", wait_for_completion=True, deferrable=True,
                                  poke_interval=5, failed_states=["failed"]).expand(conf=plan.output)
