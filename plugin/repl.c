/*
 * repl.c - replication between neighbours: what a node sends, when, and
 * what it repairs. Pure C; plugin.c hands it decoded messages and publishes
 * what it writes.
 *
 * ---- The problem ----
 *
 * A node is bridged to a few neighbours; a publish under $tally/ reaches
 * every one of them (Mosquitto bridges broadcast, and a node cannot address
 * one neighbour). Earlier versions sent the whole state of every changed
 * counter at every publish interval, forwarded what they learned one
 * interval later, and compared 256 bucket digests every sync interval,
 * resending whole buckets that differed twice in a row. Under steady writes
 * the buckets always differ (deltas are in flight), so every neighbour resent
 * every busy bucket every round: bytes grew about as N^2.5 in a star of N
 * leaves, and each hop added an interval of latency.
 *
 * ---- The protocol ----
 *
 * 1. Deltas, each owed once. A slot or device maximum that changes is marked
 *    pending (tally.h: REPL_ALL for a local change, REPL_FROM(k) for one
 *    learned from neighbour k) and its counter joins the table's replication
 *    list. A SYNC carries only pending slots, with their absolute (P, N), and
 *    clears the marks: the delta-state CRDT of Almeida, Shoker and Baquero
 *    ("Delta state replicated data types", J. Parallel Distrib. Comput. 111,
 *    2018), where a delta is a join-irreducible piece of the state and the
 *    merge is still the slot-wise maximum, idempotent, so duplicates and
 *    reordering stay harmless.
 * 2. Split horizon. A change learned from neighbour k is owed to every
 *    neighbour but k. A node whose only neighbour is k (a leaf of a star)
 *    sends nothing of it back; a node with several sends it once, to all,
 *    since a publish cannot leave one out. The same rule decides whether a
 *    flooded message (presence, stats) is published on.
 * 2a. Nothing forwarded that every neighbour hears itself (DIGEST
 *    version 5). Each DIGEST lists the neighbours its sender hears: those
 *    whose own messages (a SYNC, a DIGEST, its own PRESENCE heartbeat,
 *    which goes at least once a second) came over their own connection
 *    within three heartbeats (repl_heard, repl_hearing). A change learned
 *    from k is owed to no one when every other neighbour's last DIGEST said
 *    it hears k (k covered): k's SYNC reached them as it reached us, and a
 *    gap in k's stream is theirs to ask k for (rule 4). In a full mesh of
 *    hubs, a hub used to hear each change once per neighbour; now once,
 *    from its writer. So is k's own PRESENCE (its heartbeat, its viewer
 *    changes), which is not routed on when it came straight from k and k is
 *    covered (plugin.c's on_presence). A neighbour that stops hearing k (a
 *    bridge cut) stops listing it, and asks every neighbour that listed k
 *    for a repair of every bucket that differs (what they left out for it
 *    is in those buckets); the DIGEST that asks is sent at once and tells
 *    them to forward k's changes again. What k changed until then (three
 *    heartbeats) reaches it by that repair, and k's viewer changes by its
 *    next heartbeat (which shows their digest), not at once: the price,
 *    paid only while a link is down. A neighbour not heard yet, or one
 *    whose DIGEST lists nobody (an older version), covers nothing, and past
 *    COVER_MAX neighbours nothing is covered: everything learned is
 *    forwarded, as before.
 * 2b. Floods go on only where a neighbour lacks them. A flood (a group's
 *    or region's sums and viewer sums, group.c and scope.c; a node's
 *    counts) new here came in over a connection; when that is neighbour k's
 *    and k is covered, k sent it to all its bridges, so every other
 *    neighbour had it from k as we did, and we do not send it on. But for
 *    our bridges to other groups, which are no neighbours of ours (no SYNC
 *    crosses them): a hub that heard a flood over a connection of no
 *    neighbour within twice the group's quiet time (repl_outer_heard; the
 *    other side's speakers send at least three a quiet time) sends on what
 *    the other groups take, and Mosquitto's publish cannot leave its group
 *    out. A node's own counts stay in its group, and go on by rule 2a
 *    alone. In a group of 4 hubs in a full mesh with one bridge to the next
 *    group, each of the three without one took a flood three times, and now
 *    once (tests/sim, 10,200 nodes in 10 regions: RSUMs 718 -> 389 MB).
 *    The price is rule 2a's: a copy lost between k and one neighbour is not
 *    made up by the others'. Sums heal by their echo (group.c, "The last
 *    sums again") and refresh, viewer sums by their digests (scope.c), and
 *    a bridge to another group that has carried nothing yet is not flooded
 *    to until it does (a second at most, a speaker's keepalive). Stats are
 *    always sent on: a message the plugin does not route is not delivered
 *    or retained here either, and every node shows every node's stats to
 *    its own readers (they count as heard over a bridge out, though).
 * 3. No interval per hop. A learned change owed elsewhere makes the node send
 *    at its next tick; local changes are coalesced over publish_interval_ms
 *    (and leave with any learned ones).
 * 4. Numbered streams, repairs on evidence. Every SYNC carries (session, seq):
 *    a random session per start of the broker, seq counting its SYNCs. A
 *    receiver tracks each neighbour's stream; a new session (a neighbour
 *    restarted, with or without its state, or one never heard before) or a
 *    gap in seq (a lost message, a bridge that reconnected) makes it ask that
 *    neighbour for a repair: its next DIGEST, sent at once, names the
 *    neighbour, which answers with the state of every bucket whose digest
 *    differs. The DIGEST also carries the sender's last seq, so a lost tail
 *    is seen even when the stream then goes quiet.
 * 4a. Repairs of a gap (DIGEST version 4). A request names the SYNCs of
 *    the neighbour's stream the asker lacks, [since, until] with the
 *    session: a gap, from the one after the last it saw to the one before
 *    the message that showed it (or to the seq its DIGEST gave); a message
 *    it could not resolve, that one; since 0 for all of it (a new session,
 *    one first heard). Each slot and device maximum keeps, in its padding,
 *    the seq mod 2^16 of the last SYNC that carried it (`sent`); the repair
 *    holds, of the differing buckets, only the entries whose last carrier
 *    is in the span, and every base and fold entry (rare, and sent whole
 *    with every delta anyway). An entry the asker lacks was carried last
 *    by a SYNC it lacks: in the span, or in a later gap it will see and
 *    ask for; one carried last by a SYNC it got, it has. A counter written
 *    over several SYNCs (past max_message_bytes) has its entries marked
 *    with the last one's seq: the SYNCs that ended within a counter are
 *    noted (a bit per seq mod 2^16, r->continued), and the span goes on
 *    past them. The sender repairs the buckets whole when the request is
 *    of another session or 2^16 seqs or more behind (marks mod 2^16 no
 *    longer tell). An ask is open from the DIGEST that made it until a
 *    repair of that stream arrives or the neighbour's digest equals ours;
 *    a gap while one is open widens it to both spans, since the repair of
 *    the first may have been lost. In the simulator (2,040 nodes, 2% loss)
 *    repairs went from 32.2 to 6.7 MB, where whole buckets of busy
 *    counters had been a quarter of all SYNC bytes (README).
 * 5. Digests as the last safety net. An ordinary DIGEST repairs a bucket only
 *    if it differs AND neither side changed it over a whole sync interval
 *    (both hashes equal to those at the previous digest from that neighbour)
 *    AND the neighbour heard our stream as far as the last SYNC that carried
 *    a change of that bucket (DIGEST version 6: for each stream it hears, the
 *    session and last seq it heard; r->bucket_sent), AND heard the stream of
 *    each other neighbour j it lists as far as the last SYNC of j that
 *    changed the bucket here (nb->bucket_learned): rule 2a left that change
 *    to j's own SYNC, which may be slower to reach it than to us; AND it did
 *    not hear any j's stream further than we did (j's SYNCs on their way to
 *    us may be the difference, and it lacks nothing). Without these, a delta
 *    that took longer than an interval to arrive was taken for a loss, by
 *    timing alone: a broker far behind under load repaired every busy bucket
 *    every round while its deltas were on their way, and the repairs put it
 *    further behind (a star of 12 leaves under ASan, four at a time on 2
 *    cores: 4,349 counters repaired by the hub in 6 s of load, none lost). A
 *    SYNC lost on the way is a gap, which rule 4 repairs; a digest that does
 *    not say how far (a sender before version 6, or one that no longer hears
 *    that stream) leaves quiet alone to decide, as before. A neighbour's own
 *    deltas cannot be in flight behind its DIGEST: both go over the same
 *    bridge, in order, at QoS 1.
 * 6. A repair goes to the neighbour whose DIGEST asked for it, alone, where
 *    plugin.c can address it (Mosquitto's publish to the client id of its
 *    bridge): published to all, a hub restarted among d neighbours had each
 *    of them send its whole state to all of theirs, d * d copies where d
 *    are needed. Such a message is outside the numbered stream (session 0,
 *    seq 0: receivers take it without checking it, as they take a version 1
 *    sender's), since the other neighbours never see it; what it teaches
 *    the asker goes on from there as the asker's own deltas.
 * 7. Replicas named once a stream (SYNC version 5, wire.c). A slot is a
 *    replica (node id, incarnation: about 13 bytes) and a few bytes of
 *    value; the stream names each replica the first time it sends it, then
 *    gives its number alone. A receiver keeps, per neighbour, what that
 *    stream's numbers stand for, learned only from messages of the session
 *    it knows (a repair of that session too), and forgets it when the
 *    session changes. A message with a number it cannot resolve (the one
 *    that named it was lost, or reordered after) is taken as lost: nothing
 *    of it is applied, and the receiver asks for a repair, as for a gap,
 *    listing the numbers in its request; the sender names those again in
 *    its stream, and the repair (which names every replica) brings what was
 *    not applied, since the message left before the request arrived. A
 *    neighbour heard in a new session (restarted, or first heard) has our
 *    stream name every replica again.
 *
 * ---- Invariants ----
 *
 *   - A slot's pending mark is cleared only when the slot was written to a
 *     SYNC, or when it was owed to no neighbour: it came from the only one,
 *     or from one every other neighbour said it hears (rule 2a).
 *   - Every SYNC sent consumes one seq; a receiver that saw seq s and then
 *     s + 2, or a digest saying s + 1, asks for a repair.
 *   - A replica is resolved by number only through a name its stream sent
 *     in the same session: a number is never taken for another replica.
 *   - An entry's sent mark is the last SYNC that carried it, or a later one
 *     that every SYNC in between (each noted as continued) led to.
 *   - Convergence does not depend on any of this being delivered: a lost
 *     repair is asked for again at the next gap (rule 4a), and a bucket
 *     that stays different while both sides are still is repaired whole by
 *     rule 5.
 *
 * ---- Where it is weaker ----
 *
 * A neighbour is known from the first SYNC or DIGEST heard from it and never
 * forgotten while the broker runs: a removed neighbour keeps the node sending
 * what it learned (more bytes, never less safety). A node that has not yet
 * heard a new neighbour does not forward to it; that neighbour sees a new
 * session and asks for a repair. A change lost while the same bucket keeps
 * changing elsewhere waits for the slot's next change, a gap, or the bucket's
 * quiet: the sync interval after the writes stop. A name lost on the way
 * costs more than the message that carried it: every message of that stream
 * that numbers the replica before the name comes back (a round trip) is not
 * applied, and the repair sends whole buckets (in the simulator at 2% loss, a
 * quarter more counters sent whole, for half the SYNC bytes). Rule 2a trades
 * a path for bytes: a change k sends that one neighbour loses on the way
 * reaches it by its repair from k (a round trip after the gap shows, up to a
 * sync interval for a lost tail), not by the copies its other neighbours used
 * to forward (in the simulator's full mesh of 8 hubs at 2% loss, exact 2.2 s
 * after the load stopped against 1.3). A removed neighbour keeps the cover
 * its last DIGEST gave: it listed the others, or it leaves us forwarding. A
 * repair (to one neighbour, outside the stream) has no seq to wait for: one
 * still on its way at the next digest is sent again (only after a real loss).
 * Holding its buckets one more interval was tried: in the simulator's mesh of
 * 8 hubs with delays of up to 2.5 s and 2% loss, as many counters were
 * repaired (1,774 against 1,768), and totals were exact 9.0 s after the load
 * against 7.2, since a repair lost waited longer. Rule 5 waits while a
 * neighbour heard a third node's stream further than we did: where that
 * stream keeps coming to us later than to it (a slower link) and never
 * pauses, a difference no stream shows (a sender before version 6, a counter
 * that could not be written for memory) waits for the pause.
 */
