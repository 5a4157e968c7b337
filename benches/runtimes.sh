#!/usr/bin/env bash
# CPU and syscalls per query of several configurations of the same proxy binary, side by side
# in front of one throwaway cluster, rounds interleaved (so drift on a shared machine hits all
# alike). Counts, not time: utime + stime of each proxy from /proc/<pid>/stat and its syscalls
# from `perf stat -e syscalls:sys_enter_*` (needs perf and root), divided by the queries.
#
#   cargo build --release && benches/runtimes.sh [prepared|simple] [clients] [rounds] [secs] [binary]
#
# VARIANTS lists the configurations: `name|[proxy] line` entries separated by `;`, default
# "shared|;current_thread|worker_threads = 1"; a third field names another binary for that
# variant (`base||/tmp/causeway-old;new||target/release/causeway` compares two builds). PGBOUNCER=1 adds PgBouncer (/usr/sbin/pgbouncer,
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

. "$(dirname "$0")/lib.sh"
start_demo "$bin" "$demo_port" "$work" || exit 1
pids+=("$demo")
pgbench -i -q -s 10 -h 127.0.0.1 -p "$primary" -U postgres postgres >/dev/null 2>&1

names=()
declare -A port pid
i=0
IFS=';' read -ra entries <<<"$variants"
for entry in "${entries[@]}"; do
  name=${entry%%|*}
  line=${entry#*|}
  # An optional third field: the binary this variant runs (default: the script's argument).
  vbin=$bin
  if [[ $line == *"|"* ]]; then
    vbin=${line#*|}
    line=${line%%|*}
  fi
  i=$((i + 1))
  names+=("$name")
  port[$name]=$((base_port + i))
  {
    printf '[proxy]\nlisten = "127.0.0.1:%s"\npool_mode = "transaction"\n%s\n\n' "${port[$name]}" "$line"
    printf '[monitor]\nuser = "causeway_monitor"\npassword = "monitor"\n\n'
    for p in ${ports//,/ }; do printf '[[nodes]]\naddress = "127.0.0.1:%s"\n\n' "$p"; done
    printf '[[users]]\nname = "postgres"\npassword = "%s"\n' "$pw"
  } >"$work/$name.toml"
  RUST_LOG=warn "$vbin" --config "$work/$name.toml" run >"$work/$name.log" 2>&1 &
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
  mkdir -p "$work/pgb"
  write_pgbouncer "$work/pgb" "${port[$name]}" "$pool" 80
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
