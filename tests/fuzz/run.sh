#!/bin/sh
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) and runs
# each for N seconds (default 20), starting from the committed seed corpus.
# Prints executions per target in one table; exits non-zero if any target
# crashed (the reproducer is left in build-fuzz/fuzz-artifacts/).
#
#   tests/fuzz/run.sh [seconds-per-target]
set -eu

SECONDS_PER_TARGET=${1:-20}
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
make -C "$BUILD" -s --no-print-directory $(for t in $TARGETS; do printf 'fuzz_%s ' "$t"; done)

mkdir -p "$BUILD/fuzz-artifacts"
STATUS=0
SUMMARY=""
for t in $TARGETS; do
    work="$BUILD/fuzz-corpus/$t"
    mkdir -p "$work"
    log="$BUILD/fuzz-artifacts/$t.log"
    # New inputs go to the work corpus (first directory); the committed
    # seeds are only read.
    if "$BUILD/tests/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$BUILD/fuzz-artifacts/$t-" \
        "$work" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        STATUS=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    SUMMARY="$SUMMARY$(printf '%-20s %12s  %s' "fuzz_$t" "${execs:-?}" "$result")
"
done

printf '%-20s %12s  %s\n' target executions result
printf '%s' "$SUMMARY"
[ "$STATUS" -eq 0 ] || echo "crash reproducers and logs: $BUILD/fuzz-artifacts/" >&2
exit "$STATUS"
