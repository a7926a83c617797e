/*
 * group.c - groups of hubs: what a hub tells the other groups, and takes
 * from them, so that a hub holds its own group's slots and one per group.
 *
 * ---- Why ----
 *
 * A hub of a flat mesh of hubs holds a slot per node that wrote a counter,
 * edges included, and learns every change of each: 40 hubs of 50 edges is
 * 2,040 slots in a counter every edge writes, and a hub's state and traffic
 * grow with the whole tree (tier.c, "What handoff counters would save").
 *
 * ---- What a group is ----
 *
 * A group is a few hubs that share their edges: today's cluster among
 * themselves (plugin_opt_group names it), with every edge's failover list
 * inside it. Groups are bridged to each other with bridges that carry
 * only GSUMs (and the groups' viewer sums, and stats): `topic $tally/v1/gsum/#`
 * and the rest, never `$tally/v1/sync/#`. A hub refuses a SYNC or DIGEST of
 * another group (plugin.c reads the group in its topic), so a bridge that
 * carries all of $tally/ costs bytes, never a count.
 *
 * ---- The group's sum ----
 *
 * Within a group every hub holds every node's slot (its hubs', its edges')
 * and converges on them. The group's sum of a counter is a function of that
 * state: the sum of those slots, each less what a fold moved out of it into
 * its node's running slot (fold.c: a slot is counted above its fold entry
 * only, and the entry travels with the raised slot, so the sum never counts
 * a moved part twice). Every slot only grows, so each hub's figure of it is
 * a lower bound of the truth that only grows, and is exact once the group
 * has converged. So any hub of the group may send it to the other groups as
 * the slot of one replica named after the group (".name", one life), merged
 * by maximum like any slot: whoever sends it, however often, in whatever
 * order, the maximum is the best figure any hub of the group had, never
 * more than the truth. No custody, no handoff: an edge's count is in one
 * group's sum only, since its failover list never leaves the group.
 *
 * A hub of another group holds that replica as an ordinary slot (totals,
 * views of its edges, the state document), logs it (persist.c), and never
 * holds a slot of a node of another group. A hub never takes its own
 * group's replica: it holds every slot that sum was made of.
 *
 * Bases (reset.c) go the same way, a slot's base less its fold entry
 * (fold.c: taken = max(base, fold), so base - fold is what the reset took
 * from what is left), summed. At a hub of another group the replica's base
 * takes min(sum, base sum) away, at least the sum of the min(slot, base)
 * each slot loses at home: the two meet once every slot has reached the
 * base it was reset at, which is where resets converge anyway.
 *
 * ---- A reset in one group, seen by the others ----
 *
 * A reset at a hub of group A observes, as anywhere, every slot it holds:
 * its own group's nodes', and the replica .B of each other group B, whose
 * base becomes the sum of B it had seen. That base is news to B and to the
 * other groups, so A's GSUMs carry, besides A's sums, the counter's stamps
 * (a delete, reset.c), the bases of the group replicas A's hubs hold, and
 * each device's base beside its maximum. A hub of C merges the base of .B
 * like any base. A hub of B has no slot of .B: it puts the base on its own
 * group's replica (group_bind names it in the table), and takes it from
 * its group's part of the total, min(sum(slot - base), sum(slot) - that
 * base), the figure C finds for .B, so that every group converges on one
 * value (reset.c, "A reset in another group of hubs", has the formula and
 * what concurrent resets in two groups take away). Like a device maximum,
 * a base heard from a GSUM is not announced again by the hub that heard
 * it; one a reset here raised is. A hub of version 1 sent none of this,
 * and its GSUMs are still read.
 *
 * Device maxima are not summed: a device that reports to an edge of one
 * group, then of another, has one maximum, so they travel whole, each
 * announced by the hubs that saw it rise (and not again by those that
 * learned it from a GSUM).
 *
 * ---- One hub speaks for its group ----
 *
 * Every hub of a group computes the same sums, so one of them sends them:
 * the first in order of node id that is alive. A hub keeps quiet while it
 * has heard a GSUM of its own group from a hub before it within quiet_ms
 * (three presence heartbeats, as a neighbour is no longer heard, repl.c);
 * the one that speaks sends one at least three times a quiet_ms (an empty
 * one when nothing rose), so the others keep quiet. When it stops (dead, or
 * cut off from them), the next one takes over after quiet_ms with a whole
 * refresh, since the last speaker may have died with sums unsent. Two
 * speaking at once (at start, or while a cut heals) cost bytes, never a
 * count: the sums are maxima. What a quiet hub's own clients and edges
 * change reaches the speaker in its SYNCs, one hop later.
 *
 * ---- GSUM ----
 *
 * $tally/v1/gsum/<node>, flooded by Mosquitto itself as PRESENCE is: a
 * hub that has not seen a message floods it on, one seen before is dropped,
 * so any topology of groups works, rings of bridges included.
 *     "TL", version 2, type 7, origin (str8), session (u64), seq (varint),
 *     group (str8), [version 3: region (str8)], counters (varint), each:
 *         name (str8), P, N, BP, BN (varints), flags (u8), then only what
 *         the flags say: [1] deleted, reset (varints),
 *         [2] group bases (varint), each: group (str8), BP, BN (varints),
 *         [4] devices (varint), each: id (str8), maximum, base (varints)
 * (version 1: no flags, and devices (varint), each: id, maximum). A record
 * whose lists pass max_message_bytes goes in parts, each with the whole
 * head. Most records are a counter's sums alone: a byte of flags, where
 * version 1 had four bytes of an empty device list.
 * The speaker sends our group's sums that rose, at most once a publish
 * interval (or a sums interval, plugin_opt_sums_interval_ms: plugin.c calls
 * group_announce no more often), and every counter again once ten refresh
 * intervals (sooner when called for, below, and a tenth of an interval
 * after the last began when a node is heard anew), in parts of
 * max_message_bytes.
 *
 * GWANT (type 9; RWANT, type 10, one level up), on the sender's own topic:
 *     "TL", version 3, type, origin (str8), session (u64), seq, group
 *     (str8), region (str8), target (str8), its session (u64), seqs
 *     (varint), each (varint, not 0).
 * An ask has seq 0 and names 1 to 63 seqs; a call for the target's
 * refresh is in its sender's stream (a seq) and names none.
 *
 * ---- The last sums again ----
 *
 * A GSUM lost on the way is healed by the next one of the same counter, so
 * under load a loss costs a publish interval; the last of a burst had none
 * after it, and waited for the refresh (now for an ask, below). A counter whose
 * sums were sent, then stayed still for a third of quiet_ms (a presence
 * heartbeat), is sent once more (echo_due): a counter that keeps rising is
 * never echoed, one that stops is echoed once. A sum crosses a few
 * bridges, each taking one copy since floods go on only where a neighbour
 * lacks them (repl.c, rule 2b), so a loss on the way is no longer made up
 * by the copies: in the simulator's 10,200 nodes in 10 regions at 2% loss,
 * totals were exact 11.3 s after the load before either change, and are
 * now about 6 s. An echo costs a record: a counter that rises once in a
 * while is sent twice each time (tests/bench's 900 slow counters, bench_tiers
 * --trios: the speaker's bytes out rose by half with two echoes). Two
 * echoes were tried: they cut a rare wait for the refresh (one seed of the
 * 5-region run, 10.4 s against 7.2 s) and cost a third record each rise.
 * Only its sums and stamps: a device maximum or a base lost at the end of
 * a burst waits for an ask. Asks came after echoes, and echoes still save
 * time: with echoes off (and the refresh always calm), the simulator's
 * runs at 2% loss were exact 3.4, 4.2 and 3.2 s after the load in 2
 * regions (no budget, a budget, 2,000 counters) against 2.8, 2.3 and 2.3
 * s with them, for 1% fewer bytes.
 *
 * Echoes go only where sums are lost: a hub that has seen a gap in another
 * hub's stream of sums at this level (a seq skipped, first_seen: `holes`)
 * within a refresh interval echoes; one that has not, does not. Bridges
 * are TCP: over them a message is lost only with the connection (a bridge
 * cut, a hub restarted), which loses both ways, so that the hubs on either
 * side see gaps in the streams that crossed it from the other. So over
 * healthy bridges nothing is echoed (on real brokers, bench_tiers --trios:
 * 0 echoes, and the speaker's bytes out fell from 18.0 to 12.4 KB/s),
 * while the simulator's random loss, which leaves gaps everywhere, keeps
 * them on. It is evidence of loss near us, not of our own sums: a loss on
 * a path only we send over, with none on the paths to us, waits for an
 * ask.
 *
 * ---- Sums lost on the way ----
 *
 * Every message of a stream of sums has the next seq, and a speaker sends
 * one at least a heartbeat (a keepalive when nothing else goes), so a hub
 * sees a message lost on the way as a gap in the stream a heartbeat later
 * at most. It waits a quarter heartbeat for the message on a longer path,
 * then asks its neighbours for the seqs it lacks (a GWANT: on the topic of
 * its own sums, so the bridges that carry sums carry asks), again each
 * heartbeat while it lacks them, GROUP_WANT_TRIES times at most. An ask is
 * for the neighbours alone: it has no seq (0) and is never flooded on.
 *
 * Every hub keeps the last GROUP_KEEP messages of each stream it saw (and
 * of its own), the window of seqs it reads them in, GROUP_KEEP_BYTES at
 * most. A neighbour asked for one it holds sends it again, the same bytes,
 * at most once a half heartbeat however many ask: the hubs that had it
 * drop it as seen, the asker takes it as new and floods it on, so one
 * answer heals every hub behind the link it was lost on. The speaker is
 * not asked: the hub next to the loss is, whichever hub of the path that
 * is. So every hub asks for gaps in every stream it sees, its own group's
 * too, which it takes nothing from but passes on to the other groups: in
 * the simulator, when the hubs of a group did not ask for their own
 * speaker's, a message lost on its way to the group's bridge out was lost
 * to the other groups until the refresh (2,040 nodes in 2 regions at 2%
 * loss: exact 81.3 s after the load, against 2.8 s).
 *
 * What asks cost is what is lost, not what is held: over TCP bridges,
 * which lose messages only with a connection, nothing in steady state. The
 * refresh (every counter again) costs counters x speakers whatever is
 * lost, and the budget does not bound it: with 2,000 counters and a budget
 * of 1,000, a hub of the simulator's 10,200 nodes in 10 regions carried
 * 1.47 times what one of 2,040 nodes in 2 regions does with no loss, 1.61
 * at 2% loss. So the refresh goes once GROUP_REFRESH_CALM refresh
 * intervals, and is called for where asks cannot heal: a stream first
 * heard past its window, or with a gap wider than it (a long cut), whose
 * earlier messages no neighbour holds; a gap asked for three times in vain
 * (asks or answers lost, a message too large to keep). The hub calls for
 * the speaker's refresh: a GWANT naming no seq, in its own stream, so
 * flooded as sums are, to the speaker wherever it is, at most once a
 * refresh interval a stream, and only of a stream that sent it sums. The
 * speaker refreshes a tenth of an interval after its last began, as for a
 * node heard anew (group_refresh_now). Two simpler rules were tried first:
 * the refresh ten times less often everywhere, without calls, left 700 of the
 * simulator's fault schedules (20% loss, hubs killed and restarted, links
 * cut) exact a mean of 12.6 s after the load and at most 94.2 s (a hub
 * that first heard a restarted speaker past its window waited for the
 * refresh); an interval apart wherever a gap had been seen within one, 6.8
 * s and 56.2 s, but as much refresh as before under loss. With calls:
 * 6.7 s and 42.4 s, against 10.3 s and 59.3 s before asks, and a
 * hub grows 1.30 times from 2,040 to 10,200 nodes with no loss and
 * 1.37 times at 2%, over the whole run; during the load alone, 1.12
 * times both (the rest is the budget's tail after the load, longer in
 * the larger tree: README, "Measured: edges and hubs").
 *
 * ---- What it costs ----
 *
 * A hub of g groups holds, per counter, its own group's slots and g - 1
 * more, and hears each group's sum from its speaker, once per bridge that
 * sends it on (a flood; a neighbour that every other one hears sends it on
 * only if it has a bridge out of the group, repl.c's rule 2b): state and
 * traffic grow with the number of groups, by one slot each, not with the
 * number of edges. What a group cannot survive: all its
 * hubs lost, which leaves its edges nowhere to go.
 *
 * ---- A budget of sums ----
 *
 * Every hub hears every stream of its level: s speakers, each sending what
 * rose of its unit's sums once a publish interval. Under load every hot
 * counter rises in every unit each interval, so a hub takes s records of
 * it an interval, and s grows with the tree (10,200 nodes in 10 regions:
 * 389 MB of RSUMs in 20 s, three quarters of what hubs sent each other).
 * The budget (plugin_opt_sums_budget, records a second, 1000 by default;
 * 0, the simulator's default, for none) bounds
 * what a hub takes of a level, whatever s: a speaker that hears s - 1
 * other speakers at its level (streams_heard: a GSUM or RSUM of another
 * unit new here within quiet_ms) sends at most budget / s records a second
 * of what rose and of echoes, saved up for at most a second. What waits
 * stays queued in the order it rose, once each however often it rises
 * meanwhile, and goes with its value as it is then: a sum is a maximum,
 * so a later one carries every earlier one, and nothing is lost or counted
 * twice by waiting. What it costs is time: the other units' view of our
 * part lags by what waits over our share. A speaker with a budget sends
 * what rose once its share covers it all, or a heartbeat's share: at most
 * a message a heartbeat when the budget binds, not a few records an
 * interval. With 1,000 a second, a hub of the simulator's 10,200 nodes in
 * 10 regions carries 138 KB/s, 1.12 times what one of 2,040 nodes in 2
 * regions does (324 and 2.24 times without), and totals are exact 4.3 s
 * after the load (README, "Measured: edges and hubs").
 *
 * ---- The refresh under a budget ----
 *
 * The refresh (every counter again, once GROUP_REFRESH_CALM intervals)
 * costs counters x speakers a pass, and speakers grow with the tree: at
 * once, a pass of 10,000 counters is 100,000 records at a hub that hears
 * ten region speakers, a hundred seconds of a budget of 1,000. Under a
 * budget, a pass (refresh_pace) takes what is left of our share once what
 * rose went, while nothing waits, and a tenth of our share's pace of its
 * own (GROUP_REFRESH_TRICKLE), so that it ends under a load that takes all
 * the rest: what rises keeps its share, and a hub takes at most 1.1 times
 * the budget of a level however many counters and speakers there are. A
 * pass goes in a message a heartbeat, or at once if that is all it has
 * left. Pacing was tried before asks, at half the share, and dropped: a
 * loss then waited for the refresh, 80.3 s after the load at 10,200
 * nodes, 2% loss. Now asks heal a loss within a heartbeat or two, and
 * what they cannot, a call: a pass for a node heard anew, a call, or a new
 * speaker taking over goes at once (refresh_urgent), as before, and a
 * paced pass under way is given up for it. In the simulator's 10,200
 * nodes in 10 regions, 10,000 counters, a budget of 1,000, 120 s of load:
 * RSUM bytes 415.8 -> 389.9 MB, a hub 115.9 -> 113.7 KB/s during the load,
 * totals exact 8.9 s after it either way; the 20 s runs hold no periodic
 * pass (it comes 100 s apart there) and are unchanged.
 *
 * ---- Regions: groups of groups ----
 *
 * The same again one level up (plugin_opt_region): a region is a few groups.
 * A hub of group A in region R holds A's nodes' slots, one slot per other
 * group of R, and one per other region, "..name": so per counter the groups
 * of its region and the regions, not every group. Each level is a struct
 * tally_group of its own (level 1, the group; level 2, the region), with its
 * speaker, its queue, its refresh and its origins; the code above serves
 * both. What differs:
 *   - A region's sum is its hubs' part of the total below the other
 *     regions: our group's sum and the other groups' slots (level_sum),
 *     monotone for the same reasons, a lower bound that only grows, exact
 *     once the region has converged; any hub of R may send it, and the first
 *     of R in order of node id that is alive does, as for a group.
 *   - Its base: our group's base, at least what resets elsewhere observed
 *     of it, and each other group's base, at most its slot, which is what
 *     the region takes from its part (reset.c, "A reset in another region").
 *   - RSUM ($tally/v1/rsum/<node>, type 8) carries it, in GSUM's format,
 *     and is flooded to every hub of every region. A GSUM of a hub in a
 *     region (version 3) names the region after the group, and a hub of
 *     another region (or in none) refuses it, does not flood it on, and
 *     counts it in `refused`: that group is in its region's sum there.
 *     Bridges between regions carry rsum/# (and rviews/#, stats), not gsum/#.
 *   - Group bases name the replica past one mark: "g2" a group's, ".r2" a
 *     region's (version 3). A GSUM carries both kinds (its region's hubs
 *     hold both), an RSUM only regions' (no other region holds a group's).
 * A region's sum rises when any of its groups' does, so an RSUM stream
 * carries more records than a GSUM stream; a hub hears (groups of its
 * region - 1) GSUM streams and (regions - 1) RSUM streams instead of
 * (groups - 1) GSUM streams. Every hub of a tree sets a region or none
 * does: a hub that held other groups' sums before regions would keep the
 * slots of another region's groups beside that region's sum, so one whose
 * state_dir holds counts made outside its region does not start (plugin.c's
 * scope_start).
 *
 * ---- Regions of regions ----
 *
 * A hub holds one slot per other region, which grows with the regions of
 * the tree (200 hubs in 10 regions: 1,700 slots a counter, against 900 for
 * 40 hubs in 2). So the same again, up to TALLY_LEVELS: plugin_opt_region
 * "r/z" puts region r in z, a unit of level 3, and "r/z/w" z in w, level
 * 4. A unit of level k is a struct tally_group of level k that names the
 * unit it is in (`up`), its replica k marks and its name; its sum is its
 * level-(k - 1) unit's part and the other level-(k - 1) units' slots of it
 * (level_sum, applied level by level from the group's), its base likewise.
 * Its sums are an RSUM naming its unit past k - 2 marks (a region's, none),
 * on $tally/v1/rsum<k>/ (plugin.c), and the unit it is in: a hub of
 * another unit of level k + 1 refuses it as a GSUM of another region is
 * refused, since that unit's sum counts it there. A message of level k
 * carries the bases of replicas of level k and up, named past one mark. A
 * hub then holds per counter its group's nodes, and at each level the
 * other units of its unit one level up, not every unit of that level: a
 * fan-out of f a level, g + (levels - 1) x (f - 1) slots, the logarithm of
 * the tree in base f. No fixed number of levels makes it flat; each level
 * costs a stream of sums that reaches every hub (README, "Regions of
 * regions", measured).
 *
 * ---- Light hubs ----
 *
 * A hub holds a slot per other unit at each level because it merges each
 * unit's sum by maximum: the sum of several units only grows, but two hubs'
 * figures of it cannot be merged without knowing its parts. One hub of the
 * group can know them for the others. A light hub (plugin_opt_hub light)
 * holds its group's nodes' slots and, per counter, one slot a level for
 * the rest of the tree: rest k, the sum of the other units' slots of level
 * k it would have held (the other groups of its region at level 1, the
 * other regions of its level-3 region at level 2, ...), a replica named
 * TALLY_LEVELS + 1 marks and k (REST_ID_LEN: no unit's name starts with a
 * mark, so none is one). Its base is the sum of each such slot's
 * min(slot, base): both sums only grow (a slot and its base each only
 * rise), so a rest slot and its base merge by maximum like any, and slot -
 * base is what the parts it sums are worth, sum(slot - min(slot, base)),
 * the very term table_sums takes for level k. A light hub's total is the
 * full hubs', part for part (reset.c's own-unit bases included, which it
 * holds: they are our units' replicas, not another's).
 *
 * Our group's speaker, a full hub (plugin_opt_hub full: light hubs never
 * speak), writes its rest slots (group_rest) as it notes a counter that
 * changed, and every counter's as it takes over (took_over: the last
 * speaker may have died with some unsent); they reach the group in its
 * SYNCs, as the slots of any node, and a full hub counts none of them
 * (table_raw, table_sums), holding what they sum. A light hub takes no slot
 * of another unit, from a GSUM, a SYNC, a repair or its state_dir (table.c:
 * table_foreign), and the digests of a group with light hubs (t->lean)
 * leave those slots out, so that a full hub's and a light hub's agree. The
 * bases of other units' replicas, which only a reset makes, a light hub
 * holds and the digests count: left out, one a SYNC lost on its way to a
 * full hub was lost to it for good, since a light hub relays the rest
 * slot's base without it and the digests then agreed (tests/sim/run.sh,
 * seed 26 of the light mix). A reset observes the parts of every slot it
 * takes from, which a rest slot hides, so a light hub passes resetCounter
 * and deleteCounter (its clients', its edges') to our group's speaker, the
 * hub it last heard speak (gr->speaker), and relays the answer, as an edge
 * passes its requests to its hub (plugin.c, control_forward; control.c
 * refuses one that would run at a light hub); and a reset at a full hub
 * leaves the rest slots' bases to the speaker's sums.
 *
 * So a light hub holds g + levels slots a counter, whatever the number of
 * units at each level, and levels is at most TALLY_LEVELS: 600 slots for
 * 100 counters at 2,040 nodes in two levels, 700 at 10,200 in three, where
 * a full hub holds 1,100 and 1,600 (README, "Light hubs", measured). A full
 * hub still holds every other unit of each level: split hubs, below, hold
 * one level each.
 *
 * ---- Split hubs ----
 *
 * Rest slot k needs a hub that holds the other units of level k; it need
 * not be the same hub for every level. In a group of split hubs
 * (plugin_opt_hub split on each), every hub counts as a light hub does (its
 * group's nodes' slots and the rest slots: table_counts), and the levels
 * are given out among the hubs alive (group_holds): of the n we hear, in
 * order of node id, the i-th (from 0) holds each level k with (k - 1) mod
 * n = i. A
 * hub holds the other units' slots of its levels alone (table_unheld) and
 * keeps their rest slots (group_rest); with as many hubs as levels, each
 * holds g + levels slots a counter and one level's units: 1,000 slots for
 * 100 counters at most at 2,040 nodes, 1,100 at 10,200 (README, "Split
 * hubs"). Any split hub may speak: a unit's sum is our group's part and the
 * rest slots below its level (level_sum), which every hub holds.
 *
 * Who is alive: the neighbours repl.c hears (a DIGEST a heartbeat; one
 * unheard for three is not), a group being a mesh of bridges. Two hubs may
 * see different sets a while (a hub dies, a link is cut): a level held by
 * two costs bytes, never a count, since both write maxima of what each
 * holds; a level held by none leaves its rest slot where it was until the
 * sets agree again, a quiet time later. A hub that comes to hold a level
 * calls for the refresh of every stream of it (group_split_levels), so that it
 * holds what the last holder did, and keeps every counter's rest slots as
 * it takes what comes; until it holds as much as a rest slot sums, what it
 * writes is below it, and the maximum keeps the rest slot where it is. A
 * level's unit heard from no stream any more (every hub of it lost for
 * good, which its edges do not survive either) is not learned again by a
 * new holder: the rest slot keeps its last sum only while it is above what
 * the new holder sums, and then leaves it out, where a full hub keeps it
 * for good. A hub that
 * no longer holds a level drops its units' slots (group_drop_level); those
 * it holds it never sends in SYNCs (REPL_NONE): a holder takes them from
 * the streams. A hub starts holding none (the other units' slots in its
 * state_dir are not taken), and takes its levels once it had time to hear
 * its group (two quiet times).
 *
 * A reset at a split hub observes what it counts: its group's nodes' slots,
 * and the rest slots, whose bases it sets to them, so that its totals
 * show the reset at once. The parts of a rest slot it cannot name: it puts
 * the same value on the level's request replica (REST_REQUEST), a base
 * with no slot that only resets raise and that SYNCs carry through the
 * group. The level's holder (rest_part) puts bases on the level's units'
 * slots that take that much away, slot by slot, each base at most its slot,
 * once it holds at least what the request names. So the reset takes away
 * exactly what its hub counted, as anywhere; the units' parts of it are the
 * holder's (what it held of each), not necessarily what each unit had at
 * the reset, and those bases go to the other units in our GSUMs as any
 * reset's. Their sum is the request, so every hub's total is the same; two
 * resets made at once in two units take away at least the larger of the
 * two parts they saw of a unit, and never more than its slot. A holder
 * that has not heard the level's streams yet waits; two holders at once
 * (the sets disagree) may each put the request on other units, so the
 * reset can take away, at most, what the two held between them of a unit
 * made after it (each puts its bases in order of the units' names, so two
 * that hold the same put the same).
 */
