#!/usr/bin/env bash
# The simulator's own tests: fixed seeds, so each run is the same run. Each
# must end with every live node exact (totals and viewers) and no edge ever
# showing a total below one it showed before; tally_sim --check exits 1 if not.
#   tests/sim/run.sh [build dir]
set -euo pipefail
sim=${1:-build}/tests/tally_sim
run() {
  echo "== tally_sim $*"
  "$sim" --check "$@"
}
# Heavy loss and delay, a hub lost for good, a hub that comes back (its edges
# move away and back), edges lost for good, hub-to-hub links down.
run --hubs 6 --edges 5 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1 --restart-hubs 1 \
  --kill-edges 3 --link-failures 6 --seed 1
run --hubs 6 --edges 5 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1 --restart-hubs 1 \
  --kill-edges 3 --link-failures 6 --seed 2
# A larger tree with every kind of fault at once.
run --hubs 10 --edges 20 --seconds 30 --loss 0.02 --kill-hubs 2 --restart-hubs 2 \
  --kill-edges 10 --link-failures 10 --seed 3
# UP, DOWN and relays cut at 110 bytes (a part holds one or two entries), under
# the same heavy loss and faults: parts lost, acks stopping before them.
run --hubs 6 --edges 5 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1 --restart-hubs 1 \
  --kill-edges 3 --link-failures 6 --tier-bytes 110 --seed 1
