#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests against real
# brokers, the simulator of hubs and edges, the browser end-to-end test, the same unit and integration tests
# under AddressSanitizer/LeakSanitizer/UndefinedBehaviorSanitizer, and each
# fuzz target for a bounded time. Installs what it needs first.
#
#   FUZZ_SECONDS=20      seconds per fuzz target (0 skips fuzzing)
#   TALLY_SANITIZE=1     0 skips the sanitizer pass
#   PYTEST_ARGS=...      extra pytest arguments (e.g. -k cluster)
#   TALLY_JOBS=3         integration tests run side by side
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
TALLY_SANITIZE=${TALLY_SANITIZE:-1}
TALLY_JOBS=${TALLY_JOBS:-3}
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
# conftest.py), and those marked nosan (timing-sensitive) alone after them.
# A pass that selects nothing (pytest's 5, with PYTEST_ARGS=-k ...) is no
# failure.
side_by_side() {
  pytest_run -n "$TALLY_JOBS" -m "not nosan" tests/integration
  local rc=$?
  ((rc == 0 || rc == 5))
}

integration() {
  local rc=0
  side_by_side || rc=1
  pytest_run -m nosan tests/integration
  local alone=$?
  ((rc == 0 && (alone == 0 || alone == 5)))
}

# Check's per-test timeouts are set for a plain build; a sanitized one runs
# the same tests 2-5 times slower, so it gets three times as long.
unit() { CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-$([ "$1" = build-asan ] && echo 3 || echo 1)} "$1/tests/unit_tests"; }

sanitized_build() {
  CC=gcc BUILD_DIR=build-asan scripts/build.sh -DTALLY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
}

sanitized_integration() {
  local rt
  rt="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
  TALLY_BUILD=$repo/build-asan TALLY_PRELOAD=$rt \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23 \
    LSAN_OPTIONS=suppressions=$repo/tests/lsan.supp:print_suppressions=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    side_by_side
}

stage "install dependencies" scripts/install-deps.sh
stage "build" scripts/build.sh
stage "unit tests" unit build
stage "simulator (fixed seeds)" tests/sim/run.sh build large
stage "integration tests" integration
stage "web unit tests" node --test clients/web/test/
stage "browser end-to-end" node --test tests/e2e/
if [[ $TALLY_SANITIZE == 1 ]]; then
  stage "sanitizer build" sanitized_build
  stage "unit tests (ASan+UBSan)" unit build-asan
  stage "simulator (ASan+UBSan)" tests/sim/run.sh build-asan
  stage "integration tests (ASan+LSan+UBSan in the broker)" sanitized_integration
fi
if [[ $FUZZ_SECONDS != 0 ]]; then
  stage "fuzzing (${FUZZ_SECONDS} s a target)" tests/fuzz/run.sh "$FUZZ_SECONDS"
fi

echo
if ((failed)); then
  printf 'failed stages: %s\n' "${failures[*]}"
fi
echo "stages: $passed passed, $failed failed"
((failed == 0))
