#!/usr/bin/env bash
# docker/smoke.sh: builds the images and runs docker/compose.yml for real with podman, then checks
# causeway through its published port: psql and a short pgbench work, reads reach the standbys and
# writes the primary, and after the primary's container stops and a standby is promoted, causeway
# sends writes to the new primary. Tears down what it started, also on failure.
#
#   sudo docker/smoke.sh [--keep-images]
#
# Made for a machine that reaches Debian's package mirror but no image registry: the base image
# comes from `debootstrap --variant=minbase bookworm` (the mirror apt already uses) and
# `podman import`, PostgreSQL from Debian's postgresql-15 package (docker/postgres/Dockerfile),
# and causeway's image from the binary built here (`--target prebuilt`). Runs as root. Missing
# tools (podman, podman-compose, buildah, runc, debootstrap, psql, pgbench) are installed with
# apt-get. Images are removed at the end unless --keep-images, which makes the next run skip
# debootstrap and the PostgreSQL image. Measured on the loaded 2-core machine: about 4 minutes
# from no images once the binary is built (debootstrap 1.2-5 minutes, the PostgreSQL image
# 0.6-2.2), 1 minute with kept images; a first run adds the tools' install (12 s to 2 minutes)
# and cargo's release build (20 minutes when other builds shared the machine). Kept images go
# with `podman rmi localhost/causeway-smoke-base:bookworm localhost/causeway-smoke-postgres:15`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROJECT="causeway-smoke-$$"
BASE_IMAGE="localhost/causeway-smoke-base:bookworm"
PG_IMAGE="localhost/causeway-smoke-postgres:15"
CW_IMAGE="localhost/causeway-smoke:latest"
KEEP_IMAGES=0
[ "${1:-}" = "--keep-images" ] && KEEP_IMAGES=1
WORK="$(mktemp -d /tmp/causeway-smoke.XXXXXX)"
START=$SECONDS
CREATED_IMAGES=()
STACK_UP=0

