#!/bin/sh
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) and runs
# each for N seconds (default 20), starting from the committed seed corpus.
# Prints executions per target in one table; exits non-zero if any target
# crashed (the reproducer is left in build-fuzz/fuzz-artifacts/). Targets run
# one a core (FUZZ_JOBS), each for the full N seconds.
#
#   tests/fuzz/run.sh [seconds-per-target]
set -eu

SECONDS_PER_TARGET=${1:-20}
JOBS=${FUZZ_JOBS:-$(nproc)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD="$ROOT/build-fuzz"
TARGETS="increment report name wire_sync wire_presence record mqtt_min interest tier gsum"

# The core library is instrumented too (coverage + sanitizers), not only the
# fuzz entry points: otherwise libFuzzer is blind inside plugin/*.c.
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    CC=clang cmake -S "$ROOT" -B "$BUILD" -DTALLY_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
        >/dev/null
fi
# shellcheck disable=SC2046
make -C "$BUILD" -j"$JOBS" -s --no-print-directory $(for t in $TARGETS; do printf 'fuzz_%s ' "$t"; done)

mkdir -p "$BUILD/fuzz-artifacts"
# One target: its log, and its result (ok or CRASH) beside it.
fuzz() {
    work="$BUILD/fuzz-corpus/$1"
    mkdir -p "$work"
    log="$BUILD/fuzz-artifacts/$1.log"
    # New inputs go to the work corpus (first directory); the committed
    # seeds are only read.
    if "$BUILD/tests/fuzz_$1" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$BUILD/fuzz-artifacts/$1-" \
        "$work" "$ROOT/tests/fuzz/corpus/$1" >"$log" 2>&1; then
        echo ok >"$log.result"
    else
        echo CRASH >"$log.result"
    fi
}
running=0
for t in $TARGETS; do
    fuzz "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait
        running=0
    fi
done
wait

STATUS=0
printf '%-20s %12s  %s\n' target executions result
for t in $TARGETS; do
    log="$BUILD/fuzz-artifacts/$t.log"
    result=$(cat "$log.result" 2>/dev/null || echo CRASH)
    [ "$result" = ok ] || STATUS=1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    printf '%-20s %12s  %s\n' "fuzz_$t" "${execs:-?}" "$result"
done
[ "$STATUS" -eq 0 ] || echo "crash reproducers and logs: $BUILD/fuzz-artifacts/" >&2
exit "$STATUS"