#include <stdlib.h>
#include <string.h>

#include "persist.h"
#include "tally.h"

void group_init(struct tally_group *gr, const char *name, uint64_t session, uint64_t refresh_ms)
{
    memset(gr, 0, sizeof(*gr));
    gr->len = name ? strlen(name) : 0;
    if (gr->len > GROUP_NAME_MAX)
        gr->len = GROUP_NAME_MAX;
    memcpy(gr->name, name ? name : "", gr->len);
    gr->queue_tail = &gr->queue;
    gr->echo_tail = &gr->echo;
    gr->session = session;
    gr->refresh_ms = refresh_ms;
    gr->quiet_ms = 3000;
    gr->level = 1;
}

void group_scope(struct tally_group *gr, int level, const char *up)
{
    gr->level = level;
    gr->up_len = up ? strlen(up) : 0;
    if (gr->up_len > GROUP_NAME_MAX)
        gr->up_len = GROUP_NAME_MAX;
    memcpy(gr->up, up ? up : "", gr->up_len);
    gr->up[gr->up_len] = '\0';
}

int unit_name_check(int level, const char *name, size_t len)
{
    if (level < 1 || level > TALLY_LEVELS || len + (size_t)level > TALLY_NODE_ID_MAX)
        return TALLY_E_NAME_TOO_LONG;
    return len && name[0] == GROUP_MARK ? TALLY_E_NAME_CHAR : node_id_check(name, len);
}

