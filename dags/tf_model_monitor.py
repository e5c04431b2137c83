"""Monitoring: serving health, quality on new labeled data, drift → retrain."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from tfmlops_airflow import params
from tfmlops_airflow.operators.monitor import LiveDriftOperator, ModelQualityDriftOperator, ServingHealthOperator

DOC = """
### Monitoring of the served model (closes the loop)

Every 15 minutes, or from **Trigger ▸ with config**:

- **health** — for each target endpoint, the model's **live traffic**: request rate, error rate
  (non-OK share of TF Serving's `request_count`) and latency p50/p95/p99 (from its
  `request_latency` histogram) — read from Prometheus over `window_s` when the connection
  `prometheus_default` exists, else from two scrapes of the replica's metrics path
  `scrape_window_s` apart. Only a replica that served the model nothing in the window (or whose
  metrics cannot be read) is **probed**: each AVAILABLE version, `requests` sequential single-row
  predicts over REST and over gRPC. The result names each endpoint's source. Over `max_p99_ms` or
  `max_error_rate` **fails the task with the numbers** (an alert through the failure callback; no
  retry, the next run checks again).
- **quality & drift** — the newest labeled partitions (`<root>/<dataset>/incoming/`) sent through
  the served `champion`, measured by its task: accuracy, precision, recall, F1 (macro and per
  class), confusion matrix; AUC; RMSE/MAE/R². PSI of each input's statistics and of the served
  outputs against the version's training reference (`monitoring/reference.json` on its MLflow
  run; computed from a sample of its training data the first time).
