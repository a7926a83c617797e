/*
 * test_repl.c - the replication protocol of repl.c, on nodes simulated in
 * memory: each has its table and its repl state, and a SYNC it sends reaches
 * every neighbour (a bridge broadcast), unless the test drops it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

#define MAXN 6

struct msg {
    uint8_t *data;
    size_t len;
};

struct node {
    char name[8];
    struct tally_table t;
    struct repl r;
    struct wire_sync_writer w;
    uint32_t self;
    bool link[MAXN];
    struct msg out[64];
    int nout;
    size_t slots_sent; /* slots and devices in every SYNC it sent */
};

static struct node nodes[MAXN];
static int nnodes;

static void collect(const struct wire_buf *b, void *ctx)
{
    struct node *n = ctx;
    struct wire_sync s;
    ck_assert_int_lt(n->nout, 64);
    n->out[n->nout].data = malloc(b->len);
    memcpy(n->out[n->nout].data, b->data, b->len);
    n->out[n->nout++].len = b->len;
    ck_assert_int_eq(wire_decode_sync(b->data, b->len, &s), TALLY_OK);
    n->slots_sent += s.nslots + s.ndevs;
    wire_sync_free(&s);
}

/* The max_message_bytes of every node (setup: 65536). */
static size_t max_bytes;

static struct repl_out out_of(struct node *n)
{
    return (struct repl_out){n->name, max_bytes, collect, n, false};
}

static void setup(int count)
{
    nnodes = count;
    max_bytes = 65536;
    memset(nodes, 0, sizeof(nodes));
    for (int i = 0; i < count; i++) {
        struct node *n = &nodes[i];
        ck_assert_int_lt(snprintf(n->name, sizeof(n->name), "n%d", i), (int)sizeof(n->name));
        table_init(&n->t, 1000, 100);
        repl_init(&n->r, 1000 + (uint64_t)i);
        ck_assert_int_eq(table_replica(&n->t, n->name, strlen(n->name), 7, &n->self), TALLY_OK);
    }
}

static void teardown(void)
{
    for (int i = 0; i < nnodes; i++) {
        for (int m = 0; m < nodes[i].nout; m++)
            free(nodes[i].out[m].data);
        table_free(&nodes[i].t);
        repl_free(&nodes[i].r);
        sync_writer_free(&nodes[i].w);
    }
}

static void link_nodes(int a, int b)
{
    nodes[a].link[b] = nodes[b].link[a] = true;
}

/* The index node `at` gives its neighbour `from` (by connection name). */
static uint16_t nb(int at, int from)
{
    uint16_t k;
    ck_assert_int_eq(repl_neighbour(&nodes[at].r, nodes[from].name, &k), TALLY_OK);
    return k;
}

static void inc(int i, const char *name, int64_t delta)
{
    struct tally_counter *c;
    ck_assert_int_eq(table_get(&nodes[i].t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_add(&nodes[i].t, c, nodes[i].self, delta, &changed), TALLY_OK);
    ck_assert(changed);
}

static int64_t value(int i, const char *name)
{
    struct tally_counter *c = table_find(&nodes[i].t, name, strlen(name));
    return c ? counter_value(c) : 0;
}

static void send_deltas(int i)
{
    struct repl_out o = out_of(&nodes[i]);
    repl_send_deltas(&nodes[i].r, &nodes[i].t, &nodes[i].w, &o, 100000);
}

/* Delivers node i's outbox over the links it has now, except message
 * `drop` (-1: none), and keeps it (for a copy slower to the others);
 * returns how many messages it holds. */
static int deliver_kept(int i, int drop)
{
    struct node *n = &nodes[i];
    for (int m = 0; m < n->nout; m++) {
        for (int j = 0; j < nnodes && m != drop; j++) {
            struct wire_sync s;
            if (!n->link[j])
                continue;
            ck_assert_int_eq(wire_decode_sync(n->out[m].data, n->out[m].len, &s), TALLY_OK);
            ck_assert_int_eq(repl_apply_sync(&nodes[j].r, &nodes[j].t, NULL, &s, nb(j, i)),
                             TALLY_OK);
            wire_sync_free(&s);
        }
    }
    return n->nout;
}

/* Delivers node i's outbox to its neighbours, except message `drop` (-1:
 * none); returns how many messages went. */
static int deliver(int i, int drop)
{
    struct node *n = &nodes[i];
    int sent = deliver_kept(i, drop);
    for (int m = 0; m < n->nout; m++)
        free(n->out[m].data);
    n->nout = 0;
    return sent;
}

/* Rounds of send + deliver until nobody has anything to send. */
static void settle(void)
{
    for (int round = 0; round < 20; round++) {
        int moved = 0;
        for (int i = 0; i < nnodes; i++) {
            send_deltas(i);
            moved += deliver(i, -1);
        }
        if (!moved)
            return;
    }
    ck_abort_msg("replication did not settle in 20 rounds");
}

/* The first seq of its stream the last repair asked of a node holds (0: whole). */
static struct repl_span span;

/* Node i's digest, as node j receives it; returns the buckets j must send
 * (and sets span). */
static unsigned digest_to(int i, int j, uint64_t *dump)
{
    static struct wire_digest d, got;
    struct wire_buf b = {0};
    repl_digest(&nodes[i].r, &d, nodes[i].name, nodes[i].t.digest);
    wire_encode_digest(&b, &d);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    unsigned n = repl_digest_seen(&nodes[j].r, nb(j, i), &got, nodes[j].t.digest, nodes[j].name,
                                  dump, &span);
    wbuf_free(&b);
    return n;
}

/* A repair, as plugin.c sends it: to its asker, outside the stream. */
static void repair(int from, const uint64_t *dump)
{
    struct repl_out o = out_of(&nodes[from]);
    o.to_one = true;
    repl_send_buckets(&nodes[from].r, &nodes[from].t, &nodes[from].w, &o, dump, &span);
    deliver(from, -1);
}

/* Every node meets every neighbour once (sessions learned, repairs asked
 * and answered on empty tables), as at the start of a cluster. */
static void meet(void)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < nnodes; i++)
            for (int j = 0; j < nnodes; j++)
                if (nodes[i].link[j])
                    ck_assert_uint_eq(digest_to(i, j, dump), 0);
    for (int i = 0; i < nnodes; i++)
        ck_assert(!repl_wants_repair(&nodes[i].r));
}

