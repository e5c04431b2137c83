#!/bin/sh
# One-shot (minio/mc image): create the buckets named in MINIO_BUCKETS if missing, and the
# application's user (APP_ACCESS_KEY_ID / APP_SECRET_ACCESS_KEY: Airflow's aws_default and the
# MLflow server) with a policy that allows those buckets only. Idempotent.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
resources=""
for bucket in $MINIO_BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
  resources="$resources\"arn:aws:s3:::$bucket\",\"arn:aws:s3:::$bucket/*\","
done
policy=/tmp/tfmlops-app-policy.json
cat > "$policy" <<JSON
{"Version": "2012-10-17",
 "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [${resources%,}]}]}
JSON
mc admin user add local "$APP_ACCESS_KEY_ID" "$APP_SECRET_ACCESS_KEY" >/dev/null
mc admin policy create local tfmlops-app "$policy" >/dev/null
if ! mc admin user info local "$APP_ACCESS_KEY_ID" | grep -q "tfmlops-app"; then
  mc admin policy attach local tfmlops-app --user "$APP_ACCESS_KEY_ID" >/dev/null
fi
mc ls local
