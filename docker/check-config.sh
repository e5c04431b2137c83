#!/bin/sh
# The stack's first one-shot job (config-check in docker-compose.yaml): refuse to start with
#  - a secret that is empty or still a "change-me" placeholder of .env.example,
#  - an AIRFLOW_FERNET_KEY or MLFLOW_WEBHOOK_FERNET_KEY that is not a Fernet key (32 url-safe
#    base64 bytes: 44 characters),
#  - the bundled MinIO's root user as the application's S3 key (the app gets a bucket-scoped user).
# Every problem is reported with the variable's name; nothing else starts until this passes.
set -eu
problems=""
for name in $SECRET_VARIABLES; do
  eval "value=\${$name:-}"
  case "$value" in
    "") problems="$problems\n  $name is empty" ;;
    change-me*) problems="$problems\n  $name is still the placeholder of .env.example" ;;
  esac
done
for name in AIRFLOW_FERNET_KEY MLFLOW_WEBHOOK_FERNET_KEY; do
  eval "fernet=\${$name:-}"
  case "$fernet" in
    ""|change-me*) ;;  # reported above
    *)
      if [ "${#fernet}" -ne 44 ] || ! printf '%s' "$fernet" | grep -Eq '^[A-Za-z0-9_-]{43}=$'; then
        problems="$problems\n  $name is not a Fernet key (44 url-safe base64 characters ending in '=')"
      fi ;;
  esac
done
if [ "${S3_ENDPOINT_URL:-}" = "http://minio:9000" ] && [ "${S3_ACCESS_KEY_ID:-}" = "${MINIO_ROOT_USER:-}" ]; then
  problems="$problems\n  S3_ACCESS_KEY_ID is MINIO_ROOT_USER: the application must not use MinIO's root credentials"
fi
if [ -n "$problems" ]; then
  printf "config-check: refusing to start the stack:$problems\nEdit .env (see .env.example for how to generate each value).\n" >&2
  exit 1
fi
echo "config-check: secrets set, Fernet key well-formed, S3 application user separate"