#include <stdlib.h>
#include <string.h>

#include "persist.h"
#include "tally.h"

void repl_init(struct repl *r, uint64_t session)
{
    memset(r, 0, sizeof(*r));
    r->session = session;
}

void repl_free(struct repl *r)
{
    for (uint32_t i = 0; i < r->n; i++) {
        free(r->nb[i]->map);
        free(r->nb[i]);
    }
    free(r->nb);
    free(r->names.named);
    free(r->continued);
    memset(r, 0, sizeof(*r));
}

/* ==== Neighbours ==== */

/* Rule 2a: the most neighbours it is applied among. */
#define COVER_MAX 64

static void ask_repair(struct repl *r, struct repl_neighbour *k, uint64_t from, uint64_t to);
static void cover(struct repl *r);

int repl_neighbour(struct repl *r, const char *conn, uint16_t *out)
{
    for (uint32_t i = 0; i < r->n; i++) {
        if (strcmp(r->nb[i]->conn, conn) == 0) {
            *out = (uint16_t)i;
            return TALLY_OK;
        }
    }
    if (r->n >= REPL_MAX_NEIGHBOURS)
        return TALLY_E_NOMEM;
    if (r->n == r->cap) {
        uint32_t cap = r->cap ? r->cap * 2 : 8;
        struct repl_neighbour **nb = realloc(r->nb, cap * sizeof(*nb));
        if (!nb)
            return TALLY_E_NOMEM;
        r->nb = nb;
        r->cap = cap;
    }
    size_t len = strlen(conn);
    struct repl_neighbour *k = calloc(1, sizeof(*k) + len + 1);
    if (!k)
        return TALLY_E_NOMEM;
    memcpy(k->conn, conn, len);
    r->nb[r->n] = k;
    *out = (uint16_t)r->n++;
    cover(r); /* it hears nobody yet */
    return TALLY_OK;
}

