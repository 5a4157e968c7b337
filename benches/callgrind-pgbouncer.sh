#!/usr/bin/env bash
# User-space instructions per query of PgBouncer, counted by callgrind the way
# benches/callgrind.sh counts causeway's: the reference figure for issue 17.
#
#   cargo build --release && benches/callgrind-pgbouncer.sh [prepared|simple] [causeway binary]
#
# Starts `causeway demo` (a throwaway primary + 2 standbys) on 127.0.0.1:$DEMO_PORT (default 6499), runs PgBouncer
# under valgrind on 127.0.0.1:$PROXY_PORT (default 6498) in front of the demo's primary (transaction pooling for
# `simple`, session pooling for `prepared`: PgBouncer before 1.21 does not keep prepared
# statements in transaction mode), warms it up with `pgbench -S -c 8 -j 2 -t 300`, zeroes the
# counts, runs `pgbench -S -c 8 -j 2 -t 2000` (16,000 queries), dumps, and prints the total
# divided by 16,000. PgBouncer is one thread, so the total is the whole process; it runs no
# background checks of its own beyond its once-a-second maintenance timer.
#
# Clients log in with SCRAM against the primary's stored verifier in `auth_file` (as
# examples/loadbench does: no PBKDF2 per login, server logins by pass-through), so the 8 logins
# of the counted run cost about what causeway's do. PgBouncer refuses to run as root: when run
# as root it is started as the `postgres` OS user. Everything it started is stopped by PID.
set -euo pipefail
mode=${1:-prepared}
bin=${2:-target/release/causeway}
pgbouncer=${PGBOUNCER:-/usr/sbin/pgbouncer}
demo_port=${DEMO_PORT:-6499}
proxy_port=${PROXY_PORT:-6498}
work=$(mktemp -d)
demo=""
proxy=""
cleanup() {
  [ -n "$proxy" ] && kill -INT "$proxy" 2>/dev/null
  for _ in $(seq 50); do [ -n "$proxy" ] && kill -0 "$proxy" 2>/dev/null && sleep 0.2; done
  [ -n "$demo" ] && kill -INT "$demo" 2>/dev/null && wait "$demo" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"
start_demo "$bin" "$demo_port" "$work" || exit 1

case $mode in
  prepared) pool_mode=session ;;
  *) pool_mode=transaction ;;
esac
write_pgbouncer "$work" "$proxy_port" "$pool_mode" 8

run_as=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$work"
  run_as=(runuser -u postgres --)
fi
"${run_as[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$pgbouncer" "$work/pgbouncer.ini" >"$work/proxy.log" 2>&1 &
launcher=$!
# runuser forks: the process to zero, dump and stop is valgrind (pgbouncer) under it.
for _ in $(seq 50); do
  proxy=$(pgrep -P "$launcher" 2>/dev/null | head -1 || true)
  [ -z "$proxy" ] && [ ${#run_as[@]} = 0 ] && proxy=$launcher
  [ -n "$proxy" ] && break
  sleep 0.2
done
[ -n "$proxy" ] || { echo "PgBouncer did not start"; cat "$work/proxy.log"; exit 1; }
callgrind_queries "$mode" "$proxy_port" "$proxy" "${run_as[@]}"
dump=$(grep -l "^summary:" "$work"/cg.out* | head -1)
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump" | sort -n | tail -1)
echo "mode=$mode PgBouncer ($pool_mode pooling) user-space instructions per query: $((total / 16000)) (total $total)"
true