say() { printf '[smoke %4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

# === teardown: only what this run created ===
teardown() {
  local rc=$?
  set +e
  if [ "$STACK_UP" = 1 ]; then
    [ "$rc" != 0 ] && { say "causeway's log (last 30 lines):"; podman logs --tail 30 "${PROJECT}_causeway_1" 2>&1; }
    say "tearing down the stack"
    compose down -v >/dev/null 2>&1
    # Whatever compose left (a failed `up` may leave containers it no longer lists).
    local ids
    mapfile -t ids < <(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
    [ "${#ids[@]}" -gt 0 ] && podman rm -f "${ids[@]}" >/dev/null
    mapfile -t ids < <(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
    [ "${#ids[@]}" -gt 0 ] && podman volume rm -f "${ids[@]}" >/dev/null
    podman network exists "${PROJECT}_default" && podman network rm -f "${PROJECT}_default" >/dev/null
  fi
  if [ "$KEEP_IMAGES" = 0 ] && [ "${#CREATED_IMAGES[@]}" -gt 0 ]; then
    say "removing images: ${CREATED_IMAGES[*]}"
    podman rmi -f "${CREATED_IMAGES[@]}" >/dev/null
    podman image prune -f >/dev/null
  fi
  rm -rf "$WORK"
  if [ "$rc" = 0 ]; then say "PASS in $((SECONDS - START))s"; else say "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

compose() {
  POSTGRES_IMAGE="$PG_IMAGE" CAUSEWAY_IMAGE="$CW_IMAGE" \
    CAUSEWAY_PORT="$PORT" CAUSEWAY_HTTP_PORT="$HTTP_PORT" \
    podman-compose --project-name "$PROJECT" --file "$ROOT/docker/compose.yml" "$@"
}

# === tools and podman's configuration ===
install_missing() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v buildah >/dev/null || need+=(buildah)
  command -v podman-compose >/dev/null || need+=(podman-compose)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v psql >/dev/null || need+=(postgresql-client)
  command -v pgbench >/dev/null || need+=(postgresql-contrib)
  [ "${#need[@]}" = 0 ] && return
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
}

# runc, because the default crun fails here with "cgroups in hybrid mode"; ulimits no higher than
# this machine's hard limits, or every container fails in setrlimit. nproc is also capped at
# kernel.pid_max: here the hard limit reads 96367 but setting more than pid_max (32768) is
# refused. A CONTAINERS_CONF already set is the caller's choice and is kept.
containers_conf() {
  [ -n "${CONTAINERS_CONF:-}" ] && return
  local nofile nproc pid_max
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  pid_max="$(cat /proc/sys/kernel/pid_max)"
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; } && nproc="$pid_max"
  cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  export CONTAINERS_CONF="$WORK/containers.conf"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# === images ===
debian_mirror() {
  # shellcheck disable=SC2016 # apt's own $(FIELD) placeholders
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' \
    | awk '$2 == "bookworm" && $3 == "main" { print $1; exit }'
}

build_images() {
  if ! podman image exists "$BASE_IMAGE"; then
    local mirror
    mirror="$(debian_mirror)"
    say "debootstrap bookworm from ${mirror:-http://deb.debian.org/debian/}"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "${mirror:-http://deb.debian.org/debian/}" \
      >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    # The downloaded packages and lists are half the size and stale in an image anyway.
    rm -rf "$WORK/rootfs"/var/cache/apt/archives/*.deb "$WORK/rootfs"/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    CREATED_IMAGES+=("$BASE_IMAGE")
  fi
  if ! podman image exists "$PG_IMAGE"; then
    say "building $PG_IMAGE (Debian's postgresql-15)"
    podman build --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      -f "$ROOT/docker/postgres/Dockerfile" -t "$PG_IMAGE" "$ROOT/docker/postgres" \
      >"$WORK/build-postgres.log" 2>&1 || { tail -20 "$WORK/build-postgres.log"; fail "postgres image"; }
    CREATED_IMAGES+=("$PG_IMAGE")
  fi
  say "cargo build --release"
  (cd "$ROOT" && cargo build --release --locked --quiet --bin causeway)
  say "building $CW_IMAGE (--target prebuilt)"
  # Always rebuilt: the binary may have changed, and the step is only a copy.
  podman build --format docker --target prebuilt --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
    -f "$ROOT/docker/Dockerfile" -t "$CW_IMAGE" "$ROOT" \
    >"$WORK/build-causeway.log" 2>&1 || { tail -20 "$WORK/build-causeway.log"; fail "causeway image"; }
  CREATED_IMAGES+=("$CW_IMAGE")
}

# === checks ===
# psql through causeway's published port: tuples only, unaligned, stop at the first error.
cw_psql() {
  PGPASSWORD=app psql --no-psqlrc -X -qAt -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PORT user=app dbname=app connect_timeout=5" "$@"
}

http_get() {
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end="")
except urllib.error.HTTPError as e:
    print(e.read().decode(), end=""); sys.exit(1)
except OSError as e:
    print(e, end=""); sys.exit(1)
PY
}

container_ip() {
  podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${PROJECT}_$1_1"
}

# Waits until `check` (a shell command) succeeds, up to $1 seconds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$until" ] && fail "$what: not within ${limit}s"
    sleep 1
  done
}

standbys_eligible() {
  http_get "http://127.0.0.1:$HTTP_PORT/topology" | python3 -c '
import json, sys
t = json.load(sys.stdin)
sys.exit(0 if t["primary"] and sum(n["eligible_for_reads"] for n in t["nodes"]) == 2 else 1)'
}

check_routing() {
  local primary_ip standby1_ip standby2_ip
  primary_ip="$(container_ip primary)"
  standby1_ip="$(container_ip standby1)"
  standby2_ip="$(container_ip standby2)"
  say "nodes: primary $primary_ip, standby1 $standby1_ip, standby2 $standby2_ip"

  cw_psql -c 'CREATE TABLE smoke (id serial PRIMARY KEY, at timestamptz DEFAULT now())'
  local wrote
  wrote="$(cw_psql -c 'INSERT INTO smoke DEFAULT VALUES RETURNING host(inet_server_addr())')"
  [ "$wrote" = "$primary_ip" ] || fail "a write ran on $wrote, not on the primary $primary_ip"
  say "write: ran on the primary ($wrote)"

  # Separate statements, each routed on its own; ties between idle standbys are broken at
  # random, so 40 reads reach both unless one is never chosen.
  local reads
  reads="$(for _ in $(seq 40); do echo 'SELECT host(inet_server_addr()), pg_is_in_recovery();'; done \
    | cw_psql | sort | uniq -c)"
  say "reads by server: $(echo "$reads" | tr -s ' \n' ' ')"
  echo "$reads" | grep -q "$standby1_ip|t" || fail "no read reached standby1"
  echo "$reads" | grep -q "$standby2_ip|t" || fail "no read reached standby2"
  echo "$reads" | grep -q "$primary_ip" && fail "a plain read ran on the primary"
  say "reads: on both standbys, none on the primary"
}

run_pgbench() {
  say "pgbench -i -s 1, then 10s TPC-B (4 clients) and 5s select-only (4 clients)"
  PGPASSWORD=app pgbench -q -i -s 1 -h 127.0.0.1 -p "$PORT" -U app app >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log"; fail "pgbench -i"; }
  bench "TPC-B" -T 10
  bench "select-only" -S -T 5
}

# One pgbench run through causeway; fails on any failed transaction.
bench() {
  local name=$1 out
  shift
  out="$(PGPASSWORD=app pgbench -n -c 4 -j 2 "$@" -h 127.0.0.1 -p "$PORT" -U app app 2>&1)" \
    || { echo "$out"; fail "pgbench $name"; }
  say "pgbench $name: $(echo "$out" | grep -E '^(number of failed|tps)' | tr '\n' ' ')"
  echo "$out" | grep -q '^number of failed transactions: 0 ' \
    || { echo "$out"; fail "pgbench $name had failed transactions"; }
}

check_failover() {
  local new_primary_ip
  new_primary_ip="$(container_ip standby1)"
  say "stopping the primary's container, promoting standby1"
  podman stop --time 10 "${PROJECT}_primary_1" >/dev/null
  local promoted_at=$SECONDS
  podman exec "${PROJECT}_standby1_1" pg_ctl promote --wait --pgdata=/var/lib/postgresql/data/pgdata >/dev/null
  # A write sent during the gap waits up to routing.primary_wait (10s) for the new primary.
  local wrote="" until=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$until" ]; do
    wrote="$(cw_psql -c 'INSERT INTO smoke DEFAULT VALUES RETURNING host(inet_server_addr())' 2>/dev/null)" && break
    sleep 1
  done
  [ "$wrote" = "$new_primary_ip" ] || fail "after promotion a write ran on '${wrote}', not on standby1 ($new_primary_ip)"
  say "failover: writes go to standby1 ($wrote), $((SECONDS - promoted_at))s after the promotion"
  local topo
  topo="$(http_get "http://127.0.0.1:$HTTP_PORT/topology")"
  echo "$topo" | grep -q '"primary":"standby1:5432"' || fail "/topology does not name standby1 the primary: $topo"
  say "failover: /topology names standby1:5432 the primary"
  # standby2 still follows the stopped primary and never replays a write made after the
  # promotion (it drops out of the read pool once over max_lag): read-your-writes must send
  # this read where the write is.
  local read
  read="$(cw_psql <<'SQL'
INSERT INTO smoke DEFAULT VALUES RETURNING id AS last \gset
SELECT count(*), host(inet_server_addr()) FROM smoke WHERE id = :last;
SQL
)"
  [ "${read%%|*}" = 1 ] || fail "after the failover a read did not see the session's write: $read"
  say "failover: a read after a write sees it (ran on ${read#*|})"
}

# === main ===
[ "$(id -u)" = 0 ] || fail "run as root (podman here runs rootful)"
install_missing
containers_conf
PORT="$(free_port)"
HTTP_PORT="$(free_port)"
build_images

say "compose up (project $PROJECT, causeway on 127.0.0.1:$PORT, http on 127.0.0.1:$HTTP_PORT)"
STACK_UP=1
compose up -d --no-build >"$WORK/compose-up.log" 2>&1 || { cat "$WORK/compose-up.log"; fail "compose up"; }
wait_for 90 "causeway answers psql" cw_psql -c 'SELECT 1'
wait_for 60 "/ready" http_get "http://127.0.0.1:$HTTP_PORT/ready"
wait_for 60 "both standbys eligible for reads" standbys_eligible
podman healthcheck run "${PROJECT}_causeway_1" >/dev/null || fail "the image's healthcheck fails"
say "up: psql works, /ready is 200, the image's healthcheck passes, both standbys eligible"

check_routing
run_pgbench
check_failover