bool repl_owed(uint16_t pending, void *ctx)
{
    const struct repl *r = ctx;
    if (pending == REPL_NONE)
        return false;
    if (pending == REPL_ALL)
        return true;
    return r->n > 1 && !repl_covered(r, (uint16_t)(pending - REPL_FROM(0)));
}

/* ==== Who hears whom (rule 2a) ==== */

/* Whether j's last DIGEST said it hears the node of this hash. */
static bool hears(const struct repl_neighbour *j, uint64_t node_hash)
{
    for (uint32_t i = 0; i < j->nhears; i++)
        if (j->hears[i] == node_hash)
            return true;
    return false;
}

/* Which neighbours every other neighbour hears. Past COVER_MAX neighbours
 * none is (the check is quadratic): everything learned is forwarded. Ids
 * are compared by 64-bit hash: a collision would cover a neighbour that
 * another does not hear, at 2^-64 a pair, not guarded. */
static void cover(struct repl *r)
{
    for (uint32_t k = 0; k < r->n; k++) {
        struct repl_neighbour *nb = r->nb[k];
        nb->covered = r->n > 1 && r->n <= COVER_MAX && nb->node[0];
        for (uint32_t j = 0; j < r->n && nb->covered; j++)
            if (j != k && !hears(r->nb[j], nb->node_hash))
                nb->covered = false;
    }
}

/* Notes a neighbour's node id (from a message it sent itself). */
static void learn_node(struct repl *r, struct repl_neighbour *k, const char *node, size_t len)
{
    if (len > TALLY_NODE_ID_MAX || name_same(k->node, strlen(k->node), node, len))
        return;
    memcpy(k->node, node, len);
    k->node[len] = '\0';
    k->node_hash = tally_hash64(node, len, 0);
    cover(r);
}