/* ==== Deltas and split horizon ==== */

START_TEST(test_star_sends_each_change_once)
{
    /* hub n0, leaves n1..n4 */
    setup(5);
    for (int i = 1; i < 5; i++)
        link_nodes(0, i);
    meet();
    for (int round = 0; round < 5; round++) {
        for (int i = 1; i < 5; i++) {
            inc(i, "shared", 1);
            char own[16];
            snprintf(own, sizeof(own), "own-%d", i);
            inc(i, own, 2);
        }
        settle();
    }
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(value(i, "shared"), 20);
        ck_assert_int_eq(value(i, "own-3"), 10);
        ck_assert_mem_eq(nodes[i].t.digest, nodes[0].t.digest, sizeof(nodes[0].t.digest));
    }
    /* A leaf sends only its own two slots a round, never what the hub taught
     * it; the hub sends each leaf's two slots once a round, to all. */
    for (int i = 1; i < 5; i++)
        ck_assert_uint_eq(nodes[i].slots_sent, 5 * 2);
    ck_assert_uint_eq(nodes[0].slots_sent, 5 * 4 * 2);
    teardown();
}
END_TEST

START_TEST(test_chain_forwards_what_it_learns)
{
    setup(3); /* n0 - n1 - n2 */
    link_nodes(0, 1);
    link_nodes(1, 2);
    meet();
    inc(0, "c", 5);
    send_deltas(0);
    deliver(0, -1);
    ck_assert(nodes[1].r.learned); /* n1 owes it to n2: it sends at once */
    send_deltas(1);
    deliver(1, -1);
    ck_assert_int_eq(value(2, "c"), 5);
    ck_assert(!nodes[2].r.learned); /* n2's only neighbour taught it */
    send_deltas(2);
    ck_assert_int_eq(nodes[2].nout, 0);
    teardown();
}
END_TEST

/* Each linked node hears the other at now_ms (rule 2a), and says so in a
 * DIGEST to each. */
static void hear_each_other(uint64_t now_ms)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    for (int i = 0; i < nnodes; i++)
        for (int j = 0; j < nnodes; j++)
            if (nodes[i].link[j])
                repl_heard(&nodes[j].r, nb(j, i), now_ms);
    for (int i = 0; i < nnodes; i++)
        for (int j = 0; j < nnodes; j++)
            if (nodes[i].link[j])
                digest_to(i, j, dump);
}

/* n0 writes delta to name and sends its SYNC; then n1 sends what it owes.
 * Returns how many SYNCs n1 sent (delivered to its neighbours). */
static int n1_forwards_n0s(const char *name, int64_t delta)
{
    inc(0, name, delta);
    send_deltas(0);
    deliver(0, -1);
    send_deltas(1);
    return deliver(1, -1);
}

static void full_mesh(int count)
{
    setup(count);
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++)
            link_nodes(i, j);
    meet();
}

START_TEST(test_a_full_mesh_forwards_nothing_every_neighbour_hears)
{
    /* n0, n1, n2 each bridged to the other two. Until n2 says it hears n0,
     * n1 forwards what it learns from n0; once it has, what n1 learns from
     * n0 is owed to nobody: n2 has it from n0's own SYNC. */
    full_mesh(3);
    ck_assert_int_eq(n1_forwards_n0s("before", 5), 1);
    settle();
    hear_each_other(1000);
    inc(0, "after", 5);
    send_deltas(0);
    deliver(0, -1);
    for (int i = 1; i < 3; i++) {
        ck_assert_int_eq(value(i, "after"), 5);
        ck_assert(!nodes[i].r.learned); /* nothing owed: no SYNC at once */
        send_deltas(i);
        ck_assert_int_eq(nodes[i].nout, 0);
    }
    inc(1, "own", 1); /* a node's own change still goes to all */
    send_deltas(1);
    ck_assert_int_eq(deliver(1, -1), 1);
    ck_assert_int_eq(value(2, "own"), 1);
    teardown();
}
END_TEST

START_TEST(test_a_neighbour_no_longer_heard_is_forwarded_to_and_repaired)
{
    /* The n0 - n2 link goes down: n1 leaves out what it learns from n0
     * while n2 still says it hears n0. Once n2 has not heard n0 for the
     * quiet time, it asks n1 (which said it heard n0) for a repair, and
     * its DIGEST no longer lists n0: n1 forwards n0's changes again, and
     * leaves them out once the link is back and heard. */
    uint64_t dump[TALLY_BUCKETS / 64];
    full_mesh(3);
    hear_each_other(1000);
    nodes[0].link[2] = nodes[2].link[0] = false;
    ck_assert_int_eq(n1_forwards_n0s("x", 5), 0);
    ck_assert_int_eq(value(2, "x"), 0);
    repl_heard(&nodes[2].r, nb(2, 1), 3500);
    repl_hearing(&nodes[2].r, 3500, 3000); /* n0 heard 2.5 s ago: still heard */
    ck_assert(!repl_wants_repair(&nodes[2].r));
    repl_heard(&nodes[2].r, nb(2, 1), 4001);
    repl_hearing(&nodes[2].r, 4001, 3000);
    ck_assert(repl_wants_repair(&nodes[2].r));
    ck_assert_uint_gt(digest_to(2, 1, dump), 0);
    ck_assert_uint_eq(span.since, 0); /* every bucket that differs */
    repair(1, dump);
    ck_assert_int_eq(value(2, "x"), 5);
    ck_assert_int_eq(n1_forwards_n0s("x", 2), 1);
    ck_assert_int_eq(value(2, "x"), 7);
    link_nodes(0, 2); /* back, and heard */
    hear_each_other(9000);
    repl_hearing(&nodes[2].r, 9000, 3000);
    digest_to(2, 1, dump);
    ck_assert_int_eq(n1_forwards_n0s("x", 1), 0);
    /* n2 lacks what n0 sent while cut (and the name of its replica): it
     * asks n0 itself */
    ck_assert(repl_wants_repair(&nodes[2].r));
    ck_assert_uint_gt(digest_to(2, 0, dump), 0);
    repair(0, dump);
    ck_assert_int_eq(value(2, "x"), 8);
    teardown();
}
END_TEST