- **live drift** — the same PSI on what users really sent: the model server's sampled request
  logs (`log_prefix`, the `filename_prefix` of the model's `logging_config`) of the last
  `live_window_s`, against the same reference; under `live_min_rows` logged rows, no verdict.
- **retrain** — when the gate metric misses `gate_threshold` (empty: the model module's `GATE`,
  e.g. MNIST's accuracy 0.9, a regressor's RMSE) or a PSI (new data or live traffic) is over its
  threshold, `tf_offline_retrain` is triggered with `conf.reason` naming the breach.

Everything goes to one MLflow run per model (experiment `<model>-monitoring`, step = time),
with trend charts (`charts/monitoring_trends.png`) and the last confusion matrix.
Connections: `mlflow_default`, `tf_serving_default` (and the other targets; extra `metrics_path`
if not TF Serving's `/monitoring/prometheus/metrics`), `aws_default`, optionally
`prometheus_default`.
"""

PARAMS = {
    "model_name": params.model_name("Registered and served model name."),
    "targets": params.targets("TF Serving connection ids to probe."),
    "window_s": Param(300, type="integer", minimum=30, maximum=86400, title="Live window (s)",
                      description="Health from Prometheus: seconds of live traffic (rate and quantiles over this "
                                  "window)."),
    "scrape_window_s": Param(15, type="number", minimum=1, maximum=300, title="Scrape window (s)",
                             description="Health without Prometheus: seconds between the two scrapes of each "
                                         "replica's metrics."),
    "requests": Param(50, type="integer", minimum=5, maximum=2000, title="Probe requests",
                      description="Requests per endpoint, version and API (REST, gRPC) in the health probe of a "
                                  "replica that got no live traffic in the window."),
    "max_p99_ms": Param(500, type="number", exclusiveMinimum=0, maximum=60000, title="Max p99 latency (ms)",
                        description="Health: p99 latency above this fails the task."),
    "max_error_rate": Param(0.01, type="number", minimum=0, maximum=1, title="Max error rate",
                            description="Health: share of failed requests above this fails the task."),
    **params.partitions(),
    "newest": Param(1, type="integer", minimum=1, maximum=100, title="Newest partitions",
                    description="How many of the newest partitions the quality and drift checks use."),
    **params.gate(gate_metric="Quality: the metric the served champion is judged by on the newest partitions "
                              "(accuracy or f1_macro, auc or accuracy, rmse, mae or r2 by task); empty: its model "
                              "module's GATE.",
                  gate_threshold="Quality: the gate metric under this (over it for rmse/mae) triggers a retrain; "
                                 "empty: the module's GATE threshold."),
    "max_input_psi": Param(0.25, type="number", exclusiveMinimum=0, maximum=100, title="Max input PSI",
                           description="Drift: PSI of any input statistic above this triggers a retrain."),
    "max_prediction_psi": Param(0.25, type="number", exclusiveMinimum=0, maximum=100, title="Max prediction PSI",
                                description="Drift: PSI of the predicted classes above this triggers a retrain."),
    "log_prefix": Param(params.DEFAULT_REQUEST_LOG_PREFIX, type="string", minLength=1, maxLength=1000,
                        title="Request log prefix",
                        description="filename_prefix of the served model's logging_config (a local path)."),
    "live_window_s": Param(3600, type="integer", minimum=60, maximum=30 * 86400, title="Live drift window (s)",
                           description="How far back the request logs are read for live drift."),
    "live_min_rows": Param(100, type="integer", minimum=10, maximum=1_000_000, title="Live drift min rows",
                           description="Fewest logged rows for a live drift verdict."),
    "reference_rows": Param(2000, type="integer", minimum=100, maximum=60000, title="Reference rows",
                            description="Training rows sampled when a version's drift reference is first built."),
}

with DAG(
    dag_id="tf_model_monitor",
    description="Serving latency/throughput/errors, accuracy on new data, PSI drift → tf_offline_retrain",
    doc_md=DOC,
    schedule="*/15 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "monitoring", "mlflow", "serving"],
    default_args=params.default_args(timedelta(minutes=1)),
) as dag:
    health = ServingHealthOperator(
        task_id="health", task_display_name="Serving health (live traffic, else probe)",
        model_name="{{ params.model_name }}",
        targets="{{ params.targets }}", requests="{{ params.requests }}", max_p99_ms="{{ params.max_p99_ms }}",
        max_error_rate="{{ params.max_error_rate }}", window_s="{{ params.window_s }}",
        scrape_window_s="{{ params.scrape_window_s }}")
    quality = ModelQualityDriftOperator(
        task_id="quality_drift", task_display_name="Quality and drift on new data",
        model_name="{{ params.model_name }}", root="{{ params.root }}", dataset="{{ params.dataset }}",
        newest="{{ params.newest }}", gate_metric="{{ params.gate_metric }}",
        gate_threshold="{{ params.gate_threshold }}",
        max_input_psi="{{ params.max_input_psi }}", max_prediction_psi="{{ params.max_prediction_psi }}",
        reference_rows="{{ params.reference_rows }}")

    live = LiveDriftOperator(
        task_id="live_drift", task_display_name="Drift of live traffic (request logs)",
        model_name="{{ params.model_name }}", log_prefix="{{ params.log_prefix }}",
        window_s="{{ params.live_window_s }}", min_rows="{{ params.live_min_rows }}",
        max_input_psi="{{ params.max_input_psi }}", max_prediction_psi="{{ params.max_prediction_psi }}",
        reference_rows="{{ params.reference_rows }}")
    quality >> live  # the drift reference is built once, by the first of them

    @task.short_circuit(task_display_name="Retrain needed?")
    def retrain_needed(quality_result: dict, live_result: dict) -> str:
        """The reasons of the checks that ask for a retrain ('' = none: the trigger is skipped)."""
        return "; ".join(r["reason"] for r in (quality_result, live_result) if r.get("retrain"))

    reason = retrain_needed(quality.output, live.output)
    trigger = TriggerDagRunOperator(
        task_id="trigger_retrain", task_display_name="Trigger tf_offline_retrain", trigger_dag_id="tf_offline_retrain",
        conf={"model_name": "{{ params.model_name }}", "reason": reason})
    reason >> trigger
