"""Live traffic → training data: logged requests joined with late labels into a new partition."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfmlops_airflow import params
from tfmlops_airflow.operators.online import FeedbackJoinOperator

DOC = """
### Feedback join: what users sent, labeled later, becomes training data

The model server logs a sample of the requests it answers (`logging_config` of the model's entry
in its model config file: `log_collector_config { filename_prefix }` and
`sampling_config { sampling_rate }`; rollouts keep the entry's logging config) as TFRecord files
of `tensorflow.serving.PredictionLog`, each with the client's request id (`X-Request-Id` header,
`x-request-id` gRPC metadata). Labels that arrive later are JSON lines under
`<root>/<dataset>/feedback/labels/*.jsonl`: `{"request_id": "...", "labels": [3]}`.

This DAG joins them, reading the logs by the champion's model spec (`model_name`: its named
inputs, task and classes; Predict, Classify and Regress records). With at least `min_rows` labeled
rows it writes a partition `<root>/<dataset>/incoming/<partition-id>/data.parquet` in the model
module's layout (a column per input as sent, the label, 30 % test split) and emits an event on the
partitioned asset `tfmlops_new_partitions`, which schedules `tf_online_update` on it — ingestion
checks it like any partition. Fewer rows: the run is skipped and the labels wait. Joined label
files move to `feedback/joined/`; labels whose request is not in the logs yet stay; labels that do
not fit their request (row count, class range) are refused and listed in the task log. Labels are
class ids or class names for a classifier, numbers for a regressor.
"""

PARAMS = {
    **params.partitions(),
    "model_name": params.model_name("Registered model whose champion's spec reads the logged requests "
                                    "(= served name)."),
    "log_prefix": Param(params.DEFAULT_REQUEST_LOG_PREFIX, type="string", minLength=1, maxLength=1000,
                        title="Request log prefix",
                        description="filename_prefix of the served model's logging_config (a local path)."),
    "min_rows": Param(50, type="integer", minimum=2, maximum=1_000_000, title="Minimum rows",
                      description="Fewest labeled rows worth a partition."),
}

with DAG(
    dag_id="tf_feedback_join",
    description="Join logged live requests with late labels into a partition of tfmlops_new_partitions",
    doc_md=DOC,
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "data", "online", "feedback"],
    default_args=params.default_args(timedelta(seconds=10)),
) as dag:
    FeedbackJoinOperator(task_id="join", task_display_name="Join request logs with labels",
                         root="{{ params.root }}", dataset="{{ params.dataset }}",
                         log_prefix="{{ params.log_prefix }}", min_rows="{{ params.min_rows }}",
                         model_name="{{ params.model_name }}")
