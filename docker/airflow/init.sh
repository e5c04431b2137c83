#!/bin/bash
# One-shot, as root (like the airflow-init of Airflow's reference compose file): the metadata DB
# schema (the FAB auth manager's tables with it), the first admin (AIRFLOW_ADMIN_USER /
# AIRFLOW_ADMIN_PASSWORD; an existing user is left as it is: change passwords in the UI), the
# project's roles (docker/airflow/roles.json: ModelOperator, ModelApprover; existing roles are kept),
# the pool that serializes TF Serving rollouts, MLflow's champion-alias webhook to Airflow's receiver (a failure
# is reported, not fatal: tf_serving_reconcile's registry poll works without it), and the
# ownership of the shared volumes.
set -euo pipefail
: "${AIRFLOW_UID:=50000}"
: "${AIRFLOW_ADMIN_USER:=admin}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set (see .env.example)}"
mkdir -p /opt/airflow/logs /opt/airflow/var
/entrypoint airflow version
/entrypoint airflow db migrate
/entrypoint airflow users create --username "$AIRFLOW_ADMIN_USER" --password "$AIRFLOW_ADMIN_PASSWORD" \
    --role Admin --firstname Airflow --lastname Admin --email "${AIRFLOW_ADMIN_EMAIL:-admin@localhost}"
/entrypoint airflow roles import /opt/tfmlops/docker/airflow/roles.json
/entrypoint airflow pools set --include-deferred tf_serving_rollout 1 "Serializes TF Serving rollouts of a model (an approval waiting holds it)"
/entrypoint python - <<'PY' || echo "MLflow webhook not registered: tf_serving_reconcile's registry poll still reconciles"
import os
from tfmlops.registry import ensure_webhook

url = "http://airflow-apiserver:8080/tfmlops/webhooks/mlflow"
ensure_webhook(os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000"), "tfmlops-serving-reconciler", url,
               os.environ["AIRFLOW__TFMLOPS__MLFLOW_WEBHOOK_SECRET"])
print(f"MLflow webhook: champion alias events -> {url}")
PY
chown -R "$AIRFLOW_UID:0" /opt/airflow/logs /opt/airflow/var