START_TEST(test_a_flood_goes_on_only_where_a_neighbour_lacks_it)
{
    /* Rule 2b: n1 takes a flood (a group's sums) from n0, which n2 hears:
     * n2 had it from n0 too, and n1 sends it on only while a bridge to
     * another group (a connection of no neighbour, over which a flood
     * came) was heard within the quiet time. A node's own counts (quiet
     * time 0) stay in the group: never sent on for that bridge. */
    full_mesh(3);
    struct repl *r = &nodes[1].r;
    ck_assert(repl_flood_on(r, "n0", 500, 6000)); /* n2 not heard yet */
    hear_each_other(1000);
    ck_assert(!repl_flood_on(r, "n0", 1000, 6000));
    ck_assert(!repl_flood_on(r, "n0", 1000, 0));
    ck_assert(repl_flood_on(r, "g2-to-n1", 1000, 6000)); /* in from another group */
    repl_outer_heard(r, "n2", 1500); /* a neighbour's connection: no bridge out */
    ck_assert(!repl_flood_on(r, "n0", 1500, 6000));
    repl_outer_heard(r, "g2-to-n1", 2000);
    ck_assert(repl_flood_on(r, "n0", 2000, 6000));
    ck_assert(repl_flood_on(r, "n0", 8000, 6000));
    ck_assert(!repl_flood_on(r, "n0", 2000, 0));
    ck_assert(!repl_flood_on(r, "n0", 8001, 6000)); /* that bridge went quiet */
    teardown();
}
END_TEST

/* ==== Repairs ==== */

START_TEST(test_in_flight_is_not_repaired)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    for (int round = 0; round < 4; round++) {
        inc(0, "busy", 1);
        inc(1, "busy", 1);
        send_deltas(0);
        send_deltas(1);
        /* each digest follows its sender's SYNC on the same bridge, and
         * crosses the other's SYNC still in flight, every round */
        deliver(1, -1);
        ck_assert_uint_eq(digest_to(1, 0, dump), 0);
        deliver(0, -1);
        ck_assert_uint_eq(digest_to(0, 1, dump), 0);
        ck_assert(!repl_wants_repair(&nodes[0].r) && !repl_wants_repair(&nodes[1].r));
    }
    ck_assert_int_eq(value(0, "busy"), 8);
    ck_assert_int_eq(value(1, "busy"), 8);
    teardown();
}
END_TEST

START_TEST(test_gap_asks_for_a_repair)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    inc(0, "x", 3);
    send_deltas(0);
    deliver(0, 0); /* lost */
    ck_assert(!repl_wants_repair(&nodes[1].r));
    inc(0, "y", 1);
    send_deltas(0);
    deliver(0, -1); /* seq 2 after 0: a gap */
    ck_assert(repl_wants_repair(&nodes[1].r));
    ck_assert_int_eq(value(1, "x"), 0);
    ck_assert_uint_gt(digest_to(1, 0, dump), 0); /* names n0: it sends what differs */
    ck_assert(!repl_wants_repair(&nodes[1].r));
    repair(0, dump);
    ck_assert_int_eq(value(1, "x"), 3);
    ck_assert_mem_eq(nodes[1].t.digest, nodes[0].t.digest, sizeof(nodes[0].t.digest));
    teardown();
}
END_TEST

/* n1 holds what n0 does: counter name's value, and every bucket's digest. */
static void n1_has_n0s(const char *name)
{
    ck_assert_int_eq(value(1, name), value(0, name));
    ck_assert_mem_eq(nodes[1].t.digest, nodes[0].t.digest, sizeof(nodes[0].t.digest));
}

/* Node i's counter `name` gets a slot of each of k replicas of other nodes
 * (far<r>, at base + r increments), as if learned from elsewhere: owed to
 * all its neighbours. */
static void many_slots(int i, const char *name, int k, uint64_t base)
{
    struct tally_counter *c;
    ck_assert_int_eq(table_get(&nodes[i].t, name, strlen(name), TABLE_MERGE, &c), TALLY_OK);
    for (int r = 0; r < k; r++) {
        char id[16];
        uint32_t rep;
        ck_assert_int_lt(snprintf(id, sizeof(id), "far%d", r), (int)sizeof(id));
        ck_assert_int_eq(table_replica(&nodes[i].t, id, strlen(id), 1, &rep), TALLY_OK);
        ck_assert_int_eq(
            table_merge_slot_from(&nodes[i].t, c, rep, base + (uint64_t)r, 0, REPL_ALL, &changed),
            TALLY_OK);
    }
}

/* n0 changes its slot of `name` in a SYNC that n1 misses, then in one it
 * gets `other`, or (far_after) big's slot of far0: n1 asks n0 for a repair
 * (dump, span). Returns the lost seq. */