/* What k's DIGEST says it hears. */
static void learn_hears(struct repl *r, struct repl_neighbour *k, const struct wire_digest *d)
{
    bool changed = k->nhears != d->nhears;
    for (uint32_t i = 0; i < d->nhears; i++) {
        uint64_t h = tally_hash64(d->hears[i].id, d->hears[i].len, 0);
        changed |= k->hears[i] != h;
        k->hears[i] = h;
    }
    k->nhears = d->nhears;
    if (changed)
        cover(r);
}

bool repl_covered(const struct repl *r, uint16_t k)
{
    return k < r->n && r->nb[k]->covered;
}

/* ==== Floods between groups (rule 2b) ==== */

static int conn_index(const struct repl *r, const char *conn)
{
    for (uint32_t i = 0; conn && i < r->n; i++)
        if (strcmp(r->nb[i]->conn, conn) == 0)
            return (int)i;
    return -1;
}

void repl_outer_heard(struct repl *r, const char *conn, uint64_t now_ms)
{
    if (conn_index(r, conn) < 0)
        r->outer_ms = now_ms ? now_ms : 1;
}

bool repl_flood_on(const struct repl *r, const char *conn, uint64_t now_ms, uint64_t quiet_ms)
{
    int k = conn_index(r, conn);
    if (k < 0 || !r->nb[k]->covered)
        return true;
    return quiet_ms && r->outer_ms && now_ms - r->outer_ms <= quiet_ms;
}

void repl_heard(struct repl *r, uint16_t k, uint64_t now_ms)
{
    if (k < r->n)
        r->nb[k]->heard_ms = now_ms ? now_ms : 1;
}

void repl_hearing(struct repl *r, uint64_t now_ms, uint64_t quiet_ms)
{
    for (uint32_t i = 0; i < r->n; i++) {
        struct repl_neighbour *k = r->nb[i];
        bool unheard = now_ms - k->heard_ms > quiet_ms;
        if (!k->heard_ms || unheard == k->unheard || !k->node[0])
            continue;
        k->unheard = unheard;
        /* A neighbour that said it heard k may have left out of its stream
         * what it learned from k: it repairs every bucket that differs. */
        for (uint32_t j = 0; j < r->n && unheard; j++)
            if (j != i && r->nb[j]->node[0] && hears(r->nb[j], k->node_hash))
                ask_repair(r, r->nb[j], 0, 0);
    }
}

/* Asks k for a repair of the SYNCs [from, to] of its stream (from 0: all
 * of it). An ask still open (sent, and no repair or equal digest since) is
 * folded in: its repair may have been lost too. */
static void ask_repair(struct repl *r, struct repl_neighbour *k, uint64_t from, uint64_t to)
{
    if (!k->want_repair)
        r->asked++;
    if (!k->want_repair && !k->asked_open) {
        k->lack_from = from;
        k->lack_until = to;
    } else {
        k->lack_from = from < k->lack_from ? from : k->lack_from;
        k->lack_until = to > k->lack_until ? to : k->lack_until;
    }
    k->want_repair = true;
}

/* Where the neighbour's SYNC stream stands, from a SYNC (seq: its number)
 * or a DIGEST (seq: the last one sent). Session 0 is a version 1 sender,
 * whose stream cannot be checked. */
static void stream_seen(struct repl *r, struct repl_neighbour *k, uint64_t session, uint64_t seq,
                        bool from_digest)
{
    if (session == 0 || (seq == 0 && !from_digest)) /* seq 0: a SYNC outside the stream */
        return;
    if (k->session != session) {
        k->new_session = k->session != 0; /* restarted, not first heard */
        k->session = session;
        k->seq = seq;
        k->map_cap = 0; /* its numbers were another stream's */
        memset(k->bucket_learned, 0, sizeof(k->bucket_learned));
        k->nlack = 0;
        free(k->map);
        k->map = NULL;
        /* It knows none of our numbers: our stream names every replica again. */
        if (r->names.named)
            memset(r->names.named, 0, r->names.cap);
        ask_repair(r, k, 0, 0);
        return;
    }
    uint64_t next = from_digest ? k->seq : k->seq + 1;
    if (seq > next)
        ask_repair(r, k, k->seq + 1, from_digest ? seq : seq - 1); /* those we lack */
    if (seq > k->seq)
        k->seq = seq;
}

/* ==== SYNC in ==== */

/* A peer's base of counter c (reset.c; after its slots, which it never
 * exceeds). A base changed goes on to every neighbour (table_mark_dirty). */
static int apply_base(struct tally_table *t, struct persist *p, const struct wire_sync *s,
                      const struct wire_sync_counter *wc, struct tally_counter *c,
                      const uint32_t *reps, const uint32_t *devs)
{
    bool rose = false, r;
    int rc = table_merge_stamps(t, c, wc->deleted, wc->reset, &rose);
    for (uint32_t i = 0; i < wc->nbase_slots && rc == TALLY_OK; i++) {
        const struct wire_sync_slot *b = &s->base_slots[wc->first_base_slot + i];
        rc = table_merge_base_slot(t, c, reps[b->replica_ref], b->p, b->n, &r);
        rose |= r;
    }
    for (uint32_t i = 0; i < wc->nbase_devs && rc == TALLY_OK; i++) {
        const struct wire_sync_dev *d = &s->base_devs[wc->first_base_dev + i];
        rc = table_merge_base_device(t, c, devs[d->device_ref], d->total, &r);
        rose |= r;
    }
    if (rc == TALLY_OK && rose && p)
        persist_base(p, t, c);
    return rc;
}

