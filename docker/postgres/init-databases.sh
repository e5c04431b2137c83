#!/bin/bash
# Runs once, when the Postgres volume is first initialised (docker-entrypoint-initdb.d): a role and
# a database each for the MLflow tracking/registry backend and for tf_hparam_search's Optuna
# studies, next to Airflow's metadata database (Optuna must not share Airflow's: both keep their
# schema version in alembic's alembic_version table).
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${OPTUNA_DB_PASSWORD:?OPTUNA_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v mlflow_password="$MLFLOW_DB_PASSWORD" -v optuna_password="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE optuna OWNER optuna;
SQL