static uint64_t gap_at_n1(const char *name, bool far_after, uint64_t *dump)
{
    inc(0, name, 5);
    send_deltas(0);
    uint64_t lost = nodes[0].r.seq;
    deliver(0, 0);
    if (far_after)
        many_slots(0, "big", 1, 1000);
    else
        inc(0, "other", 1);
    send_deltas(0);
    deliver(0, -1);
    ck_assert(repl_wants_repair(&nodes[1].r));
    ck_assert_uint_gt(digest_to(1, 0, dump), 0);
    return lost;
}

/* n0 sends counter big's 41 slots, then a change of its own slot of big,
 * which n1 misses, and another (see gap_at_n1), which it gets. */
static uint64_t lose_own_slot_of_big(bool far_after, uint64_t *dump)
{
    setup(2);
    link_nodes(0, 1);
    meet();
    many_slots(0, "big", 40, 1);
    inc(0, "big", 1); /* the stream names n0's replica here */
    send_deltas(0);
    deliver(0, -1);
    ck_assert_int_eq(value(1, "big"), value(0, "big"));
    return gap_at_n1("big", far_after, dump);
}

START_TEST(test_a_gap_is_repaired_by_what_the_lost_messages_carried)
{
    /* The repair holds n0's own slot of big, which the lost SYNC carried
     * last: not big's 41 slots, nor far0's, which a SYNC after the gap
     * carried, and n1 got. */
    uint64_t dump[TALLY_BUCKETS / 64];
    uint64_t lost = lose_own_slot_of_big(true, dump);
    ck_assert_uint_eq(span.since, lost); /* the messages n1 lacked */
    ck_assert_uint_eq(span.until, lost);
    size_t before = nodes[0].slots_sent;
    repair(0, dump);
    ck_assert_uint_eq(nodes[0].slots_sent - before, 1);
    n1_has_n0s("big");
    teardown();
}
END_TEST

START_TEST(test_a_counter_split_over_sync_messages_is_repaired_whole)
{
    /* big's 301 slots take two SYNCs of 4096 bytes, and each slot is
     * marked with the last one's seq; n1 loses the first. The repair of it
     * goes on past the SYNCs that ended within big, to the one marked. */
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    max_bytes = 4096;
    link_nodes(0, 1);
    meet();
    many_slots(0, "big", 300, 1);
    inc(0, "big", 1);
    uint64_t first = nodes[0].r.seq + 1;
    send_deltas(0);
    ck_assert_int_ge(nodes[0].nout, 2);
    deliver(0, 0);
    ck_assert(repl_wants_repair(&nodes[1].r));
    ck_assert_uint_gt(digest_to(1, 0, dump), 0);
    ck_assert_uint_eq(span.since, first);
    ck_assert_uint_eq(span.until, nodes[0].r.seq); /* not first alone */
    repair(0, dump);
    n1_has_n0s("big");
    teardown();
}
END_TEST

START_TEST(test_a_lost_repair_is_asked_for_again_at_the_next_gap)
{
    /* The repair of the first gap is lost; the next gap's ask reaches back
     * to the first, and its repair closes the ask: a third gap asks from
     * its own message. */
    uint64_t dump[TALLY_BUCKETS / 64];
    uint64_t lost = lose_own_slot_of_big(false, dump);
    struct repl_out o = out_of(&nodes[0]);
    o.to_one = true;
    repl_send_buckets(&nodes[0].r, &nodes[0].t, &nodes[0].w, &o, dump, &span);
    deliver(0, 0); /* the repair is lost */
    for (int round = 0; round < 2; round++) {
        uint64_t again = gap_at_n1("y", false, dump);
        ck_assert_uint_eq(span.since, round == 0 ? lost : again);
        ck_assert_uint_eq(span.until, again);
        repair(0, dump);
        ck_assert_int_eq(value(1, "big"), value(0, "big"));
        n1_has_n0s("y");
    }
    teardown();
}
END_TEST

START_TEST(test_lost_tail_seen_in_digest)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    inc(0, "x", 3);
    send_deltas(0);
    deliver(0, 0); /* the last SYNC before a quiet spell is lost */
    ck_assert_uint_eq(digest_to(0, 1, dump), 0);
    ck_assert(repl_wants_repair(&nodes[1].r)); /* its digest says seq 1 */
    ck_assert_uint_gt(digest_to(1, 0, dump), 0);
    repair(0, dump);
    ck_assert_int_eq(value(1, "x"), 3);
    teardown();
}
END_TEST

/* Whether node i's outbox message m names its replica (or numbers it alone);
 * its length into *len. */
static bool names_replica(int i, int m, size_t *len)
{
    struct wire_sync s;
    ck_assert_int_lt(m, nodes[i].nout);
    ck_assert_int_eq(wire_decode_sync(nodes[i].out[m].data, nodes[i].out[m].len, &s), TALLY_OK);
    ck_assert_uint_eq(s.nreplicas, 1);
    ck_assert(s.replicas[0].numbered);
    ck_assert_uint_eq(s.replicas[0].no, nodes[i].self);
    bool named = s.replicas[0].node_id != NULL;
    *len = nodes[i].out[m].len;
    wire_sync_free(&s);
    return named;
}

/* Node i comes back empty: a new table, a new life, a new session. */
static void restart_empty(int i)
{
    table_free(&nodes[i].t);
    repl_free(&nodes[i].r);
    table_init(&nodes[i].t, 1000, 100);
    repl_init(&nodes[i].r, 99);
    ck_assert_int_eq(
        table_replica(&nodes[i].t, nodes[i].name, strlen(nodes[i].name), 8, &nodes[i].self),
        TALLY_OK);
}