/* A peer's fold entries for c (fold.c), before its slots: a slot an entry
 * covers is then dropped or not taken. A raised entry goes on to every
 * neighbour, like a base. */
static void apply_folds(struct tally_table *t, struct persist *p, const struct wire_sync *s,
                        const struct wire_sync_counter *wc, struct tally_counter *c,
                        const uint32_t *reps)
{
    for (uint32_t i = 0; i < wc->nfolds; i++) {
        struct tally_fold f = s->folds[wc->first_fold + i];
        bool rose;
        f.replica = reps[f.replica];
        if (table_merge_fold(t, c, &f, &rose) == TALLY_OK && rose && p)
            persist_fold(p, t, c, f.replica, NULL);
    }
}

static int apply_counter(struct repl *r, struct tally_table *t, struct persist *p,
                         const struct wire_sync *s, const struct wire_sync_counter *wc,
                         const uint32_t *reps, const uint32_t *devs, uint16_t from)
{
    struct tally_counter *c;
    bool changed;
    int rc = table_get(t, wc->name, wc->name_len, TABLE_MERGE, &c);
    if (rc != TALLY_OK)
        return rc;
    apply_folds(t, p, s, wc, c, reps);
    for (uint32_t i = 0; i < wc->nslots; i++) {
        const struct wire_sync_slot *sl = &s->slots[wc->first_slot + i];
        uint32_t replica = reps[sl->replica_ref];
        /* Peers' states need no acknowledgement: what fails to reach the
         * log here is sent again by anti-entropy. */
        if (table_merge_slot_from(t, c, replica, sl->p, sl->n, from, &changed) == TALLY_OK &&
            changed) {
            r->learned |= repl_owed(from, r);
            if (p)
                persist_slot(p, t, c, counter_slot(c, replica), NULL);
        }
    }
    for (uint32_t i = 0; i < wc->ndevs; i++) {
        const struct wire_sync_dev *d = &s->devs[wc->first_dev + i];
        uint32_t dev = devs[d->device_ref];
        if (table_merge_device_from(t, c, dev, d->total, from, &changed) == TALLY_OK && changed) {
            r->learned |= repl_owed(from, r);
            if (p)
                persist_device(p, t, c, counter_device(c, dev));
        }
    }
    rc = wc->based ? apply_base(t, p, s, wc, c, reps, devs) : TALLY_OK;
    if (c->folded)
        fold_settle(t, c); /* what the entries cover goes */
    if (rc == TALLY_OK)
        rc = fold_counter_logged(t, p, c); /* a slot of our own past lives: ours to fold */
    table_drop_if_empty(t, c);             /* a counter sent with nothing in it */
    return rc;
}

/* Neighbour k's number `no` is our replica idx, for the rest of its stream. */
static void map_learn(struct repl_neighbour *k, uint32_t no, uint32_t idx)
{
    /* Past the bound or out of memory: unknown later, and it is asked to
     * name it again. */
    if (no < REPL_MAX_NUMBER &&
        array_reserve(&k->map, &k->map_cap, no, sizeof(*k->map)) == TALLY_OK)
        k->map[no] = idx + 1;
}

static void map_lacks(struct repl_neighbour *k, uint32_t no)
{
    for (uint32_t i = 0; i < k->nlack; i++)
        if (k->lack[i] == no)
            return;
    if (k->nlack < WIRE_MAX_NAMES)
        k->lack[k->nlack++] = no; /* the rest when these are named */
}

/* The registry index of each replica of s into reps. A named one is
 * registered, and its number learned if the message is of k's stream as we
 * know it (same: a repair of its current session too); then a number alone
 * is looked up, so that a message may number a replica before naming it.
 * False if some number is unknown: a message whose naming one was lost. */
static bool resolve_replicas(struct tally_table *t, struct repl_neighbour *k,
                             const struct wire_sync *s, bool same, uint32_t *reps, int *rc)
{
    bool known = true;
    for (uint32_t i = 0; i < s->nreplicas && *rc == TALLY_OK; i++) {
        const struct wire_sync_replica *rep = &s->replicas[i];
        if (!rep->node_id)
            continue;
        *rc = table_replica(t, rep->node_id, rep->len, rep->incarnation, &reps[i]);
        if (*rc == TALLY_OK && rep->numbered && same)
            map_learn(k, rep->no, reps[i]);
    }
    for (uint32_t i = 0; i < s->nreplicas && *rc == TALLY_OK; i++) {
        const struct wire_sync_replica *rep = &s->replicas[i];
        if (rep->node_id)
            continue;
        if (same && rep->no < k->map_cap && k->map[rep->no]) {
            reps[i] = k->map[rep->no] - 1;
        } else {
            map_lacks(k, rep->no);
            known = false;
        }
    }
    return known;
}

