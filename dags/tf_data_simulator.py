"""Demo data: write a new labeled partition (optionally drifted) and announce it on an asset."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfmlops_airflow import params
from tfmlops_airflow.operators.online import SimulatePartitionOperator

DOC = """
### New data partitions for the demo

Draws a partition from the MNIST test pool (after the first 5 000 rows, which are the online
update's fixed holdout) and writes it as `<root>/<dataset>/incoming/<partition-id>/data.npz`
(`x_train`, `y_train`, `x_test`, `y_test`, uint8 28×28 images; 30 % of the rows are the test
split) — local folder or `s3://` (connection `aws_default`). Then it emits an event on the
partitioned asset `tfmlops_new_partitions` with the partition key `<dataset>|<partition-id>`
(extra: dataset, partition id, URI, drift), which schedules one `tf_online_update` run for that
partition.

**Drift** (strength `amount` in [0, 1]): `rotation` (amount × 60°), `noise` (Gaussian, σ =
amount × 128 grey levels), `imbalance` (classes 5–9 drawn with weight 1 − amount),
`label_noise` (a share `amount` of the labels changed). With drift, `tf_model_monitor` should
report a drop in accuracy or a PSI over its threshold and trigger `tf_offline_retrain`.

The same from a shell: `python -m tfmlops.simulate --root var/partitions --drift rotation --amount 0.5`.
"""

PARAMS = {
    **params.partitions(),
    "size": Param(500, type="integer", minimum=10, maximum=5000, title="Partition size",
                  description="Rows in the partition (train + test split)."),
    "drift": Param("none", type="string", enum=["none", "rotation", "noise", "imbalance", "label_noise"],
                   title="Drift kind", description="How the new data differs from the training data."),
    "amount": Param(0.0, type="number", minimum=0, maximum=1, title="Drift amount",
                    description="Drift strength in [0, 1] (0 = none)."),
    "seed": Param(-1, type="integer", minimum=-1, maximum=999999, title="Random seed",
                  description="Seed of the row draw and the drift; -1 = a new random seed."),
}

with DAG(
    dag_id="tf_data_simulator",
    description="Write a (drifted) labeled MNIST partition and announce it on tfmlops_new_partitions",
    doc_md=DOC,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "data", "simulation", "online"],
    default_args=params.default_args(timedelta(seconds=10)),
) as dag:
    SimulatePartitionOperator(task_id="simulate", task_display_name="Write a new partition",
                              root="{{ params.root }}", dataset="{{ params.dataset }}", size="{{ params.size }}",
                              drift="{{ params.drift }}", amount="{{ params.amount }}", seed="{{ params.seed }}")
