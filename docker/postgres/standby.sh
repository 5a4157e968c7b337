#!/usr/bin/env bash
# Entry point of the compose stack's standbys: on first start, a copy of the primary made the
# way a DBA makes one (`pg_basebackup -R` with a physical replication slot named after the
# standby, so the primary keeps the WAL it has not received, and the same name as
# application_name, so pg_stat_replication tells the standbys apart); then runs PostgreSQL in the
# foreground as a hot standby. Image requirements as for primary.sh.
set -euo pipefail

PATH="/usr/lib/postgresql/${PG_MAJOR:-15}/bin:$PATH"
: "${PGDATA:?}" "${PRIMARY_HOST:?}" "${REPLICATION_PASSWORD:?}" "${SLOT_NAME:?}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # The primary's first start (initdb, accounts) takes a few seconds; depends_on only orders
  # the starts.
  for _ in $(seq 1 120); do
    pg_isready --quiet --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" && break
    sleep 1
  done
  export PGPASSWORD="$REPLICATION_PASSWORD"
  backup() {
    rm -rf "$PGDATA" && mkdir -p "$PGDATA" && chmod 0700 "$PGDATA"
    pg_basebackup --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username=replicator \
      --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream --checkpoint=fast \
      --slot="$SLOT_NAME" --dbname="application_name=$SLOT_NAME" "$@"
  }
  # --create-slot fails when the slot is left from an earlier copy of this standby: reuse it.
  backup --create-slot || backup
  unset PGPASSWORD
fi

exec postgres -D "$PGDATA"
