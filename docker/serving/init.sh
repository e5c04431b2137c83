#!/bin/bash
# One-shot, as root, before TF Serving and Airflow start: the folders of the shared serving
# volumes, owned by the Airflow user (the workers publish versions and rewrite the config files),
# and an empty ModelServerConfig per replica (TF Serving exits when its config file is missing;
# an existing file is kept: it is the serving state the rollouts wrote), and the router's runtime
# folder (its admin socket, which the workers use for gray releases) owned by the same user.
set -euo pipefail
: "${AIRFLOW_UID:=50000}"
: "${SERVING_MODELS_ROOT:=/opt/tfmlops/serving/models}"
: "${SERVING_CONFIG_ROOT:=/opt/tfmlops/serving/config}"
: "${TF_SERVING_REPLICAS:=tf-serving-0}"
mkdir -p "$SERVING_MODELS_ROOT"
for replica in $TF_SERVING_REPLICAS; do
  config="$SERVING_CONFIG_ROOT/$replica/models.config"
  mkdir -p "$(dirname "$config")"
  if [[ ! -s "$config" ]]; then
    printf 'model_config_list {\n}\n' > "$config"
    echo "seeded $config"
  fi
done
: "${ROUTER_RUN_DIR:=/var/run/haproxy}"
mkdir -p "$ROUTER_RUN_DIR"
chown -R "$AIRFLOW_UID:0" "$SERVING_MODELS_ROOT" "$SERVING_CONFIG_ROOT" "$ROUTER_RUN_DIR"
chmod -R g+rwX,o+rX "$SERVING_MODELS_ROOT" "$SERVING_CONFIG_ROOT"
