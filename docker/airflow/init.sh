#!/bin/bash
# One-shot, as root (like the airflow-init of Airflow's reference compose file): the metadata DB
# schema, the simple auth manager's password file from AIRFLOW_ADMIN_PASSWORD, the pool that
# serializes TF Serving rollouts, MLflow's champion-alias webhook to Airflow's receiver (a failure
# is reported, not fatal: tf_serving_reconcile's registry poll works without it), and the
# ownership of the shared volumes.
set -euo pipefail
: "${AIRFLOW_UID:=50000}"
: "${AIRFLOW_ADMIN_USER:=admin}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set (see .env.example)}"
mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/airflow/var
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-/opt/airflow/auth/simple_auth_manager_passwords.json}"
python - "$passwords" <<'PY'
import json, os, sys
with open(sys.argv[1], "w") as f:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
PY
chmod 600 "$passwords"
/entrypoint airflow version
/entrypoint airflow db migrate
/entrypoint airflow pools set --include-deferred tf_serving_rollout 1 "Serializes TF Serving rollouts of a model (an approval waiting holds it)"
/entrypoint python - <<'PY' || echo "MLflow webhook not registered: tf_serving_reconcile's registry poll still reconciles"
import os
from tfmlops.registry import ensure_webhook

url = "http://airflow-apiserver:8080/tfmlops/webhooks/mlflow"
ensure_webhook(os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000"), "tfmlops-serving-reconciler", url,
               os.environ["AIRFLOW__TFMLOPS__MLFLOW_WEBHOOK_SECRET"])
print(f"MLflow webhook: champion alias events -> {url}")
PY
chown -R "$AIRFLOW_UID:0" /opt/airflow/logs /opt/airflow/auth /opt/airflow/var
