#!/usr/bin/env bash
# STAND-IN for the official postgres image's docker-entrypoint.sh (the part docker-compose.yaml
# uses): on an empty PGDATA, initdb with POSTGRES_USER/POSTGRES_PASSWORD (scram-sha-256 over TCP),
# create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sh (executable: run; else sourced) and
# *.sql against a server listening on its socket only; then the server on all addresses.
set -euo pipefail
if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [[ "${1:-postgres}" != postgres ]]; then
  exec "$@"
fi
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export POSTGRES_USER POSTGRES_DB
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  # UTF-8, as the official image's initdb (LANG en_US.utf8): not SQL_ASCII, C's default
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
         --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [[ "$POSTGRES_DB" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
         -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [[ -x "$f" ]]; then "$f"; else . "$f"; fi; echo "ran $f" ;;
      *.sql) psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f"; echo "ran $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
shift
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