int group_name_check(const char *name, size_t len)
{
    return unit_name_check(1, name, len);
}

int region_path(const char *path, size_t plen, char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1])
{
    int n = 0;
    for (const char *at = path, *stop = path + plen; at < stop; n++) {
        const char *end = memchr(at, '/', (size_t)(stop - at));
        size_t len = end ? (size_t)(end - at) : (size_t)(stop - at);
        if (n == TALLY_LEVELS - 1 || unit_name_check(n + 2, at, len) != TALLY_OK || !len)
            return -1;
        memcpy(names[n], at, len);
        names[n][len] = '\0';
        at += len + (end ? 1 : 0);
        if (end && at == stop)
            return -1; /* a trailing '/' */
    }
    return n;
}

uint64_t group_sums_budget(long long option, int levels)
{
    if (option > 0)
        return (uint64_t)option;
    return levels <= 2 ? 1000 : (2000 + (uint64_t)levels / 2) / (uint64_t)levels;
}

int unit_marks(const char *id, size_t len)
{
    int k = 0;
    while (k < TALLY_LEVELS && (size_t)k < len && id[k] == GROUP_MARK)
        k++;
    return k;
}

/* The replica standing for `name` in t: `marks` marks (1: a group, 2: a
 * region, and so on up) and the name, one life. */
static int replica_of(struct tally_table *t, const char *name, size_t len, int marks,
                      uint32_t *replica)
{
    char id[TALLY_NODE_ID_MAX + 1];
    if (len + (size_t)marks > TALLY_NODE_ID_MAX)
        return TALLY_E_NAME_TOO_LONG;
    memset(id, GROUP_MARK, (size_t)marks);
    memcpy(id + marks, name, len);
    return table_replica(t, id, len + (size_t)marks, GROUP_INCARNATION, replica);
}

int group_bind(const struct tally_group *gr, struct tally_table *t)
{
    if (!group_on(gr))
        return TALLY_OK;
    int rc = replica_of(t, gr->name, gr->len, gr->level, &t->unit[gr->level]);
    t->has_unit[gr->level] = rc == TALLY_OK;
    return rc;
}

static void ring_free(struct group_ring *ring)
{
    for (size_t i = 0; i < GROUP_KEEP; i++)
        free(ring->k[i].data);
    memset(ring, 0, sizeof(*ring));
}

void group_free(struct tally_group *gr)
{
    struct group_entry *e, *etmp;
    HASH_ITER(hh, gr->entries, e, etmp)
    {
        HASH_DEL(gr->entries, e);
        free(e->devs);
        free(e->bases);
        free(e);
    }
    struct group_origin *o, *otmp;
    HASH_ITER(hh, gr->origins, o, otmp)
    {
        HASH_DEL(gr->origins, o);
        ring_free(&o->ring);
        free(o);
    }
    ring_free(&gr->ring);
    gr->queue = gr->echo = NULL;
    gr->queue_tail = &gr->queue;
    gr->echo_tail = &gr->echo;
    gr->cursor = NULL;
}

bool group_replica(const struct tally_table *t, uint32_t replica)
{
    return replica < t->nreplicas && t->replicas[replica]->key[0] == GROUP_MARK;
}

int group_level(const struct tally_table *t, uint32_t replica)
{
    if (replica >= t->nreplicas)
        return 0;
    const struct tally_replica *r = t->replicas[replica];
    return r->rest ? r->rest : unit_marks(r->key, r->id_len);
}

static uint64_t minus(uint64_t v, uint64_t by)
{
    return v > by ? v - by : 0;
}

/* a + b, at most 2^53 - 1: a GSUM carries no larger value (a sum of many
 * slots could pass it, and one such record would have the whole message
 * refused), as a total shows none (clamp_safe) */
static void add_safe(uint64_t *a, uint64_t b)
{
    *a = b >= (uint64_t)TALLY_MAX_SAFE - *a ? (uint64_t)TALLY_MAX_SAFE : *a + b;
}

void group_sum(const struct tally_table *t, const struct tally_counter *c, uint64_t *p, uint64_t *n,
               uint64_t *bp, uint64_t *bn)
{
    const struct tally_base *b = table_base(t, c);
    *p = *n = *bp = *bn = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot *s = &c->slots[i];
        if (group_replica(t, s->replica))
            continue;
        const struct tally_fold *f = c->folded ? table_fold(t, c, s->replica) : NULL;
        uint64_t fp = f ? f->p : 0, fn = f ? f->n : 0, sp = 0, sn = 0;
        add_safe(p, minus(s->p, fp));
        add_safe(n, minus(s->n, fn));
        if (b) {
            base_slot(b, s->replica, &sp, &sn);
            add_safe(bp, minus(sp, fp));
            add_safe(bn, minus(sn, fn));
        }
    }
}

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Our level-k unit's part of c from our level-(k - 1) unit's (p, n, bp,
 * bn): that part, its base at least what resets in other units observed of
 * it (t->unit[k - 1]), and the slot of each other level-(k - 1) unit of
 * ours, its base at most its slot: what every hub of our level-k unit
 * finds once it has converged, whichever unit below it is in (reset.c, "A
 * reset in another region"). Level 2, a region: our group's part and the
 * other groups' slots. */
static void level_sum(const struct tally_table *t, const struct tally_counter *c, int k,
                      uint64_t *p, uint64_t *n, uint64_t *bp, uint64_t *bn)
{
    const struct tally_base *b = table_base(t, c);
    uint64_t sp = 0, sn = 0;
    if (b && t->has_unit[k - 1]) {
        base_slot(b, t->unit[k - 1], &sp, &sn);
        *bp = max64(*bp, sp);
        *bn = max64(*bn, sn);
    }
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot *s = &c->slots[i];
        if (group_level(t, s->replica) != k - 1 || !table_counts(t, s->replica))
            continue; /* at a light or split hub, the rest slot of level k - 1 */
        add_safe(p, s->p);
        add_safe(n, s->n);
        if (b) {
            base_slot(b, s->replica, &sp, &sn);
            add_safe(bp, min64(sp, s->p));
            add_safe(bn, min64(sn, s->n));
        }
    }
}

