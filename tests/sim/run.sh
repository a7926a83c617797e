#!/usr/bin/env bash
# The simulator's own tests: fixed seeds, so each run is the same run. Each
# must end with every live node exact (totals and viewers) and no edge ever
# showing a total below one it showed before; tally_sim --check exits 1 if not.
#   tests/sim/run.sh [build dir] [large]
# "large" adds a tree of 2,040 nodes with every kind of fault, without
# groups, with groups of hubs, with regions, with zones above them and with
# light hubs (10 to 20 s each here, the plain build only: they would take
# minutes under ASan), and the level-3 and level-4 mixes' 240 schedules.
#   TALLY_SIM_JOBS=N   schedules run N at a time (default: one a core)
set -euo pipefail
sim=${1:-build}/tests/tally_sim
jobs=${TALLY_SIM_JOBS:-$(nproc)}
run() {
  echo "== tally_sim $*"
  "$sim" --check "$@"
}
# One schedule of the many below, silent unless it fails (run by xargs).
# shellcheck disable=SC2317
one() {
  local out
  if ! out=$("$sim" --check "$@" 2>&1); then
    echo "FAILED: tally_sim $*"
    echo "$out" | tail -5
    return 1
  fi
}
export -f one run
export sim
heavy="--hubs 6 --edges 5 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1 --restart-hubs 1
  --kill-edges 3 --link-failures 6"
mixed="--hubs 10 --edges 8 --seconds 20 --loss 0.05 --delay 100 --kill-hubs 2 --restart-hubs 3
  --kill-edges 6 --link-failures 12"
# Edges stopped (SIGSTOP) for peer_timeout_ms +- 2 s under two hubs (three or
# more in a ring hand a hub its own relays back, which heals what is below).
# A hub expires an edge's viewers at every loop pass and its record of the
# edge at most once a publish interval (plugin.c): one thawed in between must
# be counted again (b38098a; without it, seeds 2 and 5 of the first line and
# about one in five of the second end with its viewers missing at its hub).
frozen="--hubs 2 --edges 5 --seconds 30 --freeze-edges 6 --publish-interval 1000"
thawing="--hubs 2 --edges 8 --seconds 30 --loss 0.05 --delay 50 --kill-edges 2 --restart-hubs 1
  --freeze-edges 8 --publish-interval 500"
# Heavy loss and delay, a hub lost for good, a hub that comes back (its edges
# move away and back), edges lost for good, hub-to-hub links down.
run $heavy --seed 1
run $heavy --seed 2
# A larger tree with every kind of fault at once.
run --hubs 10 --edges 20 --seconds 30 --loss 0.02 --kill-hubs 2 --restart-hubs 2 \
  --kill-edges 10 --link-failures 10 --seed 3
# UP, DOWN and relays cut at 110 bytes (a part holds one or two entries), under
# the same heavy loss and faults: parts lost, acks stopping before them.
run $heavy --tier-bytes 110 --seed 1
run $frozen --seed 2
run $frozen --seed 5
# A relay that answers a want goes up to peer_timeout_ms after its hub last
# heard the edge; a hub with no listing of the edge (restarted, or its
# listings lost) took its arrival as the edge's hearing, and counted a dead
# edge's viewers for up to another peer_timeout_ms. Each relay now carries
# its hub's listing entry of the edge (tier.c's relay_range); before that,
# these five failed (about 0.5% of schedules did).
run $heavy --tier-bytes 110 --seed 365
run $heavy --tier-bytes 110 --seed 488
run $heavy --tier-bytes 110 --seed 530
run $heavy --tier-bytes 110 --seed 533
run $mixed --seed 736
# A hub's own PRESENCE back through a ring of hubs: the simulator took it (the
# plugin drops it, is_self), and with it the hub's own listing entry of a dead
# edge, aged by the ring's delay, which kept its viewers counted 3 ms past
# peer_timeout_ms (the simulator's fault, not the plugin's).
ring="--hubs 8 --edges 10 --seconds 30 --loss 0.1 --delay 150 --kill-hubs 2 --restart-hubs 2
  --kill-edges 8 --link-failures 10 --tier-bytes 110 --freeze-edges 4"
