# Shared by the scripts in benches/ (sourced, not run): the throwaway cluster they measure
# against, and PgBouncer's configuration for the runs that compare with it.

# start_demo BIN PORT WORK: starts `BIN demo` on 127.0.0.1:PORT (a primary and two standbys),
# logging to WORK/demo.log, and waits until it is ready. Sets `demo` (its PID, for the caller's
# cleanup), `ports` ("primary, standby, standby"), `primary` and `pw`, and exports PGPASSWORD.
start_demo() {
  "$1" demo --listen "127.0.0.1:$2" >"$3/demo.log" 2>&1 &
  demo=$!
  for _ in $(seq 120); do
    grep -q "^Load:" "$3/demo.log" && break
    sleep 1
  done
  ports=$(sed -n 's/.* ports \([0-9, ]*\) (primary first).*/\1/p' "$3/demo.log")
  pw=$(sed -n 's/^Load: PGPASSWORD=\([^ ]*\) .*/\1/p' "$3/demo.log")
  [ -n "$ports" ] && [ -n "$pw" ] || { cat "$3/demo.log"; return 1; }
  primary=${ports%%,*}
  export PGPASSWORD=$pw
}

# write_pgbouncer DIR PORT POOL_MODE POOL_SIZE: PgBouncer's auth_file (the primary's SCRAM
# verifier of `postgres`, so logins need no PBKDF2 and reach the server by pass-through, as
# examples/loadbench configures it) and DIR/pgbouncer.ini, listening on 127.0.0.1:PORT in front
# of the demo's primary. Needs start_demo's `primary`.
write_pgbouncer() {
  local verifier
  verifier=$(psql -qAt -h 127.0.0.1 -p "$primary" -U postgres \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'" postgres)
  printf '"postgres" "%s"\n' "$verifier" >"$1/userlist.txt"
  cat >"$1/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$primary dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $1/userlist.txt
pool_mode = $3
default_pool_size = $4
max_client_conn = 1000
logfile = $1/pgbouncer.log
pidfile = $1/pgbouncer.pid
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
INI
}

# callgrind_queries MODE PORT PID [PREFIX...]: the counted run of the callgrind scripts. Waits
# for the proxy on 127.0.0.1:PORT to answer, fills pgbench's tables on the primary, warms up
# with `pgbench -S -M MODE -c 8 -j 2 -t 300`, zeroes the counts of the callgrind process PID,
# runs `-t 2000` (16,000 queries) and dumps. PREFIX (e.g. `runuser -u postgres --`) runs
# callgrind_control as the proxy's user. Needs start_demo's `primary`.
callgrind_queries() {
  local mode=$1 port=$2 pid=$3
  shift 3
  for _ in $(seq 120); do
    psql -qAt -h 127.0.0.1 -p "$port" -U postgres -c 'select 1' postgres >/dev/null 2>&1 && break
    sleep 1
  done
  pgbench -i -q -h 127.0.0.1 -p "$primary" -U postgres postgres >/dev/null 2>&1
  sleep 1
  pgbench -n -S -M "$mode" -c 8 -j 2 -t 300 -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null
  "$@" callgrind_control -z "$pid" >/dev/null 2>&1
  pgbench -n -S -M "$mode" -c 8 -j 2 -t 2000 -h 127.0.0.1 -p "$port" -U postgres postgres |
    grep -E "^(number of transactions actually processed|number of failed)"
  "$@" callgrind_control -d "$pid" >/dev/null 2>&1
}
