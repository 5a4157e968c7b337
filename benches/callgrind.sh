#!/usr/bin/env bash
# User-space instructions per query of the proxy, counted by callgrind (repeatable on a noisy
# machine: it counts instructions, not time; kernel time is left out).
#
#   cargo build --release && benches/callgrind.sh [prepared|simple] [binary]
#
# Starts `causeway demo` (a throwaway primary + 2 standbys) on 127.0.0.1:$DEMO_PORT (default 6499), runs a second
# proxy from the same binary under valgrind on 127.0.0.1:$PROXY_PORT (default 6498) in front of the demo's nodes,
# warms it up with `pgbench -S -c 8 -j 2 -t 300`, zeroes the counts, runs
# `pgbench -S -c 8 -j 2 -t 2000` (16,000 queries), dumps, and prints the total divided by
# 16,000. Everything it started is stopped by PID at the end.
set -euo pipefail
mode=${1:-prepared}
bin=${2:-target/release/causeway}
demo_port=${DEMO_PORT:-6499}
proxy_port=${PROXY_PORT:-6498}
work=$(mktemp -d)
demo=""
proxy=""
cleanup() {
  [ -n "$proxy" ] && kill "$proxy" 2>/dev/null && wait "$proxy" 2>/dev/null
  [ -n "$demo" ] && kill -INT "$demo" 2>/dev/null && wait "$demo" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"
start_demo "$bin" "$demo_port" "$work" || exit 1

{
  printf '[proxy]\nlisten = "127.0.0.1:%s"\npool_mode = "transaction"\n\n' "$proxy_port"
  printf '[monitor]\nuser = "causeway_monitor"\npassword = "monitor"\n\n'
  for p in ${ports//,/ }; do printf '[[nodes]]\naddress = "127.0.0.1:%s"\n\n' "$p"; done
  printf '[[users]]\nname = "postgres"\npassword = "%s"\n' "$pw"
} >"$work/proxy.toml"

valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$bin" --config "$work/proxy.toml" run >"$work/proxy.log" 2>&1 &
proxy=$!
callgrind_queries "$mode" "$proxy_port" "$proxy"
dump=$(grep -l "^summary:" "$work"/cg.out* | head -1)
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump" | sort -n | tail -1)
# The sessions' own work, without the watcher's background checks (whose share of the total
# depends on how long the run took). Since sessions park (issue 17) the relay is a future of its
# own, boxed, and its poll carries the per-request work: the inclusive cost of
# `Session::relay`'s future (logins, which run before it, are left out). Builds from before
# that inlined the relay into the task: there, the inclusive cost of the session task's poll
# (named after session::run, or the task's TrackedFuture poll that callgrind files under
# session/mod.rs).
annotated=$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null || true)
relay=$(echo "$annotated" |
  grep -E 'session::relay::<impl causeway::session::Session>::relay::\{\{closure\}\} \[' | head -1 | awk '{gsub(",","",$1); print $1}' || true)
[ -n "$relay" ] || relay=$(echo "$annotated" |
  grep -E 'causeway::session::run::\{\{closure\}\}|src/session/mod.rs:<tokio_util::task::task_tracker::TrackedFuture' | head -1 | awk '{gsub(",","",$1); print $1}' || true)
echo "mode=$mode user-space instructions per query: $((total / 16000)) (total $total)"
[ -n "$relay" ] && echo "mode=$mode session tasks' instructions per query: $((relay / 16000))"
true
