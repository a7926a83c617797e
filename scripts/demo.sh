#!/usr/bin/env bash
# The demo: installs what is needed, builds and installs tally, starts the
# three-node cluster of conf/cluster/ with the dashboard, and simulated
# devices that count likes, votes and page views and report meter readings.
# Runs until Ctrl-C (or kill), then stops everything it started within a
# second.
#
#   DEMO_SECONDS=N   stop by itself after N seconds (default: run until Ctrl-C)
#   DEMO_DIR=DIR     where the logs go (default /tmp/tally-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cmake --install build >/dev/null

run=${DEMO_DIR:-/tmp/tally-demo}
mkdir -p "$run"
# The bridges log in as tally-bridge and the control API answers admin: both
# need the password file the cluster's configs name (conf/cluster/*.conf).
passwords=/etc/mosquitto/tally/passwords
if [[ ! -f $passwords ]]; then
  install -d -m 750 -o mosquitto -g mosquitto /etc/mosquitto/tally
  conf/secure/make-passwords.sh "$passwords" >/dev/null
  chown mosquitto:mosquitto "$passwords"
fi

# Job control: every background job gets its own process group, so one kill
# of the group stops a device loop together with its mosquitto_pub and sleep.
set -m
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nodes=(a b c)
for n in "${nodes[@]}"; do
  mosquitto -c "conf/cluster/node-$n.conf" 2>"$run/node-$n.log" &
  pids+=($!)
done
# A node that stopped: said once, with the end of its log.
declare -A reported=()
check_nodes() {
  local i
  for i in "${!nodes[@]}"; do
    local n=${nodes[$i]}
    if [[ -z ${reported[$n]:-} ]] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      reported[$n]=1
      echo "demo: node $n stopped; the end of $run/node-$n.log:" >&2
      tail -5 "$run/node-$n.log" >&2
    fi
  done
}
for port in 11884 11885 11886; do
  for _ in $(seq 50); do
    mosquitto_pub -p "$port" -t demo/hello -n 2>/dev/null && break
    sleep 0.2
  done
done
check_nodes
if ((${#reported[@]})); then
  exit 1
fi

# A device: a loop that publishes an increment to one of a few counters,
# through one of the three nodes, a few times a second. A node that is down
# is reported once by check_nodes, not by every publish.
device() {
  local port=$1 names=(likes votes-yes votes-no page-views)
  while true; do
    local name=${names[RANDOM % ${#names[@]}]}
    local delta=$((RANDOM % 3 + 1))
    if [[ $name == votes-no && $((RANDOM % 4)) == 0 ]]; then delta=-1; fi
    mosquitto_pub -p "$port" -i "device-$port-$BASHPID" -t "counters/$name/inc" -m "$delta" \
      -q 1 2>/dev/null || true
    sleep "0.$((RANDOM % 5 + 2))"
  done
}
# A meter: reports its running total, sometimes twice, sometimes late.
meter() {
  local port=$1 id=$2 total=0
  while true; do
    total=$((total + RANDOM % 5))
    mosquitto_pub -p "$port" -i "$id" -t counters/energy-wh/report -m "$total" -q 1 \
      2>/dev/null || true
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
  Admin:      mosquitto_rr -p 11884 -u admin -P admin-demo -t '\$CONTROL/tally/v1' \\
                -e '\$CONTROL/tally/v1/response' -W 5 \\
                -m '{"commands":[{"command":"getCounter","name":"likes"}]}'
Logs in $run/. Press Ctrl-C to stop.
MSG
# Wait a second at a time, in `wait` (which a signal interrupts at once,
# unlike a foreground sleep), and report a node that stopped.
start=$SECONDS
while [[ -z ${DEMO_SECONDS:-} ]] || ((SECONDS - start < DEMO_SECONDS)); do
  sleep 1 &
  wait $! || true
  check_nodes
done
