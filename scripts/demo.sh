#!/usr/bin/env bash
# The demo: installs what is needed, builds and installs tally, starts the
# three-node cluster of conf/cluster/ with the dashboard, and simulated
# devices that count likes, votes and page views and report meter readings.
# Runs until Ctrl-C, then stops everything it started.
#
#   DEMO_SECONDS=N   stop by itself after N seconds (default: run until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cmake --install build >/dev/null

run=/tmp/tally-demo
mkdir -p "$run"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for n in a b c; do
  mosquitto -c "conf/cluster/node-$n.conf" 2>"$run/node-$n.log" &
  pids+=($!)
done
for port in 11884 11885 11886; do
  for _ in $(seq 50); do
    mosquitto_pub -p "$port" -t demo/hello -n 2>/dev/null && break
    sleep 0.2
  done
done
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    node=$(printf '%s' abc | cut -c$((i + 1)))
    echo "demo: node $node did not start:" >&2
    tail -5 "$run/node-$node.log" >&2
    exit 1
  fi
done

# A device: a loop that publishes an increment to one of a few counters,
# through one of the three nodes, a few times a second.
device() {
  local port=$1 names=(likes votes-yes votes-no page-views)
  while true; do
    local name=${names[RANDOM % ${#names[@]}]}
    local delta=$((RANDOM % 3 + 1))
    if [[ $name == votes-no && $((RANDOM % 4)) == 0 ]]; then delta=-1; fi
    mosquitto_pub -p "$port" -i "device-$port-$BASHPID" -t "counters/$name/inc" -m "$delta" -q 1 || true
    sleep "0.$((RANDOM % 5 + 2))"
  done
}
# A meter: reports its running total, sometimes twice, sometimes late.
meter() {
  local port=$1 id=$2 total=0
  while true; do
    total=$((total + RANDOM % 5))
    mosquitto_pub -p "$port" -i "$id" -t counters/energy-wh/report -m "$total" -q 1 || true
    sleep 1
  done
}
for port in 11884 11885 11886; do
  device "$port" &
  pids+=($!)
done
meter 11885 meter-7 &
pids+=($!)
meter 11886 meter-8 &
pids+=($!)

cat <<MSG

tally demo is running: three brokers bridged in a chain a <- b <- c.
  Dashboard:  http://127.0.0.1:18081/   (node a; also :18082 for b, :18083 for c)
  Another page's viewers: http://127.0.0.1:18082/?page=launch
  Count:      mosquitto_pub -p 11886 -t counters/likes/inc -m 5
  Watch:      tally -p 11884 watch +
  Stats:      tally -p 11884 stats
Logs in $run/. Press Ctrl-C to stop.
MSG
if [[ -n ${DEMO_SECONDS:-} ]]; then
  sleep "$DEMO_SECONDS"
else
  wait
fi