/* The level of replica if it is another unit's (table_foreign), else 0. */
static int foreign_level(const struct tally_table *t, uint32_t replica)
{
    return table_foreign(t, replica) ? group_level(t, replica) : 0;
}

/* A slot by its replica's name. */
struct named {
    const char *name;
    uint32_t slot;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct named *)a)->name, ((const struct named *)b)->name);
}

/* A reset's part at level k, at a split hub that holds it (group.c, "Split
 * hubs"): a reset at a hub of our group put on the level's request replica
 * the rest slot it observed; we put bases on the level's slots that take
 * that much away (sum: their slots' sums and their min(slot, base)'s),
 * slot by slot, each at most its slot, once we hold that much (a holder
 * that has not heard the level's streams yet waits for them). *took: a
 * base rose. */
static int rest_part(struct tally_table *t, struct persist *ps, struct tally_counter *c, int k,
                     const uint64_t sum[4], bool *took)
{
    const struct tally_base *b = table_base(t, c);
    uint32_t q;
    uint64_t want[2] = {0, 0};
    *took = false;
    if (!b || table_rest_replica(t, k, true, &q) != TALLY_OK)
        return b ? TALLY_E_NOMEM : TALLY_OK;
    base_slot(b, q, &want[0], &want[1]);
    if (sum[0] < want[0] || sum[1] < want[1] || (want[0] <= sum[2] && want[1] <= sum[3]))
        return TALLY_OK;
    uint64_t owe[2] = {minus(want[0], sum[2]), minus(want[1], sum[3])};
    /* in order of name, so that two holders that hold the same put the same */
    struct named *order = malloc(c->nslots * sizeof(*order));
    uint32_t n = 0;
    if (!order)
        return TALLY_E_NOMEM;
    for (uint32_t i = 0; i < c->nslots; i++)
        if (foreign_level(t, c->slots[i].replica) == k)
            order[n++] = (struct named){t->replicas[c->slots[i].replica]->key, i};
    qsort(order, n, sizeof(*order), by_name);
    int rc = TALLY_OK;
    for (uint32_t o = 0; o < n && (owe[0] || owe[1]) && rc == TALLY_OK; o++) {
        const struct tally_slot *s = &c->slots[order[o].slot];
        uint64_t bp = 0, bn = 0;
        base_slot(table_base(t, c), s->replica, &bp, &bn);
        uint64_t has[2] = {min64(bp, s->p), min64(bn, s->n)}, to[2];
        const uint64_t slot[2] = {s->p, s->n};
        for (int j = 0; j < 2; j++) {
            uint64_t take = min64(owe[j], slot[j] - has[j]);
            to[j] = has[j] + take;
            owe[j] -= take;
        }
        bool rose = false;
        rc = table_merge_base_slot(t, c, s->replica, to[0], to[1], &rose);
        *took = *took || rose;
    }
    free(order);
    if (rc != TALLY_OK)
        return rc;
    if (*took && ps)
        persist_base(ps, t, c);
    return TALLY_OK;
}

/* Per level k, the sums of the other units' slots we hold and of their
 * min(slot, base) (the rest slot of level k and its base). */
static void rest_sums(const struct tally_table *t, const struct tally_counter *c,
                      uint64_t sum[TALLY_LEVELS + 1][4])
{
    const struct tally_base *b = table_base(t, c);
    memset(sum, 0, sizeof(uint64_t[TALLY_LEVELS + 1][4]));
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot *s = &c->slots[i];
        int k = foreign_level(t, s->replica);
        if (!k || table_unheld(t, s->replica))
            continue;
        uint64_t sp = 0, sn = 0;
        base_slot(b, s->replica, &sp, &sn);
        add_safe(&sum[k][0], s->p);
        add_safe(&sum[k][1], s->n);
        add_safe(&sum[k][2], min64(sp, s->p));
        add_safe(&sum[k][3], min64(sn, s->n));
    }
}

int group_rest(struct tally_table *t, struct persist *ps, struct tally_counter *c)
{
    if (t->light || !t->lean || (t->split && !t->holds))
        return TALLY_OK;
    uint64_t sum[TALLY_LEVELS + 1][4];
    rest_sums(t, c, sum);
    bool took = false;
    for (int k = 1; k <= TALLY_LEVELS && t->split; k++) {
        bool part = false;
        int rc = sum[k][0] || sum[k][1] ? rest_part(t, ps, c, k, sum[k], &part) : TALLY_OK;
        if (rc != TALLY_OK)
            return rc;
        took = took || part;
    }
    if (took)
        rest_sums(t, c, sum); /* with the bases the parts put */
    for (int k = 1; k <= TALLY_LEVELS; k++) {
        if (!sum[k][0] && !sum[k][1])
            continue; /* no slot of that level (a base is at most its slot) */
        uint32_t r;
        bool changed;
        int rc = table_rest_replica(t, k, false, &r);
        if (rc == TALLY_OK)
            rc = table_merge_slot(t, c, r, sum[k][0], sum[k][1], &changed);
        if (rc == TALLY_OK)
            rc = table_merge_base_slot(t, c, r, sum[k][2], sum[k][3], &changed);
        if (rc != TALLY_OK)
            return rc;
    }
    return TALLY_OK;
}

uint8_t group_holds(const char *self, const char *const *ids, uint32_t n, int levels)
{
    uint32_t rank = 0, hubs = 1;
    for (uint32_t i = 0; i < n; i++) {
        int order = strcmp(ids[i], self);
        bool again = false; /* heard over two bridges: one hub */
        for (uint32_t j = 0; j < i && !again; j++)
            again = strcmp(ids[j], ids[i]) == 0;
        if (order == 0 || again)
            continue;
        hubs++;
        rank += order < 0;
    }
    uint8_t holds = 0;
    for (int k = 1; k <= levels && k <= TALLY_LEVELS; k++)
        if ((uint32_t)(k - 1) % hubs == rank)
            holds |= (uint8_t)(1u << k);
    return holds;
}

/* Calls for the refresh of every stream of another unit heard within
 * quiet_ms (a split hub that came to hold the level). */
static void call_all(struct tally_group *gr)
{
    for (struct group_origin *o = gr->origins; o; o = o->hh.next)
        if (o->other && o->speaks && gr->clock_ms - o->heard_ms <= gr->quiet_ms)
            o->call = true;
}

bool group_split_levels(struct tally_table *t, struct tally_group *const units[TALLY_LEVELS],
                        const char *self, const char *const *alive, uint32_t n)
{
    int levels = 0;
    while (levels < TALLY_LEVELS && group_on(units[levels]))
        levels++;
    uint8_t holds = group_holds(self, alive, n, levels);
    uint8_t gained = holds & (uint8_t)~t->holds, lost = t->holds & (uint8_t)~holds;
    t->holds = holds;
    for (int k = 1; k <= levels; k++) {
        if (gained & (1u << k))
            call_all(units[k - 1]);
        if (lost & (1u << k))
            group_drop_level(t, k);
    }
    return gained != 0;
}

void group_drop_level(struct tally_table *t, int k)
{
    for (struct tally_counter *c = t->counters; c; c = c->hh.next)
        for (uint32_t i = c->nslots; i-- > 0;)
            if (foreign_level(t, c->slots[i].replica) == k)
                table_drop_slot(t, c, c->slots[i].replica);
}

/* The sums our GSUMs (level 1) or RSUMs (level 2 and up) carry. */
static void unit_sum(const struct tally_group *gr, const struct tally_table *t,
                     const struct tally_counter *c, uint64_t *p, uint64_t *n, uint64_t *bp,
                     uint64_t *bn)
{
    group_sum(t, c, p, n, bp, bn);
    for (int k = 2; k <= gr->level; k++)
        level_sum(t, c, k, p, n, bp, bn);
}

static struct group_entry *entry_get(struct tally_group *gr, const char *name, size_t len,
                                     bool create)
{
    struct group_entry *e;
    HASH_FIND(hh, gr->entries, name, len, e);
    if (e || !create)
        return e;
    e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    memcpy(e->name, name, len);
    e->name_len = (uint8_t)len;
    HASH_ADD(hh, gr->entries, name, len, e);
    return e;
}

static void enqueue(struct tally_group *gr, struct group_entry *e)
{
    if (e->queued)
        return;
    e->queued = true;
    gr->queued++;
    e->next = NULL;
    *gr->queue_tail = e;
    gr->queue_tail = &e->next;
}

/* The entry's maximum of device dev, made when absent; NULL out of memory. */
static struct group_dev *entry_dev(struct group_entry *e, uint32_t dev)
{
    return sorted_entry((void **)&e->devs, &e->ndevs, sizeof(*e->devs), dev, true);
}

/* The same for the base of a group's replica. */
static struct group_base *entry_base(struct group_entry *e, uint32_t replica)
{
    return sorted_entry((void **)&e->bases, &e->nbases, sizeof(*e->bases), replica, true);
}

/* What a reset here put on c that our GSUMs carry besides our group's sums:
 * the stamps, the bases of group replicas, the bases of devices. True when
 * one rose; -1 out of memory. */
