#!/bin/sh
# The chaos test of tests/integration/test_chaos.py, run for longer: three persistent nodes in
# a triangle of bridges, clients retrying until acknowledged, brokers killed with SIGKILL and
# bridges cut, then every node's total must equal what the clients meant to count.
#
# Usage: tests/chaos_soak.sh [seconds of faults, default 600] [seed]
# Needs the plugin built (cmake -S . -B build && make -C build). Prints every fault and the
# final figures; exits non-zero when a node's total is off.
set -eu
cd "$(dirname "$0")/.."
if [ ! -f "${TALLY_BUILD:-build}/plugin/mosquitto_tally.so" ]; then
    echo "build the plugin first: cmake -S . -B build && make -C build" >&2
    exit 2
fi
TALLY_CHAOS_SECONDS="${1:-600}"
export TALLY_CHAOS_SECONDS
if [ $# -ge 2 ]; then
    TALLY_CHAOS_SEED="$2"
    export TALLY_CHAOS_SEED
fi
exec /usr/bin/python3 -m pytest tests/integration/test_chaos.py -q -s -p no:cacheprovider