int repl_apply_sync(struct repl *r, struct tally_table *t, struct persist *p,
                    const struct wire_sync *s, uint16_t k)
{
    struct repl_neighbour *nb = r->nb[k];
    learn_node(r, nb, s->sender, s->sender_len);
    stream_seen(r, nb, s->session, s->seq, false);
    bool same = s->session != 0 && s->session == nb->session;
    if (same && s->seq == 0)
        nb->asked_open = false; /* the repair we asked for */
    uint32_t *reps = calloc(s->nreplicas + 1, sizeof(*reps));
    uint32_t *devs = calloc(s->ndevices + 1, sizeof(*devs));
    int rc = reps && devs ? TALLY_OK : TALLY_E_NOMEM;
    if (rc == TALLY_OK && !resolve_replicas(t, nb, s, same, reps, &rc)) {
        /* Taken as lost: the repair asked (with the numbers to name) sends
         * what this message carried, as for a gap. */
        r->unnamed++;
        ask_repair(r, nb, s->seq, s->seq);
        free(reps);
        free(devs);
        return TALLY_OK;
    }
    for (uint32_t i = 0; i < s->ndevices && rc == TALLY_OK; i++)
        rc = table_device(t, s->devices[i].id, s->devices[i].len, DEVICE_PEER, &devs[i]);
    /* A counter that cannot be merged (out of memory) does not hold up the
     * others; the first reason is reported, and a repair sends it again. */
    bool registered = rc == TALLY_OK;
    for (uint32_t i = 0; i < s->ncounters && registered; i++) {
        const struct wire_sync_counter *wc = &s->counters[i];
        unsigned b = name_bucket(wc->name, wc->name_len);
        uint64_t before = t->digest[b];
        int one = apply_counter(r, t, p, s, wc, reps, devs, REPL_FROM(k));
        if (rc == TALLY_OK)
            rc = one;
        if (same && s->seq && t->digest[b] != before)
            nb->bucket_learned[b] = s->seq; /* rule 5 */
    }
    free(reps);
    free(devs);
    return rc;
}

/* ==== DIGEST in ==== */

/* The request of d that names us, if any. */
static const struct wire_node_ref *asks(const struct wire_digest *d, const char *self)
{
    size_t len = strlen(self);
    for (uint32_t i = 0; i < d->nrequests; i++)
        if (name_same(d->requests[i].id, d->requests[i].len, self, len))
            return &d->requests[i];
    return NULL;
}

static void set_bit(uint64_t *mask, unsigned b)
{
    mask[b / 64] |= 1ULL << (b % 64);
}

/* Whether our SYNC seq ended within a counter (mark_continued). */
static bool continued(const struct repl *r, uint64_t seq)
{
    uint16_t i = (uint16_t)seq;
    return r->continued_lost || (r->continued && (r->continued[i / 8] & (1u << (i % 8))));
}

/* The SYNCs of our stream that request q lacks, if a repair can hold only
 * the entries they carried last: q is of our current session, and since is
 * within the 2^16 seqs an entry's sent mark tells apart. Since 0: send the
 * buckets whole. */
static struct repl_span asked_span(const struct repl *r, const struct wire_node_ref *q)
{
    if (q->since == 0 || q->session != r->session || r->seq - q->since >= UINT16_MAX)
        return (struct repl_span){0, 0};
    uint64_t until = q->until < r->seq ? q->until : r->seq;
    /* A SYNC that ended within a counter: the entries of it that went there
     * are marked with the seq of the SYNC it ended in. */
    while (until < r->seq && continued(r, until))
        until++;
    return (struct repl_span){q->since, until};
}

/* How far d's sender heard the stream of node `id` in `session`: the last
 * seq it says it has, 0 if it heard another session (it asks for a repair
 * then, or we have yet to see the new one), or UINT64_MAX if it does not
 * say (a sender before version 6, or one that does not hear that node):
 * then rule 5 goes by quiet alone. */
static uint64_t heard_of(const struct wire_digest *d, const char *id, uint64_t session)
{
    size_t len = strlen(id);
    for (uint32_t i = 0; i < d->nhears; i++) {
        if (!name_same(d->hears[i].id, d->hears[i].len, id, len))
            continue;
        if (d->heard[i].session == 0)
            return UINT64_MAX;
        return d->heard[i].session == session ? d->heard[i].seq : 0;
    }
    return UINT64_MAX;
}

/* Rule 5: whether k, by its DIGEST d, heard every other neighbour j's stream
 * as far as the last SYNC of j that changed bucket b here. A change learned
 * from j that k hears itself is not sent on to k (rule 2a): until j's own
 * SYNC reaches k, the bucket differs, and is no loss. */
static bool heard_what_we_learned(const struct repl *r, uint16_t k, const struct wire_digest *d,
                                  unsigned b)
{
    for (uint32_t j = 0; j < r->n; j++) {
        const struct repl_neighbour *nb = r->nb[j];
        if (j != k && nb->bucket_learned[b] &&
            heard_of(d, nb->node, nb->session) < nb->bucket_learned[b])
            return false;
    }
    return true;
}

/* Rule 5: whether k, by its DIGEST d, heard some other neighbour j's stream
 * further than we have: j's SYNCs on their way to us may then be what the
 * buckets differ by, and it is not k that lacks them. */
static bool behind_it(const struct repl *r, uint16_t k, const struct wire_digest *d)
{
    for (uint32_t j = 0; j < r->n; j++) {
        const struct repl_neighbour *nb = r->nb[j];
        uint64_t heard = j == k || !nb->session ? 0 : heard_of(d, nb->node, nb->session);
        if (heard != UINT64_MAX && heard > nb->seq)
            return true;
    }
    return false;
}

