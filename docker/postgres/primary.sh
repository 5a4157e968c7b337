#!/usr/bin/env bash
# Entry point of the compose stack's primary: on first start, initdb plus the accounts the stack
# needs (a replication user for the standbys, the monitor account causeway checks nodes with, the
# application's user and database); then runs PostgreSQL in the foreground. Works on the official
# postgres:15 image and on any Debian image with the postgresql-15 package, because it uses only
# the server binaries and runs as the postgres user (the compose file sets `user: postgres`).
set -euo pipefail

PATH="/usr/lib/postgresql/${PG_MAJOR:-15}/bin:$PATH"
: "${PGDATA:?}" "${POSTGRES_PASSWORD:?}" "${REPLICATION_PASSWORD:?}" "${MONITOR_PASSWORD:?}"
: "${APP_USER:=app}" "${APP_PASSWORD:?}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb --pgdata="$PGDATA" --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# Queries on the standbys are cancelled less often when the primary knows what they read.
hot_standby_feedback = on
CONF
  # The container network is the boundary; every remote login still needs a password.
  cat >>"$PGDATA/pg_hba.conf" <<HBA
host replication replicator all scram-sha-256
host all all all scram-sha-256
HBA
  # Accounts are made on a server only the local socket reaches, so nothing connects half-made.
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
  psql --no-psqlrc --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres --quiet \
    --set=repl="$REPLICATION_PASSWORD" --set=mon="$MONITOR_PASSWORD" \
    --set=app="$APP_USER" --set=app_pw="$APP_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl';
CREATE ROLE causeway_monitor WITH LOGIN PASSWORD :'mon' IN ROLE pg_monitor;
CREATE ROLE :"app" WITH LOGIN PASSWORD :'app_pw';
CREATE DATABASE :"app" OWNER :"app";
SQL
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi

exec postgres -D "$PGDATA"