START_TEST(test_restart_is_a_new_session)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    inc(0, "x", 3);
    settle();
    /* n1 comes back empty: new table, new session */
    restart_empty(1);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0); /* n0 sees n1's new session */
    ck_assert(repl_wants_repair(&nodes[0].r));
    digest_to(0, 1, dump);                     /* names n1, which has nothing to send; and n1 ... */
    ck_assert(repl_wants_repair(&nodes[1].r)); /* ... has never heard n0 */
    ck_assert_uint_gt(digest_to(1, 0, dump), 0); /* n1 asks n0 */
    ck_assert_uint_eq(span.since, 0);            /* for everything: a stream new to it */
    repair(0, dump);
    ck_assert_int_eq(value(1, "x"), 3);
    /* n1 knows none of n0's replica numbers: n0's stream names its
     * replicas again since it heard n1's new session. */
    size_t len;
    inc(0, "x", 1);
    send_deltas(0);
    ck_assert(names_replica(0, 0, &len));
    deliver(0, -1);
    ck_assert_int_eq(value(1, "x"), 4);
    ck_assert_uint_eq(nodes[1].r.unnamed, 0);
    teardown();
}
END_TEST

/* Delivers node i's outbox to neighbour j alone (a publish to one
 * connection); returns how many messages went. */
static int deliver_to(int i, int j)
{
    struct node *n = &nodes[i];
    int sent = n->nout;
    for (int m = 0; m < n->nout; m++) {
        struct wire_sync s;
        ck_assert_int_eq(wire_decode_sync(n->out[m].data, n->out[m].len, &s), TALLY_OK);
        ck_assert_uint_eq(s.session, nodes[i].r.session);
        ck_assert_uint_eq(s.seq, 0); /* outside the stream */
        ck_assert_int_eq(repl_apply_sync(&nodes[j].r, &nodes[j].t, NULL, &s, nb(j, i)), TALLY_OK);
        wire_sync_free(&s);
        free(n->out[m].data);
    }
    n->nout = 0;
    return sent;
}

START_TEST(test_repair_to_its_asker_alone_is_outside_the_stream)
{
    /* n0 with neighbours n1 and n2; n1 loses a SYNC and asks n0 for a
     * repair, which goes to n1 alone: n2, which never sees it, sees no gap
     * in n0's stream, and what n1 learns goes on as its own deltas. */
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(3);
    link_nodes(0, 1);
    link_nodes(0, 2);
    meet();
    uint64_t seq = nodes[0].r.seq;
    inc(0, "x", 3);
    send_deltas(0);
    nodes[0].link[1] = false; /* n1 misses it */
    deliver(0, -1);
    nodes[0].link[1] = true;
    inc(0, "y", 1);
    send_deltas(0);
    deliver(0, -1);
    ck_assert(repl_wants_repair(&nodes[1].r));
    ck_assert_uint_gt(digest_to(1, 0, dump), 0);
    struct repl_out o = out_of(&nodes[0]);
    o.to_one = true;
    repl_send_buckets(&nodes[0].r, &nodes[0].t, &nodes[0].w, &o, dump, &span);
    ck_assert_int_gt(deliver_to(0, 1), 0);
    ck_assert_uint_eq(nodes[0].r.seq, seq + 2); /* the repair took no seq */
    ck_assert_int_eq(value(1, "x"), 3);
    ck_assert_mem_eq(nodes[1].t.digest, nodes[0].t.digest, sizeof(nodes[0].t.digest));
    inc(0, "z", 1);
    send_deltas(0);
    deliver(0, -1);
    ck_assert(!repl_wants_repair(&nodes[2].r)); /* n0's stream, whole at n2 */
    ck_assert(!repl_wants_repair(&nodes[1].r));
    ck_assert_int_eq(value(2, "z"), 1);
    teardown();
}
END_TEST

/* A neighbour that restarted is owed our viewer counts (presence_replay)
 * once per restart, whichever sign of it comes first: its new SYNC stream,
 * or its own PRESENCE of a new incarnation (anew, plugin.c). */
START_TEST(test_a_restarted_neighbour_is_owed_a_replay_once)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    const uint64_t every = 15000;
    setup(2);
    link_nodes(0, 1);
    meet();
    uint16_t k = nb(0, 1);
    ck_assert_int_eq(repl_find(&nodes[0].r, "n1", "n1", 2), k);
    ck_assert_int_eq(repl_find(&nodes[0].r, "n1", "n2", 2), -1); /* another node's, relayed */
    ck_assert_int_eq(repl_find(&nodes[0].r, "n9", "n9", 2), -1); /* no such connection */
    /* our own start, every ms before these times: a young node begins none */
    const uint64_t up = 0, t = every;
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_HEARD, t - 1, every, up));
    ck_assert(!nodes[0].r.nb[k]->replaying);
    /* first heard: a link that came up, not a restart (its own PRESENCE,
     * first heard, says if it is new: anew) */
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, t + 1000, every, up));
    /* owed at t - 1 */
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_HEARD, t + 1000, every, up));
    ck_assert(repl_replay_due(&nodes[0].r, k, REPL_ANEW_HEARD, t + 15000, every, up));
    ck_assert(nodes[0].r.nb[k]->replaying && nodes[0].r.nb[k]->replay_from == 0);
    /* the same start */
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_HEARD, t + 16000, every, up));

    /* n1 restarts: its PRESENCE of a new incarnation comes first, then its
     * new session: one replay. */
    ck_assert(repl_replay_due(&nodes[0].r, k, REPL_ANEW_RESTARTED, t + 30000, every, up));
    repl_free(&nodes[1].r);
    repl_init(&nodes[1].r, 77);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0);
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, t + 30500, every, up));
    /* ... and once more, the new session alone, well after */
    repl_free(&nodes[1].r);
    repl_init(&nodes[1].r, 78);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0);
    ck_assert(repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, t + 60000, every, up));
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, t + 60001, every, up));
    /* no such one */
    ck_assert(!repl_replay_due(&nodes[0].r, 9, REPL_ANEW_HEARD, t + 90000, every, up));
    teardown();
}
END_TEST

