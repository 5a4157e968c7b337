#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time (libFuzzer -max_total_time).
#
#   fuzz/run.sh [seconds-per-target] [target...]    default: 60 seconds, every target
#
# Prints, per target, the executions run and whether it crashed; exits 1 if any target found a
# crash (panic, failed assertion) or a hang (an input running over FUZZ_TIMEOUT seconds), 77 if
# the tools are missing and cannot be installed (so that CI can skip the step). Crashing inputs land in
# fuzz/artifacts/<target>/; the corpus libFuzzer grows lands in fuzz/work/corpus/<target>/
# (the committed seeds in fuzz/corpus/<target>/ are only read). See docs/FUZZING.md.
#
# Environment: FUZZ_SANITIZER (none, the default: the crate has no unsafe code, and without
# ASan the build is quicker and runs about twice as many inputs; address for a long run),
# FUZZ_TIMEOUT (seconds one input may take, default 10), FUZZ_RSS_LIMIT_MB (default 2048).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-10}
rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}
# The same build flags for `cargo fuzz build` and `cargo fuzz run`, or the run rebuilds.
# --debug-assertions: arithmetic overflow panics, as in a debug build.
flags=(--fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions)

# === Tools: a nightly toolchain and cargo-fuzz ===
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain; installing one (rustup toolchain install nightly)"
  if ! rustup toolchain install nightly --profile minimal; then
    echo "fuzz: SKIPPED: cannot install a nightly toolchain (cargo fuzz needs one)" >&2
    exit 77
  fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz missing; installing it (cargo install cargo-fuzz --locked)"
  if ! cargo install cargo-fuzz --locked; then
    echo "fuzz: SKIPPED: cannot install cargo-fuzz" >&2
    exit 77
  fi
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# === Build ===
# `cargo fuzz run` would build each target on its first run anyway; building first keeps the
# build's time and errors apart from the runs'.
mkdir -p fuzz/work/logs
build_start=$SECONDS
build_log=fuzz/work/logs/build.log
# One target per `cargo fuzz build`; without a name it builds them all.
build() {
  if ! cargo +nightly fuzz build "${flags[@]}" "$@" >"$build_log" 2>&1; then
    grep -Ev '^\s+(Compiling|Downloaded|Downloading) ' "$build_log" | tail -n 40 >&2
    echo "fuzz: build failed (log $build_log)" >&2
    exit 1
  fi
}
if [ "$#" -eq 0 ]; then
  build
else
  for t in "${targets[@]}"; do build "$t"; done
fi
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - build_start)) s"

# === Run ===
failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/corpus/$t" "fuzz/artifacts/$t"
  log=fuzz/work/logs/$t.log
  # cargo fuzz adds -artifact_prefix=fuzz/artifacts/<target>/ itself.
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout="$timeout"
    -rss_limit_mb="$rss_limit")
  if [ -f "fuzz/dict/$t.dict" ]; then
    args+=(-dict="fuzz/dict/$t.dict")
  fi
  echo "fuzz: running $t for $seconds s"
  # The first corpus directory is where libFuzzer writes what it finds; the seeds stay as
  # they are.
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/work/corpus/$t" "fuzz/corpus/$t" \
    -- "${args[@]}" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ "$status" -eq 0 ]; then
    summary+=("$(printf '%-14s %12s executions  ok' "$t" "${execs:-?}")")
  else
    failed+=("$t")
    summary+=("$(printf '%-14s %12s executions  FAILED (exit %s, log %s)' \
      "$t" "${execs:-?}" "$status" "$log")")
    # The panic message and the input that caused it.
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|Failing input" "$log" |
      head -n 8 | sed "s/^/fuzz: $t: /" >&2 || true
  fi
done

echo "fuzz: summary ($seconds s per target, sanitizer $sanitizer)"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}; inputs in fuzz/artifacts/<target>/, reproduce with" \
    "cargo +nightly fuzz run ${flags[*]} <target> <input>" >&2
  exit 1
fi
