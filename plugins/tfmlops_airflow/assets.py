"""Assets that connect the DAGs (data-aware scheduling).

``CHAMPION`` is updated by ``tf_offline_retrain``'s promote task each time a new version
becomes ``champion``; its event's ``extra`` names the model and version. ``tf_optimize_export``
is scheduled on it, so every new champion is optimized and exported in every format.
"""

from airflow.sdk import Asset

CHAMPION = Asset(name="tfmlops_champion", uri="mlflow://registry/champion")

# New labeled data partitions (``<root>/<dataset>/incoming/<partition-id>/``): ``tf_data_simulator``
# (or any producer) emits an event per partition with ``extra`` = {dataset, partition_id, uri,
# root}; ``tf_online_update`` is scheduled on it.
NEW_PARTITIONS = Asset(name="tfmlops_new_partitions", uri="tfmlops://partitions/incoming")
