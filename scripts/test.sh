#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests against real
# brokers, the simulator of hubs and edges, the browser end-to-end test, the same unit and integration tests
# under AddressSanitizer/LeakSanitizer/UndefinedBehaviorSanitizer, and each
# fuzz target for a bounded time. Installs what it needs first.
#
#   FUZZ_SECONDS=40      seconds per fuzz target (0 skips fuzzing; 20 by
#                        default with TALLY_SANITIZE=0, where it runs alone)
#   TALLY_SANITIZE=1     0 skips the sanitizer pass
#   PYTEST_ARGS=...      extra pytest arguments (e.g. -k cluster)
#   TALLY_JOBS=4         integration tests run side by side
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$PWD
TALLY_SANITIZE=${TALLY_SANITIZE:-1}
# Beside the sanitized integration tests (below) fuzzing takes only the CPU
# they leave: 40 s a target, five rounds of two, fit in their six minutes
# (50 s made them 22 s longer, 20 s 10 s).
FUZZ_SECONDS=${FUZZ_SECONDS:-$((TALLY_SANITIZE == 1 ? 40 : 20))}
TALLY_JOBS=${TALLY_JOBS:-4}
passed=0
failed=0
failures=()

stage() {
  local name=$1
  shift
  echo
  echo "==== $name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "==== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "==== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

pytest_run() {
  /usr/bin/python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} "$@"
}

# Integration tests wait on brokers far more than they compute, so they run
# TALLY_JOBS at a time (pytest-xdist; each worker hands out its own ports,
# conftest.py; a module marked xdist_group runs in one worker), and those
# marked alone (timing-, CPU- or memory-sensitive, or on fixed ports) one at
# a time after them. The sanitized pass leaves out those marked nosan. A
# pass that selects nothing (pytest's 5, with PYTEST_ARGS=-k ...) is no
# failure.
side_by_side() {
  pytest_run -n "$TALLY_JOBS" --dist loadgroup -m "$1" tests/integration
  local rc=$?
  ((rc == 0 || rc == 5))
}

integration() {
  local rc=0
  side_by_side "not alone" || rc=1
  pytest_run -m alone tests/integration
  local alone=$?
  ((rc == 0 && (alone == 0 || alone == 5)))
}

unit() { "$1/tests/unit_tests"; }

# The sanitized unit tests run in one process (CK_FORK=no): LeakSanitizer's
# scan as each forked test exits cost 0.65 s a test, 302 s of the stage
# against 64 s in one process, and a leak anywhere still fails the run at
# exit. A crash stops the rest, which fails the stage all the same.
sanitized_unit() { CK_FORK=no build-asan/tests/unit_tests; }

# -O1, as AddressSanitizer's own documentation advises for speed.
sanitized_build() {
  CC=gcc BUILD_DIR=build-asan scripts/build.sh -DTALLY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS_DEBUG="-g -O1"
}

# Stages that only compute (the simulator, the sanitized unit tests) run
# beside the integration tests, which mostly wait on brokers, at the lowest
# priority (nice 19) so that they take only what the brokers leave idle.
# Their output, time and result are given after the integration tests.
bg_names=()
bg_pids=()
bg_logs=()
beside() {
  local name=$1 log
  shift
  log=$(mktemp)
  (
    renice -n 19 -p "$BASHPID" >/dev/null # nice(1) cannot run a shell function
    start=$SECONDS
    "$@" >"$log" 2>&1
    echo "$? $((SECONDS - start))" >"$log.end"
  ) &
  bg_names+=("$name")
  bg_pids+=($!)
  bg_logs+=("$log")
}

ran_beside() {
  local rc secs
  cat "$1"
  read -r rc secs <"$1.end" || rc=1
  echo "(ran ${secs:-?} s beside the integration tests)"
  rm -f "$1" "$1.end"
  return "$rc"
}

collect() {
  for i in "${!bg_pids[@]}"; do
    wait "${bg_pids[$i]}"
    stage "${bg_names[$i]}" ran_beside "${bg_logs[$i]}"
  done
  bg_names=() bg_pids=() bg_logs=()
}

sanitized_integration() {
  local rt
  rt="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
  TALLY_BUILD=$repo/build-asan TALLY_PRELOAD=$rt \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23 \
    LSAN_OPTIONS=suppressions=$repo/tests/lsan.supp:print_suppressions=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    side_by_side "not nosan and not alone"
}

stage "install dependencies" scripts/install-deps.sh
stage "build" scripts/build.sh
stage "unit tests" unit build
if [[ $TALLY_SANITIZE == 1 ]]; then
  stage "sanitizer build" sanitized_build
fi
beside "simulator (fixed seeds)" tests/sim/run.sh build large
if [[ $TALLY_SANITIZE == 1 ]]; then
  beside "unit tests (ASan+UBSan)" sanitized_unit
  beside "simulator (ASan+UBSan)" tests/sim/run.sh build-asan
fi
stage "integration tests" integration
stage "web unit tests" node --test clients/web/test/
stage "browser end-to-end" node --test tests/e2e/
collect
# Fuzzing only computes too: beside the sanitized integration tests when
# there are any, at nice 19 (FUZZ_SECONDS above), else alone.
fuzzing=("fuzzing (${FUZZ_SECONDS} s a target)" tests/fuzz/run.sh "$FUZZ_SECONDS")
if [[ $TALLY_SANITIZE == 1 ]]; then
  [[ $FUZZ_SECONDS == 0 ]] || beside "${fuzzing[@]}"
  stage "integration tests (ASan+LSan+UBSan in the broker)" sanitized_integration
  collect
elif [[ $FUZZ_SECONDS != 0 ]]; then
  stage "${fuzzing[@]}"
fi

echo
if ((failed)); then
  printf 'failed stages: %s\n' "${failures[*]}"
fi
echo "stages: $passed passed, $failed failed"
((failed == 0))
