"""Offline retraining: full retrain on all data, gated, registered in MLflow and served."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfmlops_airflow import params
from tfmlops_airflow.notifications import deadline_alert
from tfmlops_airflow.chains import hparam_search, train_to_serving
from tfmlops_airflow.guard import add_run_guard
from tfmlops_airflow.operators.retrain import ValidateDatasetOperator

DOC = """
### Offline retraining of your TensorFlow model

Retrains the model of a **model module** (`model_module`: the MNIST MLP example by default, any
module of the contract — see the README's "Bring your own model") from scratch on its dataset
(weekly, or now from **Trigger ▸ with config**), and deploys the result only if it is good enough:

1. **validate** — the module is read once (the contract checked: a broken module fails here with
   one message naming it and the problem); its data is checked against its `INPUTS` (names,
   dtypes, shapes), NaN/inf, labels, empty splits, train/test overlap. The model spec read here
   (task, inputs, classes, hyperparameters) is what every later task works from.
2. **search** (only with `search_trials` > 0) — an [Optuna](https://optuna.org) search of that many
   trials over the module's `SEARCH_SPACE`, pulled by `search_parallelism` mapped worker tasks (on
   whichever workers are free), the objective the gate metric on the validation split; the best
   configuration is what `train` trains, the search's parent run in the version's lineage (as
   `tf_hparam_search` does — that DAG takes a space, pruner and storage of the form's own). With 0
   trials (the default) its tasks pass the module's hyperparameters on and the workers skip.
3. **train** — a new MLflow run (experiment = model name) with params, the spec, per-epoch
   metrics (also in this task's log), training curves and the model.
4. **evaluate** — the task's metrics on the test split: accuracy, macro P/R/F1 and the confusion
   matrix (multiclass); AUC, accuracy, precision/recall and the ROC curve (binary); RMSE, MAE, R²
   and residuals (regression).
5. **gate** — the candidate's gate metric (`gate_metric`, default the module's `GATE`: accuracy /
   AUC / RMSE by task) must reach `gate_threshold` and not be worse than the current `champion`
   (re-evaluated on the same test data) by more than `tolerance`, in the metric's own unit. A
   rejected candidate skips everything after the gate: the champion and the served version stay.
6. **export** — SavedModel with `serving_default` (named raw inputs) and `classification` /
   `regression` (serialized `tf.Example`, TF Serving's Classify/Regress APIs), reloaded and checked.
7. **register** — a new version in the MLflow model registry, alias `challenger`, lineage tags and
   the model spec (module and its source hash, task, inputs, label, classes, hyperparameters).
8. **rollout** — the `tf_serving_rollout` logic (`replace` by default, or `canary`): version
   *N* (= registry version) is published safely into every target's base path, loaded next to
   the served version, checked over REST and gRPC against the registered model's predictions,
   then switched to; one endpoint at a time, rolled back by itself on a failed check. On success
   `champion` → *N* (the old champion becomes `previous`) and an event on the asset
   `tfmlops_champion` schedules `tf_optimize_export`.
9. **model card** — whatever the rollout did: the version's card (intended use, data fingerprint
   and lineage, metrics overall and per class, the gate's decision, serving history, known
   limitations) as Markdown and HTML under `model_card/` on its run, linked from the version's
   description; `tf_optimize_export` rewrites it with the verified formats.
10. **watcher** — the run guard (`tfmlops_airflow.guard`), once every task has finished: when a
   task failed or did not run because of a failure, it fails the run with a message naming each
   failed task and its error (`validate_data failed: …`); otherwise it is skipped. Airflow decides a
   run's state by its last tasks, and the model card runs — and succeeds — after a failed rollout
   too; a gate rejection is not a failure (the run stays green).

Connections: `mlflow_default`, the target TF Serving connections (`tf_serving_default`),
`aws_default` (for `s3://` datasets and base paths).
"""

PARAMS = {
    "model_name": params.model_name("Registered model name in MLflow, and the served model's name."),
    **params.model(),
    "dataset_uri": params.dataset_uri("Training and test data"),
    "sample_fraction": params.sample_fraction(),
    "search_trials": Param(0, type="integer", minimum=0, maximum=1000, title="Search trials",
                           description="0: train the module's hyperparameters as they are. N: an Optuna search of "
                                       "N trials over the module's SEARCH_SPACE first (as tf_hparam_search does), "
                                       "its best configuration trained."),
    "search_parallelism": Param(2, type="integer", minimum=1, maximum=16, title="Search workers",
                                description="Worker tasks pulling the search's trials at once."),
    "search_time_budget_s": Param(3600, type="integer", minimum=60, maximum=7 * 86400, title="Search time budget (s)",
                                  description="No trial starts after this many seconds from the search's start."),
    **params.rollout(),
}

with DAG(
    dag_id="tf_offline_retrain",
    description="Full retrain → evaluate → gate → export → register → deploy to TF Serving → champion",
    doc_md=DOC,
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "retraining", "mlflow", "serving"],
    user_defined_macros={"hyperparameters": params.hyperparameters},
    default_args=params.default_args(timedelta(minutes=1)),
    deadline=deadline_alert("TFMLOPS_RETRAIN_DEADLINE_MIN", default_minutes=120),  # late: deadline_missed
) as dag:
    data = {"dataset_uri": "{{ params.dataset_uri }}", "sample_fraction": "{{ params.sample_fraction }}"}

    validate = ValidateDatasetOperator(
        task_id="validate_data", task_display_name="Validate model module and data",
        model_module="{{ params.model_module }}", hyperparameters="{{ hyperparameters(params) }}", **data)
    # what validate read from the module, as plain data: every later task works from it; with
    # search_trials, an Optuna search first (else its workers skip and finish passes the spec on)
    finish = hparam_search(
        validate.output["model_spec"], data, prepare_name="Prepare the search (when asked)",
        search_space="", n_trials="{{ params.search_trials }}", parallelism="{{ params.search_parallelism }}",
        time_budget_s="{{ params.search_time_budget_s }}", storage=params.DEFAULT_SEARCH_STORAGE)
    train_to_serving(finish, data, dataset_profile=validate.output["profile"])
    add_run_guard(dag)  # last: it watches every task above