run $ring --seed 3
# The plugin's own relay of its edge, answering a want, came back to it around
# the ring with its entry of the edge aged as it left, and the hub took that
# as news: a dead edge counted 83 ms past peer_timeout_ms (tier.c's
# our_own_relay; 1 of 1,200 schedules of this mix before).
run $ring --seed 490
# Hubs in a full mesh (repl.c's rule 2a: a hub does not forward what every
# other hub hears from its writer): without link failures, so that the rule
# holds through the hub deaths, restarts and losses; and with them, where a
# hub that stops hearing one asks the others for a repair.
mesh="--hubs 5 --edges 8 --mesh --seconds 20 --loss 0.05 --delay 100 --kill-hubs 1
  --restart-hubs 1 --kill-edges 5"
meshcut="--hubs 6 --edges 5 --mesh --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1
  --restart-hubs 1 --kill-edges 3 --link-failures 6"
run $mesh --seed 1
run $meshcut --seed 1
# Groups of hubs (group.c): a full mesh inside each group, bridges between
# groups carrying GSUM (each group's sums, a slot per group at the others)
# and PRESENCE, never SYNC or DIGEST; every edge fails over inside its group.
# Groups of two (a hub's SYNCs go to one neighbour), and of three or four,
# where repl.c's rule 2a applies inside a group. A hub dies for good only where
# every group keeps a live hub. groupcut: two groups of three, a hub killed in
# one, so that a hub of the other loses every bridge between the groups: its
# own PRESENCE must still be sent on by its group (rule 2a skips it no more
# there: before, 45 of 80 seeds left its edges' viewers uncounted).
groups="--hubs 8 --edges 5 --groups 4 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1
  --restart-hubs 1 --kill-edges 3 --link-failures 6"
groupcut="--hubs 6 --edges 5 --groups 2 --seconds 30 --loss 0.2 --delay 200 --kill-hubs 1
  --restart-hubs 1 --kill-edges 3 --link-failures 6"
groups3="--hubs 9 --edges 5 --groups 3 --seconds 20 --loss 0.1 --delay 100 --kill-hubs 1
  --restart-hubs 2 --kill-edges 4 --link-failures 8 --tier-bytes 110"
run --hubs 8 --edges 20 --groups 4 --seconds 20 --loss 0.05 --seed 1
run --hubs 8 --edges 20 --groups 4 --seconds 20 --loss 0.05 --delay 100 --kill-hubs 1 \
  --restart-hubs 1 --link-failures 4 --kill-edges 4 --seed 2
run --hubs 12 --edges 20 --groups 3 --seconds 20 --loss 0.02 --kill-hubs 1 --restart-hubs 2 \
  --link-failures 6 --freeze-edges 4 --seed 3
run $groups --seed 1
run $groups3 --seed 1
run $groupcut --seed 1
# An entry's age is counted from when it left, and every bridge it crosses
# delays it: a carrier lists a dead edge until it forgets it, and hubs took
# the hearing of the slowest copy, 711 ms on its way over five bridges, and
# counted the edge 300 ms past the allowance (presence_origin_listed; 12 of
# 2,001 schedules of this mix). A hub's own relay of its edge came back
# around the groups after it forgot the edge, dead, and counted it again
# (tier_hub_relay; 1 of them).
run $groups --seed 1000
run $groups --seed 2943
# Ten groups of four (a ring of groups with chords) with every kind of fault.
run --hubs 40 --edges 10 --groups 10 --seconds 20 --loss 0.02 --kill-hubs 4 --restart-hubs 4 \
  --kill-edges 20 --link-failures 20 --seed 7
# --reset: once exact, a live hub resets every counter (resetCounter); every
# node must come to 0, each edge going down once. In a group, the reset's
# base of each other group's replica must reach that group's hubs in GSUMs
# and come off their own part (group.c; with it taken off there, 36 nodes of
# the first line stayed where they were).
run $groups --seed 1 --reset
run --hubs 40 --edges 10 --groups 10 --seconds 20 --loss 0.02 --kill-hubs 4 --restart-hubs 4 \
  --kill-edges 20 --link-failures 20 --seed 7 --reset
