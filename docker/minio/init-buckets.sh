#!/bin/sh
# One-shot (minio/mc image): create the buckets named in MINIO_BUCKETS if missing.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in $MINIO_BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
done
mc ls local