static int note_resets(const struct tally_group *gr, struct group_entry *e,
                       const struct tally_table *t, const struct tally_base *b)
{
    bool rose = false;
    if (!b)
        return 0;
    if (b->deleted > e->deleted || b->reset > e->reset) {
        e->deleted = max64(e->deleted, b->deleted);
        e->reset = max64(e->reset, b->reset);
        e->stamps_owed = rose = true;
    }
    for (uint32_t i = 0; i < b->nslots; i++) {
        const struct tally_base_slot *s = &b->slots[i];
        /* a group's: those of our region's hubs hold it; a region's: all;
         * a rest slot's never leaves our group (SYNC carries it) */
        if (group_level(t, s->replica) < gr->level || t->replicas[s->replica]->rest)
            continue;
        struct group_base *gb = entry_base(e, s->replica);
        if (!gb)
            return -1;
        if (s->p > gb->p || s->n > gb->n) {
            gb->p = max64(gb->p, s->p);
            gb->n = max64(gb->n, s->n);
            gb->owed = rose = true;
            gb->heard = false;
        }
    }
    for (uint32_t i = 0; i < b->ndevs; i++) {
        struct group_dev *d = entry_dev(e, b->devs[i].device);
        if (!d)
            return -1;
        if (b->devs[i].total > d->base) {
            d->base = b->devs[i].total;
            d->owed = rose = true;
            d->heard = false;
        }
    }
    return rose;
}

int group_note(struct tally_group *gr, const struct tally_table *t, const struct tally_counter *c)
{
    struct group_entry *e = entry_get(gr, c->name, c->name_len, true);
    if (!e)
        return TALLY_E_NOMEM;
    uint64_t p, n, bp, bn;
    unit_sum(gr, t, c, &p, &n, &bp, &bn);
    bool rose = p > e->p || n > e->n || bp > e->bp || bn > e->bn;
    /* what was sent stays sent (a fold that moves a base may lower the base
     * sum for a moment, fold.c); the receivers keep maxima anyway */
    e->p = p > e->p ? p : e->p;
    e->n = n > e->n ? n : e->n;
    e->bp = bp > e->bp ? bp : e->bp;
    e->bn = bn > e->bn ? bn : e->bn;
    for (uint32_t i = 0; !e->ours && i < c->nslots; i++)
        e->ours = group_level(t, c->slots[i].replica) < gr->level;
    if (e->ours && !e->noted) /* a counter made here with nothing in it yet is news too */
        rose = true;
    e->noted = e->ours;
    const struct tally_dev *dv = counter_devs(c);
    for (uint32_t i = 0; i < counter_ndevs(c); i++) {
        struct group_dev *d = entry_dev(e, dv[i].device);
        if (!d)
            return TALLY_E_NOMEM;
        if (dv[i].total > d->total) {
            d->total = dv[i].total;
            d->owed = rose = true;
            d->heard = false;
        }
    }
    int reset = note_resets(gr, e, t, table_base(t, c));
    if (reset < 0)
        return TALLY_E_NOMEM;
    if (reset || rose)
        enqueue(gr, e);
    return TALLY_OK;
}

/* ==== Writing ==== */

struct gsum_out {
    struct tally_group *gr;
    const struct tally_table *t;
    const char *self;
    size_t max_bytes;
    struct wire_buf *b;
    size_t count_at; /* where the message's count of counters is: a fixed 4-byte varint */
    uint32_t counters, messages;
    void (*emit)(const struct wire_buf *msg, void *ud);
    void *ud;
};

/* A varint in exactly 4 bytes (up to 2^28), so that it can be written last. */
static void put_varint4(uint8_t *at, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 7)
        at[i] = (uint8_t)((v & 0x7f) | (i < 3 ? 0x80 : 0));
}

/* A message's head, up to what its type carries: sums take our stream's
 * next seq once they go, an ask none (0). Sums in no region are version 2,
 * as before regions; an ask is always version 3. An RSUM of level k names
 * its unit with k - 2 marks before the name (a region's, none). */
static void head(struct wire_buf *b, const struct tally_group *gr, const char *self, bool want,
                 uint64_t seq)
{
    bool up = gr->level >= 2, v3 = want || up || gr->up_len;
    uint8_t type = up ? (want ? WIRE_RWANT : WIRE_RSUM) : (want ? WIRE_GWANT : WIRE_GSUM);
    const uint8_t h[4] = {'T', 'L', v3 ? WIRE_GSUM_VERSION : 2, type};
    char name[TALLY_NODE_ID_MAX + 1];
    size_t marks = up ? (size_t)gr->level - 2 : 0;
    memset(name, GROUP_MARK, marks);
    memcpy(name + marks, gr->name, gr->len);
    wbuf_reset(b);
    wbuf_bytes(b, h, sizeof(h));
    wbuf_str8(b, self, strlen(self));
    wbuf_u64(b, gr->session);
    wbuf_varint(b, seq);
    wbuf_str8(b, name, marks + gr->len);
    if (v3)
        wbuf_str8(b, gr->up, gr->up_len);
}

static void begin(struct gsum_out *o)
{
    head(o->b, o->gr, o->self, false, o->gr->seq + 1);
    o->count_at = o->b->len;
    wbuf_bytes(o->b, "\0\0\0\0", 4);
    o->counters = 0;
}

/* Keeps message `seq` of a stream for a neighbour that lacks it, in place
 * of the one GROUP_KEEP before; not past GROUP_KEEP_BYTES (the refresh
 * heals what a hub lacks of one not kept). */
static void keep(struct group_ring *ring, uint64_t seq, const void *data, size_t len)
{
    struct group_kept *k = &ring->k[seq % GROUP_KEEP];
    ring->bytes -= k->len;
    k->len = k->due = 0;
    if (ring->bytes + len > GROUP_KEEP_BYTES)
        return;
    if (k->cap < len) {
        uint8_t *grown = realloc(k->data, len);
        if (!grown)
            return;
        k->data = grown;
        k->cap = len;
    }
    memcpy(k->data, data, len);
    k->len = len;
    k->seq = seq;
    k->resent_ms = 0;
    ring->bytes += len;
}

/* Message `seq` of a stream, if kept. */
static struct group_kept *kept(struct group_ring *ring, uint64_t seq)
{
    struct group_kept *k = &ring->k[seq % GROUP_KEEP];
    return k->len && k->seq == seq ? k : NULL;
}

/* Sends the message in b as our stream's next, and keeps it. */
static void go(struct tally_group *gr, struct wire_buf *b,
               void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    gr->seq++;
    emit(b, ud);
    keep(&gr->ring, gr->seq, b->data, b->len);
}

/* Sends the message under way, if it holds a counter (or `empty`: a
 * keepalive of the group's announcer), and begins the next. */
static void send_out(struct gsum_out *o, bool empty)
{
    if ((!o->counters && !empty) || o->b->failed)
        return;
    put_varint4(o->b->data + o->count_at, o->counters);
    go(o->gr, o->b, o->emit, o->ud);
    o->messages++;
    begin(o);
}

static void flush(struct gsum_out *o)
{
    send_out(o, false);
}

/* What follows a record's sums (version 2 on): each only when it has something. */
#define REC_STAMPS 1  /* deleted, reset */
#define REC_BASES 2   /* group bases: a count (4 bytes), then each */
#define REC_DEVICES 4 /* device maxima and their bases: a count (4 bytes), then each */

/* The most one counter record can take before its lists. */
static size_t head_bytes(const struct group_entry *e)
{
    return 1 + e->name_len + 4 * 10 + 1 + 2 * 10 + 2 * 4;
}

/* A device maximum or group base a record carries: one that rose here, or
 * with `all` (the refresh) every one that rose here once, not those heard
 * from the flood. */
static bool carried(bool owed, bool heard, bool all)
{
    return owed || (all && !heard);
}

/* The first group base, or device, at or after k that a record carries. */
static uint32_t next_base(const struct group_entry *e, uint32_t k, bool all)
{
    while (k < e->nbases && !carried(e->bases[k].owed, e->bases[k].heard, all))
        k++;
    return k;
}

static uint32_t next_dev(const struct group_entry *e, uint32_t i, bool all)
{
    while (i < e->ndevs && !carried(e->devs[i].owed, e->devs[i].heard, all))
        i++;
    return i;
}

/* Whether e goes at all: the refresh leaves out a counter our group holds
 * no slot of, and no device or reset of: another group's alone. */
static bool goes(const struct group_entry *e, bool all)
{
    return e->ours || e->stamps_owed || next_base(e, 0, all) < e->nbases ||
           next_dev(e, 0, all) < e->ndevs;
}

/* Whether an item of `bytes` fits in the part under way: the first item of
 * a message always does (max_message_bytes is at least 4096). */
static bool fits(const struct gsum_out *o, size_t bytes, bool first)
{
    return o->b->len + bytes <= o->max_bytes || (first && !o->counters);
}

/* Writes e: its sums and flags, its stamps, then the group bases and the
 * device maxima carried, over as many messages as they need, the head
 * again in each. A part that could take none of the items left starts over
 * in the next message. */
static void put_entry(struct gsum_out *o, struct group_entry *e, bool all)
{
    if (!goes(e, all))
        return;
    e->stamps_owed = false;
    uint32_t k = next_base(e, 0, all), i = next_dev(e, 0, all);
    do {
        if (o->b->len + head_bytes(e) > o->max_bytes)
            flush(o);
        struct wire_buf *b = o->b;
        size_t start = b->len;
        wbuf_str8(b, e->name, e->name_len);
        wbuf_varint(b, e->p);
        wbuf_varint(b, e->n);
        wbuf_varint(b, e->bp);
        wbuf_varint(b, e->bn);
        size_t flags_at = b->len;
        uint8_t flags =
            (uint8_t)((e->deleted || e->reset ? REC_STAMPS : 0) | (k < e->nbases ? REC_BASES : 0) |
                      (i < e->ndevs ? REC_DEVICES : 0));
        wbuf_u8(b, flags);
        if (flags & REC_STAMPS) {
            wbuf_varint(b, e->deleted);
            wbuf_varint(b, e->reset);
        }
        size_t nbases_at = b->len, ndevs_at;
        uint32_t nb = 0, nd = 0;
        bool full = false;
        if (flags & REC_BASES)
            wbuf_bytes(b, "\0\0\0\0", 4);
        for (; (flags & REC_BASES) && k < e->nbases; k = next_base(e, k + 1, all)) {
            struct group_base *gb = &e->bases[k];
            const struct tally_replica *r = o->t->replicas[gb->replica];
            const char *id = r->key + 1; /* past one mark: a region's keeps one */
            size_t idlen = r->id_len - 1u;
            if ((full = !fits(o, 1 + idlen + 20, !nb)))
                break;
            wbuf_str8(b, id, idlen);
            wbuf_varint(b, gb->p);
            wbuf_varint(b, gb->n);
            gb->owed = false;
            nb++;
        }
        ndevs_at = b->len;
        if (flags & REC_DEVICES)
            wbuf_bytes(b, "\0\0\0\0", 4);
        for (; (flags & REC_DEVICES) && !full && i < e->ndevs; i = next_dev(e, i + 1, all)) {
            struct group_dev *d = &e->devs[i];
            const struct tally_device *dev = o->t->devices[d->device];
            size_t idlen = strlen(dev->id);
            if ((full = !fits(o, 1 + idlen + 20, !nb && !nd)))
                break;
            wbuf_str8(b, dev->id, idlen);
            wbuf_varint(b, d->total);
            wbuf_varint(b, d->base);
            d->owed = false;
            nd++;
        }
        if (full && !nb && !nd) {
            b->len = start;
            flush(o);
            continue;
        }
        if ((flags & REC_DEVICES) && !nd) { /* the bases filled the part: none here */
            b->len = ndevs_at;
            flags &= (uint8_t)~REC_DEVICES;
        }
        if (!b->failed) {
            b->data[flags_at] = flags;
            if (flags & REC_BASES)
                put_varint4(b->data + nbases_at, nb);
            if (flags & REC_DEVICES)
                put_varint4(b->data + ndevs_at, nd);
        }
        o->counters++;
        o->gr->announced++;
    } while ((k < e->nbases || i < e->ndevs) && !o->b->failed);
}