run $heavy --seed 1 --reset
# Regions (groups of groups, group.c): a hub holds the other groups of its
# region and the other regions as one slot each, and refuses the GSUMs of
# another region's groups; resets one level up (reset.c, "A reset in another
# region": with the base of a region's own replica left out of its total,
# every one of ten seeds of the second line failed). Three regions of two
# groups of two with every kind of fault, and two regions of five groups of 4.
regions="--hubs 12 --edges 5 --groups 6 --regions 3 --seconds 30 --loss 0.2 --delay 200
  --kill-hubs 1 --restart-hubs 1 --kill-edges 3 --link-failures 6"
run $regions --seed 1
run $regions --seed 1 --reset
run --hubs 40 --edges 10 --groups 10 --regions 2 --seconds 20 --loss 0.02 --kill-hubs 4 \
  --restart-hubs 4 --kill-edges 20 --link-failures 20 --seed 7 --reset
# A level above the regions (plugin_opt_region "r/z": zones, group.c): a hub
# holds one slot per other region of its zone and per other zone, and
# refuses the RSUMs of another zone's regions; resets two levels up. Four
# regions of two groups of two, in two zones, with every kind of fault.
zones="--hubs 16 --edges 5 --groups 8 --regions 4 --zones 2 --seconds 30 --loss 0.2 --delay 200
  --kill-hubs 1 --restart-hubs 1 --kill-edges 3 --link-failures 6"
run $zones --seed 1
run $zones --seed 1 --reset
# Viewers summed per group and region (scope.c): a hub holds its group's
# edges' counts and one sum per other group and region. With groups, every run
# also fails if any hub shows more viewers than the live edges and those dead
# within three peer_timeout_ms and the sums' time (far_viewers_seen): a count
# taken twice, or a dead edge kept for good. It prints how late the last group
# saw a dead edge leave: 0 to 2 s past peer_timeout_ms at 2% loss, up to 21 s
# in these mixes (20% loss, 200 ms a bridge, links down: a hub cut off from a
# group keeps its last sums, and a repair asked for crosses four bridges at
# 20% loss; twice peer_timeout_ms was the bound until seeds 131 and 135 of
# the regions mix passed it, 2026-12-05, tests/sim/sim.c).
# Many more schedules of the same faults: each seed places the losses, delays,
# deaths and cuts elsewhere (a run takes well under a second). One line each.
# A budget of sums that binds (plugin_opt_sums_budget 50: a speaker of
# these trees' groups and regions sends a few records a second, what rose
# waits its turn): exact all the same, later.
run $groups --seed 1 --sums-budget 50
run $regions --seed 1 --sums-budget 50
run $zones --seed 1 --sums-budget 50
run --hubs 40 --edges 10 --groups 10 --regions 2 --seconds 20 --loss 0.02 --kill-hubs 4 \
  --restart-hubs 4 --kill-edges 20 --link-failures 20 --seed 7 --sums-budget 50
# Light hubs (plugin_opt_hub light, group.c "Light hubs"): the last two hubs
# of each group of four hold its nodes' slots and one rest slot a level, which
# its speaker keeps; the first of each group may die or restart, and the
# third, a light one. Seed 8: the speaker killed for good had sent a rest slot
# its successor never wrote again (a counter that did not change after), so
# the light hubs stayed a count short until a hub that takes over writes
# every rest slot (took_over). Seed 26 --reset: a reset's bases of the other
# groups' replicas, left out of a lean digest, were lost to a full hub for good
# when the SYNC that carried them was (a light hub relays the rest slot's base
# without them), so light hubs hold those bases too, and digests count them.
light="--hubs 16 --edges 5 --groups 4 --regions 2 --seconds 30 --loss 0.2 --delay 200
  --kill-hubs 1 --restart-hubs 1 --kill-edges 3 --link-failures 6 --light 2"
light3="--hubs 32 --edges 5 --groups 8 --regions 4 --zones 2 --seconds 30 --loss 0.2 --delay 200
  --kill-hubs 2 --restart-hubs 2 --kill-edges 3 --link-failures 8 --light 2"
