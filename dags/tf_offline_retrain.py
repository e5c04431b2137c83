"""Offline retraining: full retrain on all data, gated, registered in MLflow and served."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow import params
from tfmlops_airflow.operators.card import ModelCardOperator
from tfmlops_airflow.operators.retrain import (
    EvaluateModelOperator,
    ExportSavedModelOperator,
    ModelGateOperator,
    RegisterModelOperator,
    TrainModelOperator,
    ValidateDatasetOperator,
)
from tfmlops_airflow.operators.rollout import ServingRolloutOperator

DOC = """
### Offline retraining of a TensorFlow classifier

Retrains the model from scratch on the whole dataset (weekly, or now from **Trigger ▸ with
config**), and deploys the result only if it is good enough:

1. **validate data** — shape against the model input, dtype, NaN/inf, label range, empty splits,
   train/test overlap; a bad file fails here, naming the file and the problem.
2. **train** — a new MLflow run (experiment = model name) with params, per-epoch metrics,
   training curves and the model.
3. **evaluate** — accuracy, macro precision/recall/F1, confusion matrix on the test split.
4. **gate** — the candidate needs `min_accuracy` and must not be worse than the current
   `champion` (re-evaluated on the same test data) by more than `tolerance`. A rejected candidate
   skips everything after the gate: the champion and the served version stay as they are.
5. **export** — SavedModel with a `serving_default` signature, reloaded and checked.
6. **register** — a new version in the MLflow model registry, alias `challenger`, lineage tags.
7. **rollout** — the `tf_serving_rollout` logic (`replace` by default, or `canary`): version
   *N* (= registry version) is published safely into every target's base path, loaded next to
   the served version, checked over REST and gRPC against the registered model's predictions,
   then switched to; one endpoint at a time, rolled back by itself on a failed check. On success
   `champion` → *N* (the old champion becomes `previous`) and an event on the asset
   `tfmlops_champion` schedules `tf_optimize_export`.
8. **model card** — whatever the rollout did: the version's card (intended use, data fingerprint
   and lineage, metrics overall and per class, the gate's decision, serving history, known
   limitations) as Markdown and HTML under `model_card/` on its run, linked from the version's
   description; `tf_optimize_export` rewrites it with the verified formats.

A **watcher** task fails the run when any task failed (Airflow decides a run's state by its last
tasks, and the model card runs — and succeeds — after a failed rollout too); otherwise it is skipped.

Connections: `mlflow_default`, the target TF Serving connections (`tf_serving_default`),
`aws_default` (for `s3://` datasets and base paths).
"""

PARAMS = {
    "model_name": params.model_name("Registered model name in MLflow, and the served model's name."),
    "dataset_uri": params.dataset_uri("Training and test data"),
    "epochs": Param(5, type="integer", minimum=1, maximum=100, title="Epochs", description="Training epochs."),
    "batch_size": Param(128, type="integer", minimum=8, maximum=4096, title="Batch size",
                        description="Training batch size."),
    "learning_rate": Param(0.001, type="number", exclusiveMinimum=0, maximum=1, title="Learning rate",
                           description="Adam learning rate."),
    "sample_fraction": params.sample_fraction(),
    "min_accuracy": Param(0.9, type="number", minimum=0, maximum=1, title="Minimum accuracy",
                          description="Gate: test accuracy the candidate must reach."),
    "tolerance": Param(0.005, type="number", minimum=0, maximum=1, title="Tolerance vs champion",
                       description="Gate: how much worse than the champion the candidate may be."),
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
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)},
) as dag:
    data = {"dataset_uri": "{{ params.dataset_uri }}", "sample_fraction": "{{ params.sample_fraction }}"}

    validate = ValidateDatasetOperator(task_id="validate_data", task_display_name="Validate data", **data)
    train = TrainModelOperator(
        task_id="train", task_display_name="Train", experiment="{{ params.model_name }}",
        epochs="{{ params.epochs }}", batch_size="{{ params.batch_size }}",
        learning_rate="{{ params.learning_rate }}", **data)
    evaluate = EvaluateModelOperator(
        task_id="evaluate", task_display_name="Evaluate", run_id=train.output["run_id"],
        model_uri=train.output["model_uri"], **data)
    gate = ModelGateOperator(
        task_id="gate", task_display_name="Validation gate", model_name="{{ params.model_name }}",
        run_id=train.output["run_id"], accuracy=evaluate.output["accuracy"],
        min_accuracy="{{ params.min_accuracy }}", tolerance="{{ params.tolerance }}", **data)
    export = ExportSavedModelOperator(
        task_id="export", task_display_name="Export SavedModel", run_id=train.output["run_id"],
        model_uri=train.output["model_uri"], **data)
    register = RegisterModelOperator(
        task_id="register", task_display_name="Register in MLflow", model_name="{{ params.model_name }}",
        run_id=train.output["run_id"], model_uri=train.output["model_uri"], metrics=evaluate.output,
        dataset_fingerprint=train.output["dataset_fingerprint"])
    rollout = ServingRolloutOperator(
        task_id="rollout", task_display_name="Roll out to TF Serving, set champion",
        version=register.output["version"], announce_champion=True, **params.rollout_arguments())

    card = ModelCardOperator(
        task_id="model_card", task_display_name="Model card", model_name="{{ params.model_name }}",
        version=register.output["version"])

    @task(task_id="watcher", task_display_name="Fail the run if a task failed", trigger_rule="one_failed")
    def watcher():
        raise AirflowFailException("a task of this run failed (see the grid); the model card was still written")

    validate >> train
    gate >> export >> register >> rollout >> card
    dag.tasks >> watcher()