/* Sums are lost on the way here: a gap in another hub's stream within a
 * refresh interval (above). */
static bool lossy(const struct tally_group *gr, uint64_t now_ms)
{
    return gr->holes && now_ms < gr->hole_ms + gr->refresh_ms;
}

/* The last sums again (above). e's sums went now, from the queue: echoed
 * once it has been still for an echo interval, where sums are lost. */
static void echo_later(struct tally_group *gr, struct group_entry *e, uint64_t now_ms)
{
    e->sent_ms = now_ms;
    if (e->echo_queued || !lossy(gr, now_ms))
        return;
    e->echo_queued = true;
    e->echo_ms = now_ms;
    e->echo_next = NULL;
    *gr->echo_tail = e;
    gr->echo_tail = &e->echo_next;
}

static void echo_drop(struct tally_group *gr)
{
    for (struct group_entry *e; (e = gr->echo); gr->echo = e->echo_next)
        e->echo_queued = false;
    gr->echo_tail = &gr->echo;
}

/* Writes the echoes due, at most `left`: of the entries that went an echo
 * interval ago and not since; one that went since waits an interval from
 * then. Returns how many went. */
static uint64_t echo_due(struct gsum_out *o, uint64_t now_ms, uint64_t left)
{
    struct tally_group *gr = o->gr;
    uint64_t every = group_heartbeat_ms(gr), went = 0;
    for (struct group_entry *e; went < left && (e = gr->echo) && e->echo_ms + every <= now_ms;) {
        gr->echo = e->echo_next;
        if (!gr->echo)
            gr->echo_tail = &gr->echo;
        e->echo_queued = false;
        if (e->sent_ms > e->echo_ms && e->sent_ms + every > now_ms) {
            echo_later(gr, e, e->sent_ms); /* went again since: still moving */
            continue;
        }
        put_entry(o, e, false);
        gr->echoed++;
        went++;
    }
    return went;
}

/* The streams of sums of other units taken here within quiet_ms: the
 * speakers that share each hub's budget with us. */
static uint64_t streams_heard(const struct tally_group *gr, uint64_t now_ms)
{
    uint64_t n = 0;
    for (const struct group_origin *o = gr->origins; o; o = o->hh.next)
        n += o->other && o->heard_ms + gr->quiet_ms > now_ms;
    return n;
}

/* A heartbeat's worth of a paced refresh's own pace (a tenth of the share's). */
static uint64_t refresh_batch(const struct tally_group *gr)
{
    return max64(gr->share_batch / GROUP_REFRESH_TRICKLE, 1);
}

/* What a paced refresh may take of our share: what is left once what rose
 * went, while none waits (all of it for any other pass). */
static uint64_t share_left(const struct tally_group *gr)
{
    return gr->refresh_paced && gr->queue ? 0 : gr->share / 1000;
}

/* How many records of what rose (or echoes) may go now: our share of the
 * budget, budget / (streams + 1) a second, saved up for at most a second
 * (and one record), once it covers all that waits or a heartbeat's share
 * (a message a heartbeat, not a record an interval); all with no budget. */
static uint64_t allowance(struct tally_group *gr, uint64_t now_ms)
{
    if (!gr->sums_budget)
        return UINT64_MAX;
    uint64_t shares = streams_heard(gr, now_ms) + 1;
    uint64_t since = min64(now_ms - gr->share_ms, 1000);
    uint64_t cap = max64(gr->sums_budget * 1000 / shares, 1000); /* thousandths a second */
    gr->share = min64(gr->share + gr->sums_budget * since / shares, cap);
    gr->share_batch = max64(gr->sums_budget * group_heartbeat_ms(gr) / shares / 1000, 1);
    if (gr->cursor && gr->refresh_paced)
        gr->refresh_share =
            min64(gr->refresh_share + gr->sums_budget * since / shares / GROUP_REFRESH_TRICKLE,
                  max64(cap / GROUP_REFRESH_TRICKLE, refresh_batch(gr) * 1000));
    gr->share_ms = now_ms;
    uint64_t have = gr->share / 1000;
    return have >= min64(gr->queued, gr->share_batch) ? have : 0;
}

/* How many counters the refresh may send now. A paced pass: what is left of
 * our share once what rose went, while none waits, and a tenth of our
 * share's pace of its own, so that it ends under a load that takes all the
 * rest; once either covers a heartbeat's worth of its pace or the rest of
 * the pass (a message a heartbeat, not a record an interval). Any other
 * pass: all (the caller's bound). */
static uint64_t refresh_pace(const struct tally_group *gr)
{
    if (!gr->refresh_paced)
        return UINT64_MAX;
    uint64_t left = share_left(gr), own = gr->refresh_share / 1000;
    uint64_t rest = max64(gr->refresh_rest, 1);
    return left >= min64(rest, gr->share_batch) || own >= min64(rest, refresh_batch(gr))
               ? left + own
               : 0;
}

/* What went comes off our share: what rose, then the refresh, which a
 * paced pass takes beyond that (while what rose waits) off its own pace;
 * a pass at once takes what is left, no more (paid back, a whole pass
 * would hold what rises back for seconds). */
static void spend(struct tally_group *gr, uint64_t rose, uint64_t refreshed)
{
    if (!gr->sums_budget)
        return;
    gr->share = minus(gr->share, rose * 1000);
    uint64_t of_share = min64(refreshed, share_left(gr));
    gr->share -= of_share * 1000;
    if (gr->refresh_paced)
        gr->refresh_share = minus(gr->refresh_share, (refreshed - of_share) * 1000);
}

/* ==== Sums lost on the way ==== */

/* The seqs of o's stream we lack: bit k for seq high - k, within the
 * window, above its floor. */
static uint64_t missing(const struct group_origin *o)
{
    uint64_t m = 0;
    for (uint64_t k = 1; k < GROUP_KEEP && k < o->high && o->high - k > o->floor; k++)
        if (!((o->seen >> k) & 1))
            m |= 1ULL << k;
    return m;
}

/* An ask goes to our neighbours only, out of our stream (seq 0). */
static void ask(struct tally_group *gr, const struct group_origin *o, uint64_t m, const char *self,
                struct wire_buf *b, void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    head(b, gr, self, true, 0);
    wbuf_str8(b, o->id, strlen(o->id));
    wbuf_u64(b, o->session);
    wbuf_varint(b, (uint64_t)__builtin_popcountll(m));
    for (uint64_t k = 1; k < GROUP_KEEP; k++)
        if ((m >> k) & 1)
            wbuf_varint(b, o->high - k);
    if (!b->failed) {
        emit(b, ud);
        gr->wants++;
    }
}

/* A call for o's refresh: in our stream, flooded to o wherever it is. */
static void call(struct tally_group *gr, const struct group_origin *o, const char *self,
                 struct wire_buf *b, void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    head(b, gr, self, true, gr->seq + 1);
    wbuf_str8(b, o->id, strlen(o->id));
    wbuf_u64(b, o->session);
    wbuf_varint(b, 0);
    if (!b->failed) {
        go(gr, b, emit, ud);
        gr->calls++;
    }
}

static uint32_t resend_due(struct tally_group *gr, struct group_ring *ring, uint64_t now_ms,
                           void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    uint32_t wrote = 0;
    for (size_t i = 0; i < GROUP_KEEP; i++) {
        struct group_kept *k = &ring->k[i];
        if (!k->due)
            continue;
        k->due = false;
        k->resent_ms = now_ms + 1;
        const struct wire_buf again = {.data = k->data, .len = k->len, .cap = k->cap};
        emit(&again, ud);
        gr->resent++;
        wrote++;
    }
    return wrote;
}

/* Sends again what our neighbours asked for, then asks for what we lack of
 * the streams we take; returns how many messages went. */
static uint32_t repair(struct tally_group *gr, const char *self, uint64_t now_ms,
                       struct wire_buf *b, void (*emit)(const struct wire_buf *msg, void *ud),
                       void *ud)
{
    bool resend = gr->resend; /* else no ring has one due: none scanned */
    uint32_t wrote = resend ? resend_due(gr, &gr->ring, now_ms, emit, ud) : 0;
    gr->resend = false;
    for (struct group_origin *o = gr->origins; o; o = o->hh.next) {
        wrote += resend ? resend_due(gr, &o->ring, now_ms, emit, ud) : 0;
        if (o->call && o->speaks &&
            (!o->called_ms || now_ms + 1 >= o->called_ms + gr->refresh_ms)) {
            call(gr, o, self, b, emit, ud);
            o->call = false;
            o->called_ms = now_ms + 1;
            wrote++;
        }
        if (!o->want_ms || now_ms < o->want_ms)
            continue;
        uint64_t m = missing(o);
        if (!m || o->tries >= GROUP_WANT_TRIES) {
            o->want_ms = 0; /* had, or given up: we call for the refresh */
            o->call = o->call || m;
            continue;
        }
        o->tries++;
        o->want_ms = now_ms + group_heartbeat_ms(gr);
        ask(gr, o, m, self, b, emit, ud);
        wrote++;
    }
    return wrote;
}

