"""Assets that connect the DAGs (data-aware scheduling).

``SERVING_INTENT`` wakes the serving reconciler (below).

``CHAMPION`` is updated by the rollout task of ``tf_offline_retrain`` and ``tf_online_update``
each time it makes a new version ``champion``; its event's ``extra`` names the model and
version. ``tf_optimize_export`` is scheduled on it, so every new champion is optimized and
exported in every format.
"""

from airflow.sdk import Asset

# Name-only assets: a URI scheme (e.g. mlflow://) makes Airflow load every provider's asset URI
# handlers while parsing the DAG file (0.4 s); a name is all that the DAGs match on.
CHAMPION = Asset(name="tfmlops_champion")

# The registry's intent for what is served: an event means "a champion alias may differ from what
# its model's targets serve". ``tf_serving_reconcile`` is scheduled on it; its events come from the
# registry poll of the asset's watcher (``ChampionMovedTrigger``, in the triggerer) and from the MLflow
# webhook receiver (``tfmlops_airflow.webhooks``); ``extra`` names the model.
SERVING_INTENT = Asset(name="tfmlops_serving_intent")

# New labeled data partitions (``<root>/<dataset>/incoming/<partition-id>/``): a partitioned asset.
# ``tf_data_simulator`` (or any producer) emits one event per partition with the partition key
# ``<dataset>|<partition-id>`` (:func:`partition_key`) and ``extra`` = {dataset, partition_id, uri,
# root}; ``tf_online_update`` is scheduled on it with a ``PartitionedAssetTimetable``: one run per
# partition, whose ``partition_key`` names it.
NEW_PARTITIONS = Asset(name="tfmlops_new_partitions")


def partition_key(dataset: str, partition_id: str) -> str:
    return f"{dataset}|{partition_id}"


def split_partition_key(key: str) -> tuple[str, str]:
    """``<dataset>|<partition-id>`` → (dataset, partition id); a clear error for anything else."""
    dataset, sep, partition_id = str(key).partition("|")
    if not sep or not dataset or not partition_id or "|" in partition_id:
        raise ValueError(f"partition key {key!r} is not '<dataset>|<partition-id>'")
    return dataset, partition_id