/* A node younger than every_ms begins no replay to a neighbour it meets (it
 * has just been sent what it holds), but one to a neighbour that restarts
 * after they met: it holds nothing. The first meeting's mark does not hide
 * the restart, and two signs of one restart are still one replay. */
START_TEST(test_a_young_node_replays_to_a_neighbour_that_restarted)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    const uint64_t every = 6000, up = 1000;
    /* how a node's own PRESENCE tells it anew (repl_anew_of) */
    struct tally_origin o = {0};
    ck_assert_int_eq(repl_anew_of(&o, 5), REPL_ANEW_HEARD); /* first heard */
    o.incarnation = 5;
    o.alive = true;
    ck_assert_int_eq(repl_anew_of(&o, 5), REPL_ANEW_NO);
    o.alive = false;
    ck_assert_int_eq(repl_anew_of(&o, 5), REPL_ANEW_HEARD); /* back after it expired */
    ck_assert_int_eq(repl_anew_of(&o, 6), REPL_ANEW_RESTARTED);
    setup(2);
    link_nodes(0, 1);
    meet();
    uint16_t k = nb(0, 1);
    /* met at 1.5 s: young, no replay */
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_HEARD, 1500, every, up));
    ck_assert(!nodes[0].r.nb[k]->replaying);
    /* n1 restarts at 4 s, 3 s after our start: its own PRESENCE of a new
     * incarnation, then its new SYNC stream */
    ck_assert(repl_replay_due(&nodes[0].r, k, REPL_ANEW_RESTARTED, 4000, every, up));
    ck_assert(nodes[0].r.nb[k]->replaying && nodes[0].r.nb[k]->replay_from == 0);
    repl_free(&nodes[1].r);
    repl_init(&nodes[1].r, 77);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0);
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, 4300, every, up));
    /* signs are matched by time: another new stream within every_ms of the
     * replay is taken for the same restart; one every_ms later is not */
    repl_free(&nodes[1].r);
    repl_init(&nodes[1].r, 78);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0);
    ck_assert(!repl_replay_due(&nodes[0].r, k, REPL_ANEW_NO, 5000, every, up));
    ck_assert(repl_replay_due(&nodes[0].r, k, REPL_ANEW_RESTARTED, 10001, every, up));
    teardown();
}
END_TEST

/* Node i takes a slot of 4 of replica "old" into counter `name`, and sends
 * it to no one: a difference between it and its neighbours no stream shows. */
static void hold_unsent(int i, const char *name)
{
    struct tally_counter *c;
    uint32_t other;
    ck_assert_int_eq(table_replica(&nodes[i].t, "old", strlen("old"), 1, &other), TALLY_OK);
    ck_assert_int_eq(table_get(&nodes[i].t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_merge_slot(&nodes[i].t, c, other, 4, 0, &changed), TALLY_OK);
    ck_assert(changed);
    while (table_pop_repl(&nodes[i].t))
        ; /* never sent */
}

/* Node i's outbox reaches neighbour `to` alone (a copy slow to the
 * others); kept for them if `keep`. */
static void deliver_to_one(int i, int to, bool keep)
{
    bool link[MAXN];
    memcpy(link, nodes[i].link, sizeof(link));
    for (int j = 0; j < nnodes; j++)
        nodes[i].link[j] = link[j] && j == to;
    if (keep)
        deliver_kept(i, -1);
    else
        deliver(i, -1);
    memcpy(nodes[i].link, link, sizeof(link));
}

/* Once `asker` has heard every stream that far, a difference is one: a slot
 * `holder` takes into x and never sends is repaired after a quiet interval. */
static void a_real_difference_is_repaired(int holder, int asker)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    int64_t before = value(asker, "x");
    hold_unsent(holder, "x");
    ck_assert_uint_eq(digest_to(asker, holder, dump), 0); /* not quiet yet: the bucket moved */
    ck_assert_uint_eq(digest_to(asker, holder, dump), 1);
    repair(holder, dump);
    ck_assert_int_eq(value(asker, "x"), before + 4);
}

START_TEST(test_quiet_difference_is_repaired)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    /* a difference no stream shows (a version 1 peer, say): n1 lacks a slot
     * n0 holds, and neither changes */
    hold_unsent(0, "q");
    ck_assert_uint_eq(digest_to(1, 0, dump), 0); /* the first sighting: not yet */
    inc(0, "q", 1);                              /* n0's bucket moves (not sent) */
    ck_assert_uint_eq(digest_to(1, 0, dump), 0); /* not quiet: it may be in flight */
    ck_assert_uint_eq(digest_to(1, 0, dump), 1); /* quiet for a whole interval */
    repair(0, dump);
    ck_assert_int_eq(value(1, "q"), 5);
    teardown();
}
END_TEST

/* A SYNC that takes longer than sync intervals to arrive (a broker far
 * behind under load) leaves two digests that differ, and neither side
 * changes: rule 5 took that for a loss, and repaired the bucket in every
 * round while the delta was on its way (under ASan in CI, 4,349 counters
 * at the hub of a star of 12 during 6 s of load). A DIGEST now says how
 * far its sender heard each stream, and a bucket waits for that. */