uint32_t group_announce(struct tally_group *gr, const struct tally_table *t, const char *self,
                        uint64_t now_ms, size_t max_bytes, size_t budget, struct wire_buf *b,
                        void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    struct gsum_out o = {gr, t, self, max_bytes, b, 0, 0, 0, emit, ud};
    if (!group_on(gr))
        return 0;
    gr->clock_ms = now_ms;
    uint32_t repaired = repair(gr, self, now_ms, b, emit, ud);
    if (t->light || (gr->senior && now_ms - gr->senior_ms < gr->quiet_ms)) {
        /* a hub of our group before us in order speaks: what rose here
         * reaches it in our SYNCs, and it sends the sums */
        for (struct group_entry *e; (e = gr->queue); gr->queue = e->next) {
            e->queued = e->stamps_owed = false;
            for (uint32_t i = 0; i < e->ndevs; i++)
                e->devs[i].owed = false;
            for (uint32_t i = 0; i < e->nbases; i++)
                e->bases[i].owed = false;
        }
        gr->queue_tail = &gr->queue;
        gr->queued = 0;
        gr->cursor = NULL;
        echo_drop(gr);
        gr->quiet = true;
        return repaired;
    }
    if (gr->quiet) { /* we take over: every sum again, the last speaker may have lost some */
        gr->quiet = false;
        gr->took_over = true; /* and every rest slot (group_rest) */
        gr->refresh_due = 0;
        gr->refresh_urgent = true;
    }
    begin(&o);
    if (!gr->cursor && now_ms >= gr->refresh_due) {
        gr->cursor = gr->entries;
        gr->refresh_due = now_ms + GROUP_REFRESH_CALM * gr->refresh_ms;
        gr->refresh_began = now_ms;
        gr->refresh_paced = gr->sums_budget && !gr->refresh_urgent;
        gr->refresh_urgent = false;
        gr->refresh_share = 0;
        gr->refresh_rest = HASH_COUNT(gr->entries);
    }
    uint64_t allowed = allowance(gr, now_ms), went = 0;
    for (; gr->queue && went < allowed; went++) {
        struct group_entry *e = gr->queue;
        gr->queue = e->next;
        gr->queued--;
        e->queued = false;
        put_entry(&o, e, false);
        echo_later(gr, e, now_ms);
    }
    if (gr->queue)
        gr->budget_held++; /* the rest wait, in order, and go as they are then */
    else
        gr->queue_tail = &gr->queue;
    went += echo_due(&o, now_ms, allowed - went);
    uint64_t refreshed = 0;
    for (uint64_t pace = refresh_pace(gr); gr->cursor && budget && refreshed < pace; budget--) {
        put_entry(&o, gr->cursor, true);
        gr->cursor = gr->cursor->hh.next;
        refreshed++;
        gr->refresh_rest = minus(gr->refresh_rest, 1);
        if (!gr->cursor)
            gr->refresh_took = now_ms - gr->refresh_began;
    }
    spend(gr, went, refreshed); /* the refresh out of the same share */
    /* at least three a quiet interval: the rest of our group keeps quiet */
    send_out(&o, !o.messages && now_ms - gr->sent_ms >= group_heartbeat_ms(gr));
    if (o.messages)
        gr->sent_ms = now_ms;
    return o.messages + repaired;
}

/* ==== Reading ==== */

bool seq_window_first(uint64_t *high, uint64_t *seen, uint64_t seq)
{
    if (seq > *high) {
        uint64_t shift = seq - *high;
        *seen = shift >= 64 ? 1 : (*seen << shift) | 1;
        *high = seq;
        return true;
    }
    uint64_t back = *high - seq;
    if (back >= 64 || (*seen >> back) & 1)
        return false;
    *seen |= 1ULL << back;
    return true;
}

/* True the first time (origin, session, seq) is seen here. */
static bool first_seen(struct tally_group *gr, const char *id, size_t len, uint64_t session,
                       uint64_t seq, bool *nomem, struct group_origin **found)
{
    struct group_origin *o;
    HASH_FIND(hh, gr->origins, id, len, o);
    if (!o) {
        o = calloc(1, sizeof(*o));
        if (!o) {
            *nomem = true;
            return false;
        }
        memcpy(o->id, id, len);
        HASH_ADD(hh, gr->origins, id, len, o);
    }
    *found = o;
    if (session != o->session) {
        if (session < o->session && o->high)
            return false; /* an earlier life's, still on its way */
        o->session = session;
        o->high = seq;
        o->seen = 1;
        /* a life that began within the window: what came before is asked for */
        o->floor = seq <= GROUP_KEEP ? 0 : seq - 1;
        o->gap = seq > 1 && seq <= GROUP_KEEP;
        o->late = seq > GROUP_KEEP;
        o->want_ms = 0;
        ring_free(&o->ring); /* an earlier life's */
        return true;
    }
    if (seq > o->high + 1) { /* one lost on the way, or still on a longer path */
        gr->holes++;
        gr->hole_ms = gr->clock_ms;
        o->gap = true;
        o->late = o->late || seq > o->high + GROUP_KEEP; /* some fell out of the window */
    }
    return seq_window_first(&o->high, &o->seen, seq);
}

static bool value_ok(uint64_t v)
{
    return v <= (uint64_t)TALLY_MAX_SAFE;
}

struct gsum_counter {
    const char *name;
    size_t name_len;
    uint64_t p, n, bp, bn, deleted, reset;
    uint32_t nbases, ndevs;
    uint8_t flags; /* REC_*: what follows the sums (version 1: devices only) */
};

/* A counter's head, up to its group bases (version 2 on). */
static bool read_counter(struct wire_reader *r, size_t len, int version, struct gsum_counter *gc)
{
    gc->name = wr_str8(r, &gc->name_len);
    gc->p = wr_varint(r);
    gc->n = wr_varint(r);
    gc->bp = wr_varint(r);
    gc->bn = wr_varint(r);
    gc->flags = version >= 2 ? wr_u8(r) : REC_DEVICES;
    bool stamps = gc->flags & REC_STAMPS;
    gc->deleted = stamps ? wr_varint(r) : 0;
    gc->reset = stamps ? wr_varint(r) : 0;
    uint64_t nbases = gc->flags & REC_BASES ? wr_varint(r) : 0;
    gc->nbases = (uint32_t)nbases;
    return !r->bad && (gc->flags & ~(REC_STAMPS | REC_BASES | REC_DEVICES)) == 0 &&
           name_check(gc->name, gc->name_len) == TALLY_OK && value_ok(gc->p) && value_ok(gc->n) &&
           value_ok(gc->bp) && value_ok(gc->bn) && nbases <= len;
}

/* What a message is: its version, type (GSUM or RSUM) and level. */
struct gsum_kind {
    int version, type, level;
};

/* A group base names a group's replica past its mark, or (version 3) a
 * region's, one mark left (and so on up): a message of level k carries
 * those of level k and up, which the hubs of its unit one level up all
 * hold (a GSUM in a region, a group's and a region's; an RSUM of a region
 * of no region above it, a region's: other regions hold no group's). */
static bool base_name_ok(const char *name, size_t len, struct gsum_kind k)
{
    int m = unit_marks(name, len);
    if ((m && k.version < 3) || m + 1 < k.level)
        return false;
    return unit_name_check(m + 1, name + m, len - (size_t)m) == TALLY_OK;
}

static bool read_base(struct wire_reader *r, struct gsum_kind k, const char **group, size_t *glen,
                      uint64_t *p, uint64_t *n)
{
    *group = wr_str8(r, glen);
    *p = wr_varint(r);
    *n = wr_varint(r);
    return !r->bad && base_name_ok(*group, *glen, k) && value_ok(*p) && value_ok(*n);
}

static bool read_dev(struct wire_reader *r, int version, const char **id, size_t *idlen,
                     uint64_t *total, uint64_t *base)
{
    *id = wr_str8(r, idlen);
    *total = wr_varint(r);
    *base = version >= 2 ? wr_varint(r) : 0;
    return !r->bad && device_id_check(*id, *idlen) == TALLY_OK && value_ok(*total) &&
           value_ok(*base);
}

static bool read_ndevs(struct wire_reader *r, size_t len, struct gsum_counter *gc)
{
    uint64_t ndevs = gc->flags & REC_DEVICES ? wr_varint(r) : 0;
    gc->ndevs = (uint32_t)ndevs;
    return !r->bad && ndevs <= len;
}

/* The whole message read before anything of it is taken. */
static bool valid(struct wire_reader r, size_t len, struct gsum_kind k, uint64_t ncounters)
{
    int version = k.version;
    struct gsum_counter gc;
    const char *id;
    size_t idlen;
    uint64_t a, b;
    for (uint64_t i = 0; i < ncounters; i++) {
        if (!read_counter(&r, len, version, &gc))
            return false;
        for (uint32_t j = 0; j < gc.nbases; j++)
            if (!read_base(&r, k, &id, &idlen, &a, &b))
                return false;
        if (!read_ndevs(&r, len, &gc))
            return false;
        for (uint32_t j = 0; j < gc.ndevs; j++)
            if (!read_dev(&r, version, &id, &idlen, &a, &b))
                return false;
    }
    return r.p == r.end;
}

/* A group replica's base (bp, bn) came from the flood: not ours to announce
 * again, unless a reset here raises it past that. */
static int heard_base(struct group_entry *e, uint32_t replica, uint64_t bp, uint64_t bn)
{
    struct group_base *gb = entry_base(e, replica);
    if (!gb)
        return TALLY_E_NOMEM;
    if (bp >= gb->p && bn >= gb->n) {
        gb->owed = false;
        gb->heard = true;
    }
    gb->p = max64(gb->p, bp);
    gb->n = max64(gb->n, bn);
    return TALLY_OK;
}

/* A base of a group's replica from a GSUM: the sender's group's own resets
 * (its record's BP, BN), or what a reset there observed of another group's
 * sum; ours too (t->group), which lowers our group's part (reset.c). */
static int take_group_base(struct tally_table *t, struct persist *p, struct tally_counter *c,
                           struct group_entry *e, uint32_t replica, uint64_t bp, uint64_t bn)
{
    bool changed;
    int rc = table_merge_base_slot(t, c, replica, bp, bn, &changed);
    if (rc == TALLY_OK && changed && p)
        persist_base(p, t, c);
    if (t->light && table_foreign(t, replica))
        return rc; /* never ours to announce */
    return rc == TALLY_OK ? heard_base(e, replica, bp, bn) : rc;
}