run $light --seed 8
run $light --seed 26 --reset
run $light3 --seed 1 --reset
# Four levels (plugin_opt_region "r/z/w", TALLY_LEVELS): 16 groups of two in
# 8 regions, 4 zones and 2 worlds, every kind of fault; and groups of four
# with two light hubs each.
worlds="--hubs 32 --edges 5 --groups 16 --regions 8 --zones 4 --worlds 2 --seconds 30 --loss 0.2
  --delay 200 --kill-hubs 2 --restart-hubs 2 --kill-edges 3 --link-failures 8"
light4="--hubs 64 --edges 3 --groups 16 --regions 8 --zones 4 --worlds 2 --seconds 30 --loss 0.2
  --delay 200 --kill-hubs 2 --restart-hubs 2 --kill-edges 3 --link-failures 8 --light 2"
run $worlds --seed 1
run $worlds --seed 1 --reset
run $light4 --seed 1 --reset
# Split hubs (plugin_opt_hub split, group.c "Split hubs"): every hub of a group
# of four holds its nodes' slots, one rest slot a level, and the other units
# of the levels it is given among the hubs it hears; hubs die, restart and
# are cut off, so levels move from hub to hub; with resets, whose parts each
# level's holder takes.
split="${light/--light 2/--split}"
split3="${light3/--light 2/--split}"
split4="${light4/--light 2/--split}"
run $split --seed 8
run $split --seed 26 --reset
run $split3 --seed 1 --reset
run $split4 --seed 1 --reset
failed=0
for seed in $(seq 100 139); do
  for cfg in "$heavy" "$heavy --tier-bytes 110" "$mixed" "$thawing" "$mesh" "$meshcut" "$groups" \
    "$groups3" "$groupcut" "$heavy --reset" "$groups --reset" "$groups3 --reset" \
    "$groupcut --reset" "$regions" "$regions --reset" "$light" "$light --reset" "$split" \
    "$split --reset"; do
    # shellcheck disable=SC2086
    echo $cfg --seed "$seed" # one line, one space between arguments
  done
done | xargs -P "$jobs" -L 1 bash -c 'one "$@"' one || failed=1
[ "$failed" = 0 ] && echo "== 760 more schedules (seeds 100-139, 19 fault mixes, $jobs at a time): all exact"
if [ "${2:-}" = large ]; then
  # The level-3 and level-4 mixes' schedules, in the plain build only:
  # under ASan the level-3 mix took 1.66 s each against 1.13 s for the
  # regions mix (80 of them, some 4 minutes of CI beside the integration
  # tests); the fixed runs above keep them in the sanitized pass.
  for seed in $(seq 100 139); do
    for cfg in "$zones" "$zones --reset" "$light3" "$light3 --reset" "$worlds" "$worlds --reset" \
      "$split3" "$split3 --reset"; do
      # shellcheck disable=SC2086
      echo $cfg --seed "$seed"
    done
  done | xargs -P "$jobs" -L 1 bash -c 'one "$@"' one || failed=1
  [ "$failed" = 0 ] && echo "== 320 more schedules of three and four levels (seeds 100-139, 8 fault mixes): all exact"
  large="--hubs 40 --edges 50 --seconds 20 --loss 0.02 --kill-hubs 4 --restart-hubs 4
    --kill-edges 40 --link-failures 20 --seed 7"
  # The four side by side, each printed whole in turn.
  out=$(mktemp -d)
  export out
  # shellcheck disable=SC2317
  large_one() { run "${@:2}" >"$out/$1" 2>&1 || touch "$out/failed"; }
  export -f large_one
  # shellcheck disable=SC2086
  {
    echo 1 $large
    echo 2 $large --groups 10
    echo 3 $large --groups 10 --regions 2
    echo 4 $large --groups 20 --regions 4 --zones 2
    echo 5 $large --groups 10 --regions 2 --light 2
    echo 6 $large --groups 10 --regions 2 --split
  } | xargs -P "$jobs" -L 1 bash -c 'large_one "$@"' large_one
  cat "$out/1" "$out/2" "$out/3" "$out/4" "$out/5" "$out/6"
  [ -e "$out/failed" ] && failed=1
  rm -rf "$out"
fi
exit "$failed"