unsigned repl_digest_seen(struct repl *r, uint16_t k, const struct wire_digest *d,
                          const uint64_t *ours, const char *self, uint64_t *dump,
                          struct repl_span *span)
{
    struct repl_neighbour *nb = r->nb[k];
    unsigned n = 0;
    learn_node(r, nb, d->sender, d->sender_len);
    learn_hears(r, nb, d);
    stream_seen(r, nb, d->session, d->seq, true);
    memset(dump, 0, TALLY_BUCKETS / 8);
    *span = (struct repl_span){0, 0};
    if (nb->asked_open && memcmp(d->digest, ours, sizeof(d->digest)) == 0)
        nb->asked_open = false; /* nothing left to repair */
    const struct wire_node_ref *q = asks(d, self);
    if (q) {
        *span = asked_span(r, q);
        /* Numbers it could not resolve: our stream names them again. */
        for (uint32_t i = 0; i < q->nnames; i++)
            if (q->names[i] < r->names.cap)
                r->names.named[q->names[i]] = 0;
        for (unsigned b = 0; b < TALLY_BUCKETS; b++)
            if (d->digest[b] != ours[b]) {
                set_bit(dump, b);
                n++;
            }
        return n;
    }
    /* A digest sent early to ask someone else is no measure of quiet. */
    if (d->nrequests)
        return 0;
    uint64_t heard = heard_of(d, self, r->session);
    bool behind = behind_it(r, k, d);
    for (unsigned b = 0; b < TALLY_BUCKETS && nb->have_prev && !behind; b++) {
        bool quiet = d->digest[b] == nb->prev_theirs[b] && ours[b] == nb->prev_ours[b];
        if (quiet && d->digest[b] != ours[b] && r->bucket_sent[b] <= heard &&
            heard_what_we_learned(r, k, d, b)) {
            set_bit(dump, b);
            n++;
        }
    }
    memcpy(nb->prev_theirs, d->digest, sizeof(nb->prev_theirs));
    memcpy(nb->prev_ours, ours, sizeof(nb->prev_ours));
    nb->have_prev = true;
    return n;
}

bool repl_wants_repair(const struct repl *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        if (r->nb[i]->want_repair && r->nb[i]->node[0])
            return true;
    return false;
}

enum repl_anew repl_anew_of(const struct tally_origin *o, uint64_t incarnation)
{
    if (o->incarnation && o->incarnation != incarnation)
        return REPL_ANEW_RESTARTED;
    return !o->alive || o->incarnation != incarnation ? REPL_ANEW_HEARD : REPL_ANEW_NO;
}

bool repl_replay_due(struct repl *r, uint16_t k, enum repl_anew anew, uint64_t now_ms,
                     uint64_t every_ms, uint64_t started_ms)
{
    if (k >= r->n)
        return false;
    struct repl_neighbour *nb = r->nb[k];
    bool restarted = nb->new_session || anew == REPL_ANEW_RESTARTED;
    bool recent = nb->replayed_ms && now_ms - nb->replayed_ms < every_ms;
    /* A first meeting while we were young (no replay) does not hide a
     * restart that follows it: until 2026-12-06 a hub that restarted
     * within peer_timeout_ms of its neighbour's start wanted every edge
     * from its carriers (4.1 to 4.3 s in test_presence_replay.py, where a
     * replay took 0.25 s). */
    bool due =
        (restarted || anew != REPL_ANEW_NO) && (!recent || (restarted && !nb->replayed_restart));
    nb->new_session = false;
    if (!due)
        return false;
    nb->replayed_ms = now_ms ? now_ms : 1;
    nb->replayed_restart = restarted;
    nb->replay_from = 0;
    nb->replaying = restarted || now_ms - started_ms >= every_ms;
    return nb->replaying;
}

int repl_find(const struct repl *r, const char *conn, const char *node, size_t len)
{
    int k = conn_index(r, conn);
    if (k < 0 || strlen(r->nb[k]->node) != len || memcmp(r->nb[k]->node, node, len) != 0)
        return -1;
    return k;
}

uint32_t repl_alive(const struct repl *r, const char **ids, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->n && n < max; i++)
        if (r->nb[i]->node[0] && r->nb[i]->heard_ms && !r->nb[i]->unheard)
            ids[n++] = r->nb[i]->node;
    return n;
}

void repl_digest(struct repl *r, struct wire_digest *d, const char *self, const uint64_t *digest)
{
    memset(d, 0, sizeof(*d));
    d->sender = self;
    d->sender_len = strlen(self);
    d->session = r->session;
    d->seq = r->seq;
    for (uint32_t i = 0; i < r->n && d->nhears < WIRE_MAX_HEARS; i++) {
        struct repl_neighbour *k = r->nb[i];
        if (k->heard_ms && !k->unheard && k->node[0]) {
            d->heard[d->nhears] = (struct wire_stream){k->session, k->seq};
            d->hears[d->nhears++] = (struct wire_id){k->node, strlen(k->node)};
        }
    }
    for (uint32_t i = 0; i < r->n && d->nrequests < WIRE_MAX_REQUESTS; i++) {
        struct repl_neighbour *k = r->nb[i];
        if (!k->want_repair || !k->node[0])
            continue;
        struct wire_node_ref *q = &d->requests[d->nrequests++];
        q->id = k->node;
        q->len = strlen(k->node);
        q->nnames = k->nlack;
        memcpy(q->names, k->lack, k->nlack * sizeof(*k->lack));
        q->since = k->lack_from;
        q->until = k->lack_from ? k->lack_until : 0;
        q->session = k->session;
        k->nlack = 0;
        k->want_repair = false;
        k->asked_open = true;
    }
    memcpy(d->digest, digest, sizeof(d->digest));
}

