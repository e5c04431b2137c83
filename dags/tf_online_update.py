"""Online update: fine-tune the champion on new data partitions, gate, register, canary rollout."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, PartitionedAssetTimetable

from tfmlops_airflow import params
from tfmlops_airflow.notifications import deadline_alert
from tfmlops_airflow.assets import NEW_PARTITIONS
from tfmlops_airflow.chains import serving_release
from tfmlops_airflow.operators.online import IngestPartitionsOperator, OnlineUpdateOperator

DOC = """
### Online update of the champion on new data partitions

Runs once for every new partition of the partitioned asset `tfmlops_new_partitions` (e.g. from
`tf_data_simulator`; the run's partition key `<dataset>|<partition-id>` names it, and the
event's `root` says where it is), or from **Trigger ▸ with config**:

Works for the champion's own model module: a partition is any dataset its loader reads
(`data.parquet` with the named columns, the label and a `split` column; the MNIST example's
`data.npz`), and the gate compares its model module's `GATE` metric (accuracy, AUC or RMSE by
task; `gate_metric` picks another of the task's) with its `GATE` tolerance unless `tolerance` is set.

1. **ingest** — the run's partition (from the UI: the ones named, or every new partition under
   `<root>/<dataset>/incoming/`) is read by the champion's model module and validated with the
   training-data checks (names, dtypes and shapes against its INPUTS, NaN/inf, labels, empty
   splits, overlap). A bad partition is moved to
   `<root>/<dataset>/quarantine/<id>/` with `reason.json` and does not block the good ones.
   Partitions already in `<root>/<dataset>/ledger.json` are skipped: with nothing new, the run is
   a no-op (the later tasks are skipped).
2. **update** — fine-tunes the current `champion` on the new partitions plus a replay sample of
   earlier data (its training dataset and the partitions consumed before; `replay_fraction` of
   the fine-tuning rows) with a low learning rate. Gate, in the task's metric: on the new data (the
   partitions' test splits) better than the champion's by more than `min_improvement`, and on the
   fixed holdout (by default the champion's dataset's test split; for `mnist` the first 5 000 MNIST
   test rows, never in a simulated partition) not worse than the champion's by more than
   `tolerance`. A passing candidate is exported and registered as `challenger` with the champion's
   model spec, tagged `online.parent_version`, `online.partitions`, `airflow.run_id`. The
   partitions go to the ledger whatever the gate said; a rejection skips the rollout.
3. **rollout** — the `tf_serving_rollout` logic, in this run (canary by default: `stable`/`canary`
   labels, smoke parity over REST and gRPC, p99 latency budget, promote to `champion` or roll back).
   It runs here rather than through a TriggerDagRun so the run's outcome is the rollout's
   outcome (a failed canary fails this run), in the `tf_serving_rollout` pool. A promotion
   emits an event on `tfmlops_champion` (which schedules `tf_optimize_export`).

Connections: `mlflow_default`, `tf_serving_default` (targets), `aws_default` for `s3://` roots.
"""

PARAMS = {
    "model_name": params.model_name("Registered model whose champion is updated (= served name)."),
    **params.partitions(),
    "partitions": Param(None, type=["null", "string"], maxLength=4000, title="Partitions",
                        description="Comma-separated partition ids; empty = every partition not consumed yet."),
    "replay_fraction": Param(0.5, type="number", minimum=0, maximum=0.9, title="Replay fraction",
                             description="Share of the fine-tuning rows drawn from earlier data (against forgetting)."),
    "learning_rate": Param(0.0003, type="number", exclusiveMinimum=0, maximum=0.01, title="Learning rate",
                           description="Adam learning rate of the fine-tuning (low: it starts from the champion)."),
    "epochs": Param(3, type="integer", minimum=1, maximum=50, title="Epochs", description="Fine-tuning epochs."),
    "batch_size": Param(64, type="integer", minimum=8, maximum=4096, title="Batch size",
                        description="Fine-tuning batch size."),
    "min_improvement": Param(0.0, type="number", minimum=0, title="Minimum improvement",
                             description="Gate: gain on the new data the candidate must exceed, in the gate "
                                         "metric's unit (accuracy, AUC; RMSE: a decrease)."),
    **params.gate(gate_metric="",
                  tolerance="Gate: how much worse than the champion the candidate may be on the holdout, in the "
                            "gate metric's unit; empty: the model module's GATE tolerance."),
    "holdout_uri": Param(None, type=["null", "string"], maxLength=1000, title="Holdout",
                         description="Empty: the test split of the champion's dataset ('mnist': its first 5000 "
                                     "test rows, never in a simulated partition); else a dataset the champion's "
                                     "model module reads, whose test split is used."),
    "holdout_rows": Param(2000, type="integer", minimum=100, maximum=10000, title="Holdout rows",
                          description="Holdout rows evaluated by the gate."),
    **params.rollout(strategy="canary"),
}

with DAG(
    dag_id="tf_online_update",
    description="New partitions → validate/quarantine → fine-tune champion with replay → gate → challenger → canary",
    doc_md=DOC,
    schedule=PartitionedAssetTimetable(assets=NEW_PARTITIONS),  # one run per new partition
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "online", "mlflow", "serving"],
    default_args=params.default_args(timedelta(seconds=30)),
    deadline=deadline_alert("TFMLOPS_ONLINE_DEADLINE_MIN", default_minutes=60),  # late: deadline_missed
) as dag:
    data = {"root": "{{ params.root }}", "dataset": "{{ params.dataset }}"}
    ingest = IngestPartitionsOperator(task_id="ingest", task_display_name="Validate / quarantine partitions",
                                      partitions="{{ params.partitions }}", model_name="{{ params.model_name }}",
                                      **data)
    update = OnlineUpdateOperator(
        task_id="update", task_display_name="Fine-tune, gate, register challenger",
        model_name="{{ params.model_name }}", partition_ids=ingest.output["valid_ids"],
        replay_fraction="{{ params.replay_fraction }}", learning_rate="{{ params.learning_rate }}",
        epochs="{{ params.epochs }}", batch_size="{{ params.batch_size }}",
        min_improvement="{{ params.min_improvement }}", tolerance="{{ params.tolerance }}",
        gate_metric="{{ params.gate_metric }}",
        holdout_uri="{{ params.holdout_uri }}", holdout_rows="{{ params.holdout_rows }}",
        root=ingest.output["root"], dataset="{{ params.dataset }}")
    rollout, _ = serving_release(update.output["version"], "Roll out (canary), set champion", announce_champion=True)
    ingest >> update >> rollout
