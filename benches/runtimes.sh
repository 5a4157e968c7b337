#!/usr/bin/env bash
# CPU and syscalls per query of several configurations of the same proxy binary, side by side
# in front of one throwaway cluster, rounds interleaved (so drift on a shared machine hits all
# alike). Counts, not time: utime + stime of each proxy from /proc/<pid>/stat and its syscalls
# from `perf stat -e syscalls:sys_enter_*` (needs perf and root), divided by the queries.
#
#   cargo build --release && benches/runtimes.sh [prepared|simple] [clients] [rounds] [secs] [binary]
#
# VARIANTS lists the configurations: `name|[proxy] line` entries separated by `;`, default
# "shared|;current_thread|worker_threads = 1". PGBOUNCER=1 adds PgBouncer (/usr/sbin/pgbouncer,
# run as OS user postgres when we are root) in front of the primary as one more variant, in
# transaction mode for `simple` and session mode for `prepared` (as loadbench runs it). Starts
# `causeway demo` on 127.0.0.1:$DEMO_PORT (default 6479; pgbench -i -s 10 on its primary), one
# proxy per variant from 127.0.0.1:$((BASE_PORT + 1)) on (BASE_PORT default 6470), warms each
# up with 64 clients, then per round runs `pgbench -n -S -M MODE -c CLIENTS -j 2 -T SECS`
# against each in turn. Everything it started is stopped by PID at the end.
set -uo pipefail
mode=${1:-prepared}
clients=${2:-16}
rounds=${3:-3}
secs=${4:-5}
bin=${5:-target/release/causeway}
variants=${VARIANTS:-"shared|;current_thread|worker_threads = 1"}
demo_port=${DEMO_PORT:-6479}
base_port=${BASE_PORT:-6470}
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  [ -s "$work/pgb/pgbouncer.pid" ] && kill -INT "$(cat "$work/pgb/pgbouncer.pid")" 2>/dev/null
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" demo --listen "127.0.0.1:$demo_port" >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
  grep -q "^Load:" "$work/demo.log" && break
  sleep 1
done
ports=$(sed -n 's/.* ports \([0-9, ]*\) (primary first).*/\1/p' "$work/demo.log")
pw=$(sed -n 's/^Load: PGPASSWORD=\([^ ]*\) .*/\1/p' "$work/demo.log")
[ -n "$ports" ] && [ -n "$pw" ] || { cat "$work/demo.log"; exit 1; }
export PGPASSWORD=$pw
pgbench -i -q -s 10 -h 127.0.0.1 -p "${ports%%,*}" -U postgres postgres >/dev/null 2>&1

names=()
declare -A port pid
i=0
IFS=';' read -ra entries <<<"$variants"
for entry in "${entries[@]}"; do
  name=${entry%%|*}
  line=${entry#*|}
  i=$((i + 1))
  names+=("$name")
  port[$name]=$((base_port + i))
  {
    printf '[proxy]\nlisten = "127.0.0.1:%s"\npool_mode = "transaction"\n%s\n\n' "${port[$name]}" "$line"
    printf '[monitor]\nuser = "causeway_monitor"\npassword = "monitor"\n\n'
    for p in ${ports//,/ }; do printf '[[nodes]]\naddress = "127.0.0.1:%s"\n\n' "$p"; done
    printf '[[users]]\nname = "postgres"\npassword = "%s"\n' "$pw"
  } >"$work/$name.toml"
  RUST_LOG=warn "$bin" --config "$work/$name.toml" run >"$work/$name.log" 2>&1 &
  pid[$name]=$!
  pids+=($!)
done
if [ -n "${PGBOUNCER:-}" ]; then
  i=$((i + 1))
  name=pgbouncer
  names+=("$name")
  port[$name]=$((base_port + i))
  pool=transaction
  [ "$mode" = prepared ] && pool=session
  verifier=$(psql -qAt -h 127.0.0.1 -p "${ports%%,*}" -U postgres postgres \
    -c "select rolpassword from pg_authid where rolname = 'postgres'")
  mkdir -p "$work/pgb"
  printf '"postgres" "%s"\n' "$verifier" >"$work/pgb/userlist.txt"
  cat >"$work/pgb/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=${ports%%,*} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port[$name]}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/pgb/userlist.txt
pool_mode = $pool
default_pool_size = 80
max_client_conn = 1000
logfile = $work/pgb/pgbouncer.log
pidfile = $work/pgb/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
  as=()
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$work/pgb"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" /usr/sbin/pgbouncer "$work/pgb/pgbouncer.ini" >"$work/pgb/stderr" 2>&1 &
  pids+=($!)
  # runuser stays the parent; the pid to count is PgBouncer's own, from its pidfile.
  for _ in $(seq 30); do [ -s "$work/pgb/pgbouncer.pid" ] && break; sleep 1; done
  pid[$name]=$(cat "$work/pgb/pgbouncer.pid" 2>/dev/null)
  [ -n "${pid[$name]}" ] || { cat "$work/pgb/stderr" "$work/pgb/pgbouncer.log"; exit 1; }
fi
for name in "${names[@]}"; do
  for _ in $(seq 60); do
    psql -qAt -h 127.0.0.1 -p "${port[$name]}" -U postgres -c 'select 1' postgres >/dev/null 2>&1 && break
    sleep 1
  done
  pgbench -n -S -M "$mode" -c 64 -j 2 -T 3 -h 127.0.0.1 -p "${port[$name]}" -U postgres postgres >/dev/null 2>&1
done

cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
events=syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_recvfrom
events=$events,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write
events=$events,context-switches
echo "mode=$mode clients=$clients; per query: CPU us (user, system), then epoll_wait futex recvfrom sendto read write context-switches"
echo "variant round tps cpu_us user_us sys_us epoll_wait futex recvfrom sendto read write cs"
for r in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    p=${pid[$name]}
    c0=$(cpu "$p")
    perf stat -x, -o "$work/perf" -e "$events" -p "$p" -- sleep $((secs + 1)) &
    perf=$!
    out=$(pgbench -n -S -M "$mode" -c "$clients" -j 2 -T "$secs" -h 127.0.0.1 -p "${port[$name]}" -U postgres postgres 2>&1)
    c1=$(cpu "$p")
    wait "$perf"
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "$name $r: pgbench failed"; echo "$out"; continue; }
    us=$(echo "$c0 $c1" | awk -v n="$n" -v t="$tick" '{ u = ($3 - $1) / t * 1e6 / n; s = ($4 - $2) / t * 1e6 / n; printf "%.1f %.1f %.1f", u + s, u, s }')
    calls=$(awk -F, -v n="$n" '/sys_enter|context-switches/ { printf "%.2f ", $1 / n }' "$work/perf")
    echo "$name $r ${tps%.*} $us $calls"
  done
done