START_TEST(test_a_delta_in_flight_however_long_is_not_repaired)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    setup(2);
    link_nodes(0, 1);
    meet();
    repl_heard(&nodes[1].r, nb(1, 0), 1); /* as plugin.c marks each message */
    inc(0, "x", 1);
    send_deltas(0); /* on its way to n1, and slow */
    ck_assert_int_eq(nodes[0].nout, 1);
    for (int round = 0; round < 5; round++)
        ck_assert_uint_eq(digest_to(1, 0, dump), 0); /* n1 says it has not heard it */
    deliver(0, -1);
    ck_assert_int_eq(value(1, "x"), 1);
    ck_assert_uint_eq(digest_to(1, 0, dump), 0);
    a_real_difference_is_repaired(0, 1);
    /* A digest of a sender before version 6 says nothing of how far: rule
     * 5 goes by quiet alone, as it did. */
    inc(0, "x", 1);
    send_deltas(0);
    static struct wire_digest d;
    repl_digest(&nodes[1].r, &d, nodes[1].name, nodes[1].t.digest);
    ck_assert_uint_eq(d.nhears, 1);
    ck_assert_uint_eq(d.heard[0].session, 1000); /* n0's stream, as n1 heard it */
    d.heard[0] = (struct wire_stream){0, 0};
    uint16_t k = nb(0, 1);
    ck_assert_uint_eq(repl_digest_seen(&nodes[0].r, k, &d, nodes[0].t.digest, "n0", dump, &span),
                      0);
    ck_assert_uint_eq(repl_digest_seen(&nodes[0].r, k, &d, nodes[0].t.digest, "n0", dump, &span),
                      1);
    deliver(0, -1);
    teardown();
}
END_TEST

/* In a full mesh of three, n0 writes x; its SYNC reaches `fast` at once and
 * `slow` five digest rounds later. n1 takes n2's digests all along, and
 * repairs nothing: a copy late on one link is no loss. */
static void a_late_copy_is_no_loss(int fast, int slow)
{
    uint64_t dump[TALLY_BUCKETS / 64];
    full_mesh(3);
    hear_each_other(1000);
    inc(0, "x", 1);
    send_deltas(0);
    deliver_to_one(0, fast, true);
    ck_assert_int_eq(value(fast, "x"), 1);
    send_deltas(1);
    ck_assert_int_eq(nodes[1].nout, 0); /* n2 hears n0: n1 owes it nothing (rule 2a) */
    for (int round = 0; round < 5; round++)
        ck_assert_uint_eq(digest_to(2, 1, dump), 0);
    deliver_to_one(0, slow, false); /* at last */
    ck_assert_int_eq(value(slow, "x"), 1);
    ck_assert_uint_eq(digest_to(2, 1, dump), 0);
}

/* The same for a change n1 learned from n0 and did not send on, since n2
 * hears n0 itself (rule 2a): n0's SYNC may be slower to n2 than it was to
 * n1. n1 waits until n2's DIGEST says it heard n0's stream that far. */
START_TEST(test_a_delta_rule_2a_left_to_its_writer_is_not_repaired_in_flight)
{
    a_late_copy_is_no_loss(1, 2);
    a_real_difference_is_repaired(1, 2);
    teardown();
}
END_TEST

/* And the other way: n1 has yet to take n0's SYNC, which n2 has. n2's
 * buckets differ from n1's, and neither changes, but n2 lacks nothing: n1
 * does not repair it while n2's DIGEST says it heard n0's stream further
 * than n1 did. */
START_TEST(test_a_node_behind_on_a_third_stream_does_not_repair)
{
    a_late_copy_is_no_loss(2, 1);
    teardown();
}
END_TEST

/* ==== Replicas numbered per stream (SYNC version 5) ==== */

START_TEST(test_a_stream_names_each_replica_once)
{
    uint64_t all[TALLY_BUCKETS / 64];
    size_t first, second, whole;
    setup(2);
    link_nodes(0, 1);
    meet();
    inc(0, "x", 3);
    send_deltas(0);
    ck_assert(names_replica(0, 0, &first));
    deliver(0, -1);
    inc(0, "x", 2);
    send_deltas(0);
    ck_assert(!names_replica(0, 0, &second)); /* its number alone */
    ck_assert_uint_eq(first - second, 1 + strlen("n0") + 8);
    deliver(0, -1);
    ck_assert_int_eq(value(1, "x"), 5);
    ck_assert_uint_eq(nodes[1].r.unnamed, 0);
    /* A repair goes outside the stream, to one neighbour: it names every
     * replica, whatever the stream named. */
    memset(all, 0xff, sizeof(all));
    struct repl_out o = out_of(&nodes[0]);
    o.to_one = true;
    repl_send_buckets(&nodes[0].r, &nodes[0].t, &nodes[0].w, &o, all, NULL);
    ck_assert(names_replica(0, 0, &whole));
    ck_assert_int_eq(deliver_to(0, 1), 1);
    ck_assert_int_eq(value(1, "x"), 5);
    teardown();
}
END_TEST

START_TEST(test_a_name_lost_is_asked_for_and_named_again)
{
    /* n0 with neighbours n1 and n2; n1 misses the SYNC that named n0's
     * replica. The next one numbers it alone: n1 cannot resolve it, takes
     * the message as lost, and its DIGEST asks n0 for a repair and for that
     * number; n0's stream names it again. n2 sees none of this. */
    uint64_t dump[TALLY_BUCKETS / 64];
    size_t len;
    setup(3);
    link_nodes(0, 1);
    link_nodes(0, 2);
    meet();
    inc(0, "x", 3);
    send_deltas(0);
    nodes[0].link[1] = false;
    deliver(0, -1);
    nodes[0].link[1] = true;
    inc(0, "y", 1);
    send_deltas(0);
    ck_assert(!names_replica(0, 0, &len));
    deliver(0, -1);
    ck_assert_uint_eq(nodes[1].r.unnamed, 1);
    ck_assert_int_eq(value(1, "y"), 0); /* not applied */
    ck_assert_int_eq(value(2, "y"), 1);
    ck_assert(repl_wants_repair(&nodes[1].r));
    ck_assert_uint_eq(nodes[1].r.nb[nb(1, 0)]->nlack, 1);
    ck_assert_uint_eq(nodes[1].r.nb[nb(1, 0)]->lack[0], nodes[0].self);
    ck_assert_uint_gt(digest_to(1, 0, dump), 0);
    ck_assert_uint_eq(nodes[1].r.nb[nb(1, 0)]->nlack, 0);
    repair(0, dump);
    ck_assert_int_eq(value(1, "x"), 3);
    ck_assert_int_eq(value(1, "y"), 1);
    inc(0, "z", 1);
    send_deltas(0);
    ck_assert(names_replica(0, 0, &len)); /* named again, once */
    deliver(0, -1);
    inc(0, "z", 1);
    send_deltas(0);
    ck_assert(!names_replica(0, 0, &len));
    deliver(0, -1);
    for (int i = 1; i < 3; i++) {
        ck_assert_int_eq(value(i, "z"), 2);
        ck_assert(!repl_wants_repair(&nodes[i].r));
        ck_assert_mem_eq(nodes[i].t.digest, nodes[0].t.digest, sizeof(nodes[0].t.digest));
    }
    ck_assert_uint_eq(nodes[1].r.unnamed, 1);
    ck_assert_uint_eq(nodes[2].r.unnamed, 0);
    teardown();
}
END_TEST