/* ==== SYNC out ==== */

static int finish(struct repl *r, struct wire_sync_writer *w, const struct repl_out *out)
{
    if (sync_writer_empty(w))
        return TALLY_OK;
    /* A message to one neighbour is outside the numbered stream (seq 0,
     * which receivers do not check), or the others would see a gap; it
     * names every replica, since the stream's names may not have reached it. */
    w->names = out->to_one ? NULL : &r->names;
    if (!out->to_one && r->continued) { /* a bit of 2^16 SYNCs ago */
        uint16_t i = (uint16_t)(r->seq + 1);
        r->continued[i / 8] &= (uint8_t) ~(1u << (i % 8));
    }
    int rc = sync_writer_finish(w, out->self, r->session, out->to_one ? 0 : ++r->seq);
    if (rc == TALLY_OK)
        out->send(&w->out, out->ctx);
    return rc;
}

/* What the writer calls when the next entry would take a message past
 * max_message_bytes: the message so far is sent, and the counter goes on in
 * the next (wire.c, add_counter). */
struct sending {
    struct repl *r;
    const struct repl_out *out;
};

static int send_full(struct wire_sync_writer *w, void *ctx)
{
    const struct sending *s = ctx;
    return finish(s->r, w, s->out);
}

static void bound(struct wire_sync_writer *w, struct sending *s)
{
    w->max_bytes = s->out->max_bytes;
    w->full = send_full;
    w->full_ctx = s;
}

/* After c's deltas were written: what was pending is marked as carried by
 * the message under way, seq r->seq + 1 (some went in the messages the
 * writer sent within c, which mark_continued notes). */
static void clear_pending(const struct repl *r, struct tally_counter *c)
{
    uint16_t sent = (uint16_t)(r->seq + 1);
    for (uint32_t i = 0; i < c->nslots; i++) {
        if (c->slots[i].pending != REPL_NONE)
            c->slots[i].sent = sent;
        c->slots[i].pending = REPL_NONE;
    }
    for (uint32_t i = 0; i < counter_ndevs(c); i++) {
        struct tally_dev *d = &counter_devs(c)[i];
        if (d->pending != REPL_NONE)
            d->sent = sent;
        d->pending = REPL_NONE;
    }
}

/* The SYNCs [from, to] were sent while a counter was written: each may end
 * within it (repl_span's until goes on past them). */
static void mark_continued(struct repl *r, uint64_t from, uint64_t to)
{
    if (from > to)
        return;
    if (!r->continued && !(r->continued = calloc(1, (UINT16_MAX + 1) / 8)))
        r->continued_lost = true; /* every repair then holds all since */
    for (uint64_t s = from; s <= to && r->continued; s++)
        r->continued[(uint16_t)s / 8] |= (uint8_t)(1u << ((uint16_t)s % 8));
}

static bool owed_entry(uint16_t pending, uint16_t sent, void *ctx)
{
    (void)sent;
    return repl_owed(pending, ctx);
}

size_t repl_send_deltas(struct repl *r, struct tally_table *t, struct wire_sync_writer *w,
                        const struct repl_out *out, size_t budget)
{
    size_t done = 0;
    struct sending sending = {r, out};
    bound(w, &sending);
    r->learned = false;
    for (struct tally_counter *c; done < budget && (c = table_pop_repl(t)); done++) {
        uint64_t before = r->seq;
        uint32_t written = w->ncounters;
        if (sync_writer_add_delta(w, t, c, owed_entry, r) != TALLY_OK)
            r->failed++;
        mark_continued(r, before + 1, r->seq);
        clear_pending(r, c);
        /* It went out in the SYNCs the writer sent within it, or goes in
         * the one under way. */
        if (r->seq != before || w->ncounters != written)
            r->bucket_sent[name_bucket(c->name, c->name_len)] = r->seq + 1;
    }
    if (table_repl_pending(t))
        r->learned = true; /* the rest at the next tick */
    finish(r, w, out);
    w->full = NULL;
    return done;
}

/* An entry whose last carrier was a SYNC of the span (compared mod 2^16:
 * one carried 2^16 seqs before may be taken too, which only widens the
 * repair). One carried later the asker has, or lacks in a gap it sees. */
static bool sent_within(uint16_t pending, uint16_t sent, void *ctx)
{
    const struct repl_span *s = ctx;
    (void)pending; /* pending: it goes out in the stream */
    return (uint16_t)(sent - s->since) <= (uint16_t)(s->until - s->since);
}

size_t repl_send_buckets(struct repl *r, struct tally_table *t, struct wire_sync_writer *w,
                         const struct repl_out *out, const uint64_t *mask,
                         const struct repl_span *span)
{
    size_t n = 0;
    struct sending sending = {r, out};
    struct repl_span s = span && span->since ? *span : (struct repl_span){0, 0};
    bound(w, &sending);
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        unsigned b = name_bucket(c->name, c->name_len);
        if (!(mask[b / 64] & (1ULL << (b % 64))) ||
            (s.since && !sync_writer_owes(t, c, sent_within, &s)))
            continue;
        if ((s.since ? sync_writer_add_delta(w, t, c, sent_within, &s)
                     : sync_writer_add(w, t, c)) != TALLY_OK)
            r->failed++;
        n++;
    }
    finish(r, w, out);
    w->full = NULL;
    return n;
}
