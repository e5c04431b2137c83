"""Assets that connect the DAGs (data-aware scheduling).

``CHAMPION`` is updated by ``tf_offline_retrain``'s promote task each time a new version
becomes ``champion``; its event's ``extra`` names the model and version. ``tf_optimize_export``
is scheduled on it, so every new champion is optimized and exported in every format.
"""

from airflow.sdk import Asset

CHAMPION = Asset(name="tfmlops_champion", uri="mlflow://registry/champion")