/* A SYNC of n0's stream at seq with one replica numbered `no` (named n9,
 * or not) holding p on counter x, as n1 takes it. */
static void numbered_sync(uint64_t seq, uint32_t no, bool named, uint64_t p)
{
    struct wire_buf b = {0};
    struct wire_sync s;
    wbuf_bytes(&b, "TL\x05\x01", 4);
    wbuf_str8(&b, "n0", 2);
    wbuf_u64(&b, nodes[0].r.session);
    wbuf_varint(&b, seq);
    wbuf_varint(&b, 1);
    wbuf_varint(&b, ((uint64_t)no << 1) | named);
    if (named) {
        wbuf_str8(&b, "n9", 2);
        wbuf_u64(&b, 7);
    }
    wbuf_varint(&b, 0);
    wbuf_varint(&b, 1);
    wbuf_str8(&b, "x", 1);
    wbuf_varint(&b, 1);
    wbuf_varint(&b, 0);
    wbuf_varint(&b, p);
    wbuf_varint(&b, 0);
    for (int i = 0; i < 3; i++)
        wbuf_varint(&b, 0); /* no device, no base, no fold */
    ck_assert_int_eq(wire_decode_sync(b.data, b.len, &s), TALLY_OK);
    ck_assert_int_eq(repl_apply_sync(&nodes[1].r, &nodes[1].t, NULL, &s, nb(1, 0)), TALLY_OK);
    wire_sync_free(&s);
    wbuf_free(&b);
}

START_TEST(test_a_number_past_the_bound_is_not_learned)
{
    /* A number a neighbour could send to have us allocate gigabytes: the
     * replica is taken by its name, its number not learned. */
    setup(2);
    link_nodes(0, 1);
    meet();
    struct repl_neighbour *k = nodes[1].r.nb[nb(1, 0)];
    numbered_sync(1, REPL_MAX_NUMBER, true, 5);
    ck_assert_int_eq(value(1, "x"), 5);
    ck_assert_uint_eq(k->map_cap, 0);
    numbered_sync(2, REPL_MAX_NUMBER, false, 6);
    ck_assert_int_eq(value(1, "x"), 5);
    ck_assert_uint_eq(nodes[1].r.unnamed, 1);
    ck_assert_uint_eq(k->nlack, 1);
    ck_assert_uint_eq(k->lack[0], REPL_MAX_NUMBER);
    numbered_sync(3, REPL_MAX_NUMBER - 1, true, 7); /* just under: learned */
    numbered_sync(4, REPL_MAX_NUMBER - 1, false, 8);
    ck_assert_int_eq(value(1, "x"), 8);
    ck_assert_uint_eq(nodes[1].r.unnamed, 1);
    teardown();
}
END_TEST

Suite *repl_suite(void)
{
    Suite *s = suite_create("repl");
    TCase *tc = tcase_create("repl");
    tcase_add_test(tc, test_star_sends_each_change_once);
    tcase_add_test(tc, test_chain_forwards_what_it_learns);
    tcase_add_test(tc, test_a_full_mesh_forwards_nothing_every_neighbour_hears);
    tcase_add_test(tc, test_a_neighbour_no_longer_heard_is_forwarded_to_and_repaired);
    tcase_add_test(tc, test_a_flood_goes_on_only_where_a_neighbour_lacks_it);
    tcase_add_test(tc, test_in_flight_is_not_repaired);
    tcase_add_test(tc, test_gap_asks_for_a_repair);
    tcase_add_test(tc, test_lost_tail_seen_in_digest);
    tcase_add_test(tc, test_a_gap_is_repaired_by_what_the_lost_messages_carried);
    tcase_add_test(tc, test_a_counter_split_over_sync_messages_is_repaired_whole);
    tcase_add_test(tc, test_a_lost_repair_is_asked_for_again_at_the_next_gap);
    tcase_add_test(tc, test_restart_is_a_new_session);
    tcase_add_test(tc, test_a_restarted_neighbour_is_owed_a_replay_once);
    tcase_add_test(tc, test_a_young_node_replays_to_a_neighbour_that_restarted);
    tcase_add_test(tc, test_quiet_difference_is_repaired);
    tcase_add_test(tc, test_a_delta_in_flight_however_long_is_not_repaired);
    tcase_add_test(tc, test_a_delta_rule_2a_left_to_its_writer_is_not_repaired_in_flight);
    tcase_add_test(tc, test_a_node_behind_on_a_third_stream_does_not_repair);
    tcase_add_test(tc, test_repair_to_its_asker_alone_is_outside_the_stream);
    tcase_add_test(tc, test_a_stream_names_each_replica_once);
    tcase_add_test(tc, test_a_name_lost_is_asked_for_and_named_again);
    tcase_add_test(tc, test_a_number_past_the_bound_is_not_learned);
    suite_add_tcase(s, tc);
    return s;
}