static int take_base(struct tally_table *t, struct persist *p, struct tally_counter *c,
                     struct group_entry *e, struct gsum_kind k, struct wire_reader *r)
{
    const char *group;
    size_t glen;
    uint64_t bp, bn;
    uint32_t replica;
    read_base(r, k, &group, &glen, &bp, &bn);
    int rc = replica_of(t, group, glen, 1, &replica);
    return rc == TALLY_OK ? take_group_base(t, p, c, e, replica, bp, bn) : rc;
}

static int take_dev(struct tally_table *t, struct persist *p, struct tally_counter *c,
                    struct group_entry *e, int version, struct wire_reader *r)
{
    const char *id;
    size_t idlen;
    uint64_t total, base;
    uint32_t dev;
    bool changed, rebased = false;
    read_dev(r, version, &id, &idlen, &total, &base);
    int rc = table_device(t, id, idlen, DEVICE_PEER, &dev);
    if (rc == TALLY_OK)
        rc = table_merge_device_from(t, c, dev, total, REPL_NONE, &changed);
    if (rc == TALLY_OK && changed && p)
        persist_device(p, t, c, counter_device(c, dev));
    if (rc == TALLY_OK && base)
        rc = table_merge_base_device(t, c, dev, base, &rebased);
    if (rc == TALLY_OK && rebased && p)
        persist_base(p, t, c);
    struct group_dev *d = rc == TALLY_OK ? entry_dev(e, dev) : NULL;
    if (rc == TALLY_OK && !d)
        rc = TALLY_E_NOMEM;
    if (d && total >= d->total && base >= d->base) { /* heard, as a base is */
        d->owed = false;
        d->heard = true;
    }
    if (d) {
        d->total = max64(d->total, total);
        d->base = max64(d->base, base);
    }
    return rc;
}

static int take_counter(struct tally_group *gr, struct tally_table *t, struct persist *p,
                        uint32_t replica, struct gsum_kind k, struct gsum_counter *gc,
                        struct wire_reader *r)
{
    struct tally_counter *c;
    bool changed;
    int rc = table_get(t, gc->name, gc->name_len, TABLE_MERGE, &c);
    if (rc != TALLY_OK)
        return rc;
    struct group_entry *e = entry_get(gr, gc->name, gc->name_len, true);
    if (!e)
        return TALLY_E_NOMEM;
    /* REPL_NONE: every hub of our group has it from the flood itself */
    rc = table_merge_slot_from(t, c, replica, gc->p, gc->n, REPL_NONE, &changed);
    if (rc == TALLY_OK && changed && p)
        persist_slot(p, t, c, counter_slot(c, replica), NULL);
    if (rc == TALLY_OK && (gc->bp || gc->bn))
        rc = take_group_base(t, p, c, e, replica, gc->bp, gc->bn);
    if (rc == TALLY_OK && (gc->deleted || gc->reset)) {
        rc = table_merge_stamps(t, c, gc->deleted, gc->reset, &changed);
        if (rc == TALLY_OK && changed && p)
            persist_base(p, t, c);
        e->deleted = max64(e->deleted, gc->deleted); /* heard: not ours to announce */
        e->reset = max64(e->reset, gc->reset);
    }
    for (uint32_t i = 0; rc == TALLY_OK && i < gc->nbases; i++)
        rc = take_base(t, p, c, e, k, r);
    if (rc == TALLY_OK && read_ndevs(r, SIZE_MAX, gc))
        for (uint32_t i = 0; rc == TALLY_OK && i < gc->ndevs; i++)
            rc = take_dev(t, p, c, e, k.version, r);
    gr->learned++;
    table_drop_if_empty(t, c);
    return rc;
}

/* An ask (GWANT, RWANT): of which stream, which life, which seqs. */
struct gsum_want {
    const char *target;
    size_t tlen;
    uint64_t session, n;
    struct wire_reader seqs;
};

/* An ask (seq 0) names 1 to 63 seqs; a call (in the caller's stream) none. */
static bool read_want(struct wire_reader r, uint64_t seq, struct gsum_want *w)
{
    w->target = wr_str8(&r, &w->tlen);
    w->session = wr_u64(&r);
    w->n = wr_varint(&r);
    w->seqs = r;
    if (r.bad || node_id_check(w->target, w->tlen) != TALLY_OK || !w->n != !!seq ||
        w->n >= GROUP_KEEP)
        return false;
    for (uint64_t i = 0; i < w->n; i++)
        if (!wr_varint(&r))
            return false;
    return !r.bad && r.p == r.end;
}

/* A neighbour's ask: what we hold of it goes again at our next announce,
 * ours or another hub's, each message at most once a half heartbeat
 * however many ask. The neighbours of ours that lack it take it as new and
 * flood it on, so one answer heals every hub behind the link it was lost
 * on. */
static void take_want(struct tally_group *gr, const char *self, struct gsum_want *w)
{
    uint64_t now = gr->clock_ms, every = group_heartbeat_ms(gr);
    struct group_ring *ring = NULL;
    if (name_same(w->target, w->tlen, self, strlen(self))) {
        ring = w->session == gr->session ? &gr->ring : NULL;
    } else {
        struct group_origin *o;
        HASH_FIND(hh, gr->origins, w->target, w->tlen, o);
        ring = o && o->session == w->session ? &o->ring : NULL;
    }
    for (uint64_t i = 0; ring && i < w->n; i++) {
        struct group_kept *k = kept(ring, wr_varint(&w->seqs));
        if (k && (!k->resent_ms || now + 1 >= k->resent_ms + every / 2))
            k->due = gr->resend = true;
    }
}

int group_apply(struct tally_group *gr, struct tally_table *t, struct persist *p, const char *self,
                const void *msg, size_t len, bool *fresh)
{
    struct wire_reader r = {msg, (const uint8_t *)msg + len, false};
    const uint8_t *h = msg;
    *fresh = false;
    /* version 1 (before resets in groups): no stamps, group bases or
     * device bases; taken, so that groups upgraded one by one go on.
     * Version 3 names the sender's region (an RSUM: ""). An ask is of
     * version 3 on. */
    bool up_level = gr->level >= 2;
    int type = up_level ? WIRE_RSUM : WIRE_GSUM;
    bool want = len >= 4 && h[3] == (up_level ? WIRE_RWANT : WIRE_GWANT);
    if (len < 4 || h[0] != 'T' || h[1] != 'L' || h[2] < 1 || h[2] > WIRE_GSUM_VERSION ||
        (h[3] != type && !want) || ((up_level || want) && h[2] < 3))
        return TALLY_E_WIRE;
    struct gsum_kind k = {h[2], type, gr->level};
    r.p += 4;
    size_t olen, glen, rlen = 0;
    const char *origin = wr_str8(&r, &olen);
    uint64_t session = wr_u64(&r), seq = wr_varint(&r);
    const char *group = wr_str8(&r, &glen), *region = k.version >= 3 ? wr_str8(&r, &rlen) : "";
    /* an RSUM of level k names its unit past k - 2 marks: the level of the
     * topic it came on (plugin.c), another is not this stream's */
    int m = up_level && !r.bad ? unit_marks(group, glen) : 0;
    if (m) {
        group += m;
        glen -= (size_t)m;
    }
    struct gsum_want w;
    uint64_t ncounters = want ? 0 : wr_varint(&r);
    if (r.bad || node_id_check(origin, olen) != TALLY_OK || (up_level && m != gr->level - 2) ||
        unit_name_check(gr->level, group, glen) != TALLY_OK ||
        (rlen && unit_name_check(gr->level + 1, region, rlen) != TALLY_OK) ||
        (want ? !read_want(r, seq, &w) : ncounters > len || !valid(r, len, k, ncounters)))
        return TALLY_E_WIRE;
    /* not ours to read, nor to flood: we are in no group (or region), or
     * it is the sums of a unit of another unit one level up (or none, or
     * we are in none: a group of another region), which that unit's RSUMs
     * count */
    if (!group_on(gr) || !name_same(region, rlen, gr->up, gr->up_len)) {
        gr->refused++;
        /* from a tree of other levels than ours: we are in no unit of this
         * level, or one of us is in a unit above it and the other not */
        if (!group_on(gr) || !rlen != !gr->up_len)
            gr->mismatched++;
        return TALLY_OK;
    }
    if (want && !seq) { /* a neighbour's ask, for us alone: never flooded on */
        take_want(gr, self, &w);
        return TALLY_OK;
    }
    bool nomem = false;
    struct group_origin *o = NULL;
    if (name_same(origin, olen, self, strlen(self)) ||
        !first_seen(gr, origin, olen, session, seq, &nomem, &o)) {
        gr->stale++;
        return nomem ? TALLY_E_NOMEM : TALLY_OK;
    }
    *fresh = true;
    keep(&o->ring, seq, msg, len); /* for a neighbour that lacks it */
    if (want) {                    /* a call for a speaker's refresh: flooded on to it */
        o->late = false;
        if (name_same(w.target, w.tlen, self, strlen(self)) && w.session == gr->session)
            group_refresh_now(gr);
        return TALLY_OK;
    }
    o->speaks = true;
    o->call = o->call || o->late;
    o->late = false;
    bool ours = name_same(group, glen, gr->name, gr->len);
    o->heard_ms = gr->clock_ms;
    o->other = !ours;
    if (o->gap) {
        /* a gap: asked for once a message on a longer path had time to
         * come, a new gap starting the tries over; in our own unit's
         * streams too, which we pass on to the others */
        uint64_t at = gr->clock_ms + group_heartbeat_ms(gr) / 4;
        o->want_ms = o->want_ms && o->want_ms < at ? o->want_ms : at;
        o->tries = 0;
    }
    o->gap = false;
    if (ours) {
        /* our own group's: we hold what it was summed from; from a hub
         * before us in order, it speaks for the group (group_announce) */
        memcpy(gr->speaker, origin, olen);
        gr->speaker[olen] = '\0';
        size_t slen = strlen(self);
        int order = memcmp(origin, self, olen < slen ? olen : slen);
        if (order < 0 || (order == 0 && olen < slen)) {
            gr->senior = true;
            gr->senior_ms = gr->clock_ms;
        }
        return TALLY_OK;
    }
    uint32_t replica;
    int rc = replica_of(t, group, glen, gr->level, &replica);
    for (uint64_t i = 0; rc == TALLY_OK && i < ncounters; i++) {
        struct gsum_counter gc;
        read_counter(&r, len, k.version, &gc);
        rc = take_counter(gr, t, p, replica, k, &gc, &r);
    }
    return rc;
}
