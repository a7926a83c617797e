/*
 * test_fold.c - folding the slots of retired incarnations (fold.c), on nodes
 * simulated in memory that replicate with the shipped repl.c and wire.c: a
 * node restarts without its state (a new incarnation, an empty table), its
 * peers hand its counts back, and it folds them into its running slot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

#define MAXN 3
#define MAXMSG 256

struct msg {
    uint8_t *data;
    size_t len;
};

struct node {
    char name[16];
    uint64_t incarnation;
    struct tally_table t;
    struct repl r;
    struct wire_sync_writer w;
    struct fold_gc gc;
    uint32_t self;
    struct msg out[MAXMSG];
    int nout;
};

static struct node nodes[MAXN];
static bool cut[MAXN][MAXN]; /* a link that drops what is sent over it */
static uint64_t now_ms;
static uint64_t doc_ms; /* the time_ms of stats documents: each a later one */

static void collect(const struct wire_buf *b, void *ctx)
{
    struct node *n = ctx;
    ck_assert_int_lt(n->nout, MAXMSG);
    n->out[n->nout].data = malloc(b->len);
    memcpy(n->out[n->nout].data, b->data, b->len);
    n->out[n->nout++].len = b->len;
}

static struct repl_out out_of(struct node *n)
{
    return (struct repl_out){n->name, 65536, collect, n, false};
}

/* Node i starts (again) empty, as incarnation inc. */
static void start(int i, uint64_t inc)
{
    struct node *n = &nodes[i];
    table_init(&n->t, 1000, 100);
    repl_init(&n->r, 1000 + inc);
    fold_gc_init(&n->gc, 60000, 0);
    n->incarnation = inc;
    ck_assert_int_eq(table_replica(&n->t, n->name, strlen(n->name), inc, &n->self), TALLY_OK);
    table_set_self(&n->t, n->self);
}

static void stop(int i)
{
    struct node *n = &nodes[i];
    for (int m = 0; m < n->nout; m++)
        free(n->out[m].data);
    n->nout = 0;
    table_free(&n->t);
    repl_free(&n->r);
    sync_writer_free(&n->w);
    fold_gc_free(&n->gc);
}

static void setup(void)
{
    memset(nodes, 0, sizeof(nodes));
    memset(cut, 0, sizeof(cut));
    now_ms = 1000;
    for (int i = 0; i < MAXN; i++) {
        snprintf(nodes[i].name, sizeof(nodes[i].name), "n%d", i);
        start(i, 1);
    }
}

static void teardown(void)
{
    for (int i = 0; i < MAXN; i++)
        stop(i);
}

static void inc(int i, const char *name, int64_t delta)
{
    struct tally_counter *c;
    bool changed;
    ck_assert_int_eq(table_get(&nodes[i].t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_add(&nodes[i].t, c, nodes[i].self, delta, &changed), TALLY_OK);
}

static struct tally_counter *find(int i, const char *name)
{
    return table_find(&nodes[i].t, name, strlen(name));
}

static int64_t value(int i, const char *name)
{
    struct tally_counter *c = find(i, name);
    return c ? table_value(&nodes[i].t, c) : 0;
}

static uint32_t slots(int i, const char *name)
{
    struct tally_counter *c = find(i, name);
    return c ? c->nslots : 0;
}

static uint32_t folds(int i, const char *name)
{
    struct tally_counter *c = find(i, name);
    const struct tally_folds *f = c ? table_folds(&nodes[i].t, c) : NULL;
    return f ? f->n : 0;
}

/* Applies one message of node i at node j. */
static void apply(int i, int j, const struct msg *m)
{
    struct wire_sync s;
    uint16_t k;
    ck_assert_int_eq(wire_decode_sync(m->data, m->len, &s), TALLY_OK);
    ck_assert_int_eq(repl_neighbour(&nodes[j].r, nodes[i].name, &k), TALLY_OK);
    ck_assert_int_eq(repl_apply_sync(&nodes[j].r, &nodes[j].t, NULL, &s, k), TALLY_OK);
    wire_sync_free(&s);
}

/* Delivers node i's outbox over every link that is not cut. */
static int deliver(int i)
{
    struct node *n = &nodes[i];
    int sent = n->nout;
    for (int m = 0; m < n->nout; m++) {
        for (int j = 0; j < MAXN; j++)
            if (j != i && !cut[i][j])
                apply(i, j, &n->out[m]);
        free(n->out[m].data);
    }
    n->nout = 0;
    return sent;
}

static void settle(void)
{
    for (int round = 0; round < 30; round++) {
        int moved = 0;
        for (int i = 0; i < MAXN; i++) {
            struct repl_out o = out_of(&nodes[i]);
            repl_send_deltas(&nodes[i].r, &nodes[i].t, &nodes[i].w, &o, 100000);
            moved += deliver(i);
        }
        if (!moved)
            return;
    }
    ck_abort_msg("replication did not settle");
}

/* Node i sends its whole state (anti-entropy's repair, every bucket), as
 * plugin.c sends a repair: outside the stream. */
static void repair_from(int i)
{
    uint64_t all[TALLY_BUCKETS / 64];
    memset(all, 0xff, sizeof(all));
    struct repl_out o = out_of(&nodes[i]);
    o.to_one = true;
    repl_send_buckets(&nodes[i].r, &nodes[i].t, &nodes[i].w, &o, all, NULL);
    deliver(i);
}

static void stats_to(int i, int j);

/* Node i restarts without its state; its reachable peers repair it, and
 * their stats tell it the watermarks: it starts folding. */
static void restart_empty(int i)
{
    uint64_t inc = nodes[i].incarnation + 1;
    stop(i);
    start(i, inc);
    for (int j = 0; j < MAXN; j++)
        if (j != i && !cut[j][i])
            repair_from(j);
    for (int j = 0; j < MAXN; j++)
        if (j != i && !cut[j][i])
            stats_to(j, i);
}

static void heal(void)
{
    memset(cut, 0, sizeof(cut));
    for (int i = 0; i < MAXN; i++)
        repair_from(i);
    settle();
}

static void isolate(int i, bool on)
{
    for (int j = 0; j < MAXN; j++)
        cut[i][j] = cut[j][i] = on && i != j;
}

static void assert_everywhere(const char *name, int64_t want)
{
    for (int i = 0; i < MAXN; i++)
        ck_assert_msg(value(i, name) == want, "%s at n%d: %lld, want %lld", name, i,
                      (long long)value(i, name), (long long)want);
}

static void assert_same_digests(void)
{
    for (int i = 1; i < MAXN; i++)
        ck_assert_mem_eq(nodes[0].t.digest, nodes[i].t.digest, sizeof(nodes[0].t.digest));
}

/* ==== Folding keeps every total ==== */

START_TEST(test_fold_keeps_totals)
{
    setup();
    int64_t total = 0;
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < MAXN; i++) {
            inc(i, "c", i + 1);
            inc(i, "d", -(round + 1));
            total += i + 1;
        }
        settle();
        restart_empty(0);
        /* n0 folded what its peers handed back: the same total, one slot */
        ck_assert_int_eq(value(0, "c"), total);
        ck_assert_int_eq(slots(0, "c"), 3);
        settle();
        assert_everywhere("c", total);
    }
    settle();
    assert_everywhere("c", total);
    assert_everywhere("d", -3 * 55);
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(slots(i, "c"), 3); /* one per live node */
        ck_assert_uint_eq(folds(i, "c"), 10);
    }
    assert_same_digests();
    teardown();
}
END_TEST

/* A peer that saw more of the retired slot than the folder (a partition)
 * keeps the difference, which reaches the folder as a slot, and is folded. */
START_TEST(test_fold_receiver_holds_more)
{
    setup();
    inc(0, "c", 5);
    settle();
    /* n0's last increments reach n2 only */
    cut[0][1] = cut[1][0] = cut[1][2] = cut[2][1] = true;
    inc(0, "c", 2);
    settle();
    /* n2 goes away; n0 restarts empty and hears from n1 only */
    memset(cut, 0, sizeof(cut));
    isolate(2, true);
    restart_empty(0);
    ck_assert_int_eq(value(0, "c"), 5);
    inc(0, "c", 1);
    inc(2, "c", 10);
    settle();
    ck_assert_int_eq(value(1, "c"), 6);
    ck_assert_int_eq(value(2, "c"), 17);
    heal();
    assert_everywhere("c", 18);
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(slots(i, "c"), 2);
        ck_assert_uint_eq(folds(i, "c"), 1);
    }
    assert_same_digests();
    teardown();
}
END_TEST

/* A fold entry, the slot it covers and the raised slot, in any order, at a
 * node that never saw them: the same value and digest. */
START_TEST(test_fold_merge_order)
{
    setup();
    inc(0, "c", 4);
    inc(0, "c", -1);
    settle();
    /* the retired slot's state, as n1 would send it */
    repair_from(1);
    struct msg old = {0};
    struct repl_out o = out_of(&nodes[1]);
    uint64_t all[TALLY_BUCKETS / 64];
    memset(all, 0xff, sizeof(all));
    repl_send_buckets(&nodes[1].r, &nodes[1].t, &nodes[1].w, &o, all, NULL);
    ck_assert_int_eq(nodes[1].nout, 1);
    old = nodes[1].out[0];
    nodes[1].nout = 0;
    restart_empty(0);
    inc(0, "c", 2);
    o = out_of(&nodes[0]);
    repl_send_buckets(&nodes[0].r, &nodes[0].t, &nodes[0].w, &o, all, NULL);
    ck_assert_int_eq(nodes[0].nout, 1);
    struct msg folded = nodes[0].out[0];
    nodes[0].nout = 0;
    /* n2 restarts empty (another node: it folds nothing of n0's) and takes
     * the two messages in both orders, and each twice */
    const struct msg *orders[2][4] = {{&old, &folded, &old, &folded},
                                      {&folded, &old, &folded, &old}};
    uint64_t digest[2][TALLY_BUCKETS];
    for (int k = 0; k < 2; k++) {
        stop(2);
        start(2, 10 + (uint64_t)k);
        for (int m = 0; m < 4; m++)
            apply(k == 0 ? 1 : 0, 2, orders[k][m]);
        ck_assert_int_eq(value(2, "c"), 5);
        ck_assert_uint_eq(slots(2, "c"), 1);
        ck_assert_uint_eq(folds(2, "c"), 1);
        memcpy(digest[k], nodes[2].t.digest, sizeof(digest[k]));
    }
    ck_assert_mem_eq(digest[0], digest[1], sizeof(digest[0]));
    free(old.data);
    free(folded.data);
    teardown();
}
END_TEST

/* A counter that was reset is not folded (its base is per slot): its value
 * stays exact through the restart. */
START_TEST(test_fold_moves_bases)
{
    setup();
    inc(0, "r", 7);
    inc(0, "r", -2);
    settle();
    ck_assert_int_eq(table_reset(&nodes[1].t, find(1, "r"), false), TALLY_OK);
    inc(0, "r", 2);
    settle();
    assert_everywhere("r", 2);
    restart_empty(0);
    ck_assert_int_eq(value(0, "r"), 2);
    inc(0, "r", 1);
    settle();
    assert_everywhere("r", 3);
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(slots(i, "r"), 1);
        ck_assert_uint_eq(table_base(&nodes[i].t, find(i, "r"))->nslots, 1);
        ck_assert_uint_eq(folds(i, "r"), 1);
    }
    /* a delete after the fold hides it everywhere, and an increment shows it */
    ck_assert_int_eq(table_reset(&nodes[2].t, find(2, "r"), true), TALLY_OK);
    settle();
    for (int i = 0; i < MAXN; i++)
        ck_assert(table_hidden(&nodes[i].t, find(i, "r")));
    inc(1, "r", 4);
    settle();
    assert_everywhere("r", 4);
    assert_same_digests();
    teardown();
}
END_TEST

/* ==== Collection ==== */

/* Node j reads node i's stats document. */
static void stats_to(int i, int j)
{
    struct wire_buf b = {0};
    wbuf_str(&b, "{\"fold\":");
    fold_stats_json(&b, &nodes[i].t, &nodes[i].gc, now_ms, 4096);
    wbuf_str(&b, "}");
    ck_assert(!b.failed);
    ck_assert_int_eq(fold_peer_stats(&nodes[j].gc, &nodes[j].t, NULL, nodes[i].name, b.data, b.len,
                                     now_ms, ++doc_ms),
                     TALLY_OK);
    wbuf_free(&b);
}

/* Node i raises its watermark as far as its members allow; true if it rose. */
static bool collect_at(int i)
{
    bool retired;
    ck_assert_int_eq(fold_collect(&nodes[i].gc, &nodes[i].t, NULL, now_ms, &retired), TALLY_OK);
    return retired;
}

/* The lives of node `of` that node i takes as retired: those below this. */
static uint64_t below(int i, int of)
{
    return fold_below_of(&nodes[i].t, nodes[of].name, strlen(nodes[of].name));
}

/* Every node reads two documents of every node it reaches: the second shows
 * it is heard live (fold.c). */
static void gossip(void)
{
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < MAXN; i++)
            for (int j = 0; j < MAXN; j++)
                if (i != j && !cut[i][j])
                    stats_to(i, j);
}

START_TEST(test_fold_collected)
{
    setup();
    inc(0, "c", 3);
    inc(1, "c", 1);
    settle();
    struct repl_out o = out_of(&nodes[1]);
    uint64_t all[TALLY_BUCKETS / 64];
    memset(all, 0xff, sizeof(all));
    repl_send_buckets(&nodes[1].r, &nodes[1].t, &nodes[1].w, &o, all, NULL);
    struct msg stale = nodes[1].out[0]; /* holds n0's first life */
    nodes[1].nout = 0;
    for (int k = 0; k < 5; k++) {
        restart_empty(0);
        inc(0, "c", 1);
        settle();
    }
    assert_everywhere("c", 9);
    ck_assert_uint_eq(folds(1, "c"), 5);
    /* one document of each member read (as a retained copy may be): not yet
     * heard live, so nothing is collected */
    ck_assert(!collect_at(0));
    gossip();
    ck_assert(collect_at(0));
    ck_assert_uint_eq(below(0, 0), 6);
    ck_assert_uint_eq(folds(0, "c"), 0);
    gossip(); /* the others read n0's "retired" */
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(folds(i, "c"), 0);
        ck_assert_uint_eq(slots(i, "c"), 2);
    }
    assert_everywhere("c", 9);
    assert_same_digests();
    /* an old message holding a retired life changes nothing */
    apply(1, 2, &stale);
    apply(1, 0, &stale);
    assert_everywhere("c", 9);
    ck_assert_uint_eq(slots(2, "c"), 2);
    free(stale.data);
    teardown();
}
END_TEST

/* n's "fold" object as its stats would carry it now. */
static bool says_all(int i)
{
    struct wire_buf b = {0};
    fold_stats_json(&b, &nodes[i].t, &nodes[i].gc, now_ms, 4096);
    ck_assert(!b.failed);
    bool all = memmem(b.data, b.len, "\"full\":true", 11) != NULL;
    ck_assert(all == (memmem(b.data, b.len, "\"lowest\"", 8) != NULL));
    wbuf_free(&b);
    return all;
}

/* A node says all it knows (members, lowest lives, watermarks) only while
 * it or a member collects, or just after a member came or came back;
 * otherwise its own watermark, so that stats flooded to every node stay
 * O(1) a document; and a collecting node never retires on such a one. */
START_TEST(test_fold_stats_say_all_only_while_collecting)
{
    setup();
    inc(0, "c", 3);
    settle();
    ck_assert(says_all(0)); /* not yet heard its members: collecting */
    gossip();
    for (int i = 0; i < MAXN; i++)
        collect_at(i);
    ck_assert(says_all(1)); /* members just came */
    now_ms += FOLD_EAGER_MS;
    gossip();
    for (int i = 0; i < MAXN; i++)
        ck_assert(!says_all(i)); /* nothing to collect: own watermark only */
    /* n0 comes back without its state: collecting, it says all... */
    restart_empty(0);
    inc(0, "c", 1);
    settle();
    ck_assert(says_all(0));
    /* ...and reading its members' short documents retires nothing */
    now_ms += 1;
    for (int round = 0; round < 2; round++)
        for (int j = 1; j < MAXN; j++) {
            struct wire_buf b = {0};
            wbuf_str(&b, "{\"fold\":{\"collecting\":false,\"full\":false,\"below\":{}}}");
            ck_assert_int_eq(fold_peer_stats(&nodes[0].gc, &nodes[0].t, NULL, nodes[j].name, b.data,
                                             b.len, now_ms, ++doc_ms),
                             TALLY_OK);
            wbuf_free(&b);
        }
    ck_assert(!collect_at(0));
    /* the members hear it collecting and say all; then it collects */
    gossip();
    ck_assert(says_all(1));
    gossip();
    ck_assert(collect_at(0));
    assert_everywhere("c", 4);
    teardown();
}
END_TEST

/* A member that holds more of a retired life than the folder holds the
 * collection back until the difference is folded. */
START_TEST(test_fold_collection_waits_for_a_member)
{
    setup();
    inc(0, "c", 5);
    settle();
    gossip(); /* n1 has heard n2 */
    cut[0][1] = cut[1][0] = cut[1][2] = cut[2][1] = true;
    inc(0, "c", 2); /* reaches n2 only */
    settle();
    memset(cut, 0, sizeof(cut));
    isolate(2, true);
    now_ms += 1000;
    restart_empty(0);
    settle();
    stats_to(1, 0);
    /* n0 never heard n2 since it started, but n1 names it: not clean */
    ck_assert(!collect_at(0));
    isolate(2, false);
    gossip(); /* n2 holds more of n0's first life than the entry */
    collect_at(0);
    ck_assert_uint_le(below(0, 0), 1); /* the first life is not retired */
    heal();
    gossip();
    ck_assert(collect_at(0));
    ck_assert_uint_eq(below(0, 0), 2);
    gossip();
    assert_everywhere("c", 7);
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(folds(i, "c"), 0);
        ck_assert_uint_eq(slots(i, "c"), 1);
    }
    assert_same_digests();
    teardown();
}
END_TEST

/* A node away for longer than member_timeout_ms is not waited for; when it
 * comes back holding a slot of a life retired meanwhile, that slot is
 * discarded (the trade-off), not counted twice: by the folder, which
 * restarted without state 40 times since, as by the others, and by the
 * node itself once it hears the watermark. */
START_TEST(test_fold_retirement_reaches_a_node_that_missed_it)
{
    setup();
    inc(0, "c", 2);
    inc(2, "c", 1);
    settle();
    restart_empty(0);
    settle();
    gossip();
    isolate(2, true);
    now_ms += 60001;
    gossip();
    ck_assert(collect_at(0));
    gossip();
    for (int k = 0; k < 40; k++) {
        restart_empty(0);
        inc(0, "c", 1);
        settle();
        gossip();
        ck_assert(collect_at(0));
        gossip();
    }
    ck_assert_uint_eq(slots(2, "c"), 2); /* n2: n0's second life, and its own */
    ck_assert_uint_eq(below(2, 0), 0);
    isolate(2, false);
    heal();
    ck_assert_int_eq(value(0, "c"), 2 + 1 + 40);
    ck_assert_int_eq(value(1, "c"), 2 + 1 + 40);
    gossip(); /* n2 hears the watermark */
    ck_assert_uint_eq(below(2, 0), 42);
    assert_everywhere("c", 2 + 1 + 40);
    for (int i = 0; i < MAXN; i++) {
        ck_assert_uint_eq(folds(i, "c"), 0);
        ck_assert_uint_eq(slots(i, "c"), 2);
    }
    assert_same_digests();
    teardown();
}
END_TEST

/* ==== Nodes removed for good (removeNode) ==== */

static bool adopted_by(int i, const char *node, const char *by, bool settled)
{
    const struct fold_adopt *a = fold_adoption(&nodes[i].t, node, strlen(node));
    return a && strcmp(a->by, by) == 0 && a->settled == settled;
}

static uint64_t own_p(int i, const char *name)
{
    const struct tally_slot *s = counter_slot(find(i, name), nodes[i].self);
    return s ? s->p : 0;
}

static void assert_alike(int i, int j)
{
    ck_assert_mem_eq(nodes[i].t.digest, nodes[j].t.digest, sizeof(nodes[i].t.digest));
}

/* n2 dies for good; n0 adopts it: nothing is folded before n1 backs the
 * claim; then n2's slots are folded into n0's, collected everywhere, and
 * every total stays what it was; a late message of n2 changes nothing. */
START_TEST(test_remove_adopts_and_collects)
{
    setup();
    inc(0, "c", 3);
    inc(1, "c", 4);
    inc(2, "c", 5);
    inc(2, "d", 7);
    settle();
    gossip();
    struct repl_out o = out_of(&nodes[2]);
    uint64_t all[TALLY_BUCKETS / 64];
    memset(all, 0xff, sizeof(all));
    repl_send_buckets(&nodes[2].r, &nodes[2].t, &nodes[2].w, &o, all, NULL);
    struct msg late = nodes[2].out[0]; /* n2's state, delivered after its removal */
    nodes[2].nout = 0;
    isolate(2, true); /* n2 is gone */
    for (int i = 0; i < MAXN; i++)
        nodes[i].gc.alive_ms = 5000;
    ck_assert_str_eq(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n2", now_ms),
                     "the node is alive: stop it for good first");
    now_ms += 6000;
    ck_assert_str_eq(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n0", now_ms),
                     "a node cannot remove itself");
    ck_assert_str_eq(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n9", now_ms), "unknown node");
    ck_assert_ptr_null(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n2", now_ms));
    ck_assert_ptr_nonnull(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n2", now_ms));
    collect_at(0); /* n1 has not backed the claim */
    ck_assert(adopted_by(0, "n2", "n0", false));
    ck_assert_uint_eq(slots(0, "c"), 3);
    gossip(); /* n1 hears the claim, and backs it in a live document */
    ck_assert(adopted_by(1, "n2", "n0", false));
    ck_assert(collect_at(0));
    ck_assert(adopted_by(0, "n2", "n0", true));
    ck_assert_uint_eq(slots(0, "c"), 2);
    ck_assert_uint_eq(folds(0, "c"), 1);
    ck_assert_uint_eq(own_p(0, "c"), 3 + 5);
    ck_assert_uint_eq(own_p(0, "d"), 7);
    settle();
    ck_assert_uint_eq(slots(1, "c"), 2);
    ck_assert_int_eq(below(0, 2), 0); /* n1 still held n2's slots when it last said */
    for (int k = 0; k < 3; k++) {
        gossip();
        collect_at(0);
    }
    gossip();
    ck_assert_uint_eq(below(0, 2), UINT64_MAX);
    ck_assert_uint_eq(below(1, 2), UINT64_MAX);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(value(i, "c"), 12);
        ck_assert_int_eq(value(i, "d"), 7);
        ck_assert_uint_eq(slots(i, "c"), 2);
        ck_assert_uint_eq(slots(i, "d"), 1);
        ck_assert_uint_eq(folds(i, "c") + folds(i, "d"), 0);
        ck_assert(adopted_by(i, "n2", "n0", true));
    }
    assert_alike(0, 1);
    apply(2, 0, &late);
    apply(2, 1, &late);
    ck_assert_int_eq(value(0, "c"), 12);
    ck_assert_int_eq(value(1, "d"), 7);
    ck_assert_uint_eq(slots(1, "c"), 2);
    free(late.data);
    teardown();
}
END_TEST

/* n2 dies; a partition splits n0 from n1, and an admin removes n2 on both
 * sides. Neither claim settles while they are apart; once they meet, n1
 * backs n0's (the lower id) and only n0 folds: exact, nothing twice. */
START_TEST(test_remove_two_adopters_across_a_partition)
{
    setup();
    inc(0, "c", 1);
    inc(1, "c", 2);
    inc(2, "c", 40);
    settle();
    gossip();
    isolate(2, true);
    cut[0][1] = cut[1][0] = true;
    now_ms += 1000;
    ck_assert_ptr_null(fold_remove(&nodes[0].gc, &nodes[0].t, NULL, "n2", now_ms));
    ck_assert_ptr_null(fold_remove(&nodes[1].gc, &nodes[1].t, NULL, "n2", now_ms));
    for (int k = 0; k < 3; k++) {
        inc(0, "c", 1);
        inc(1, "c", 1);
        settle();
        gossip();
        collect_at(0);
        collect_at(1);
    }
    /* however long the partition lasts (past member_timeout_ms) */
    now_ms += 120000;
    gossip();
    collect_at(0);
    collect_at(1);
    ck_assert(adopted_by(0, "n2", "n0", false) && adopted_by(1, "n2", "n1", false));
    ck_assert_uint_eq(slots(0, "c"), 3);
    cut[0][1] = cut[1][0] = false;
    repair_from(0);
    repair_from(1);
    settle();
    gossip();
    ck_assert(adopted_by(1, "n2", "n0", false)); /* n1 backs the lower claim */
    ck_assert(!collect_at(1));
    ck_assert(collect_at(0));
    settle();
    for (int k = 0; k < 3; k++) {
        gossip();
        collect_at(0);
        collect_at(1);
    }
    gossip();
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(value(i, "c"), 1 + 2 + 40 + 6);
        ck_assert_uint_eq(slots(i, "c"), 2);
        ck_assert_uint_eq(folds(i, "c"), 0);
        ck_assert(adopted_by(i, "n2", "n0", true));
        ck_assert_uint_eq(below(i, 2), UINT64_MAX);
    }
    ck_assert_uint_eq(own_p(1, "c"), 2 + 3); /* n1 never folded */
    ck_assert_uint_eq(own_p(0, "c"), 1 + 3 + 40);
    ck_assert_uint_eq(nodes[0].t.adopt_conflicts + nodes[1].t.adopt_conflicts, 0);
    assert_alike(0, 1);
    teardown();
}
END_TEST

/* Claims merge by a total order: whatever order they arrive in, every node
 * ends with the same one (settled first, then the lower adopter id). */
START_TEST(test_remove_claims_merge_in_any_order)
{
    struct {
        const char *by;
        uint64_t below;
        bool settled;
    } claims[] = {{"n5", 9, true},           {"n3", UINT64_MAX, false}, {"n7", UINT64_MAX, true},
                  {"n4", UINT64_MAX, false}, {"n8", UINT64_MAX, true},  {"n1", 5, true},
                  {"n2", 9, false}};
    int n = sizeof(claims) / sizeof(claims[0]);
    for (int first = 0; first < n; first++) {
        struct tally_table t;
        table_init(&t, 10, 10);
        for (int k = 0; k < n; k++) {
            int i = (first + k * 3) % n;
            ck_assert_int_eq(fold_set_adopt(&t, NULL, "gone", 4, claims[i].by, claims[i].below,
                                            claims[i].settled),
                             TALLY_OK);
        }
        const struct fold_adopt *a = fold_adoption(&t, "gone", 4);
        ck_assert_str_eq(a->by, "n7");
        ck_assert_uint_eq(a->lives_below, UINT64_MAX);
        ck_assert(a->settled);
        ck_assert_int_eq(fold_set_adopt(&t, NULL, "gone", 4, "gone", 1, false), TALLY_E_WIRE);
        ck_assert_int_eq(fold_set_adopt(&t, NULL, "gone", 4, "n1", 0, false), TALLY_E_WIRE);
        table_free(&t);
    }
    /* n7 and n8 both settled, for every life: two sides settled apart */
    struct tally_table t;
    table_init(&t, 10, 10);
    ck_assert_int_eq(fold_set_adopt(&t, NULL, "gone", 4, "n8", UINT64_MAX, true), TALLY_OK);
    ck_assert_int_eq(fold_set_adopt(&t, NULL, "gone", 4, "n7", UINT64_MAX, true), TALLY_OK);
    ck_assert_uint_eq(t.adopt_conflicts, 1);
    table_free(&t);
}
END_TEST

/* A slot of edge e's life inc, as its hub merges it from an UP. */
static void edge_slot(int i, const char *name, uint64_t inc, uint64_t p)
{
    uint32_t r;
    struct tally_counter *c;
    bool changed;
    ck_assert_int_eq(table_replica(&nodes[i].t, "e", 1, inc, &r), TALLY_OK);
    ck_assert_int_eq(table_get(&nodes[i].t, name, strlen(name), TABLE_MERGE, &c), TALLY_OK);
    ck_assert_int_eq(table_merge_slot(&nodes[i].t, c, r, p, 0, &changed), TALLY_OK);
}

/* Edge e restarts without its state and reaches another hub: both hubs
 * hold its past life and claim it (fold_claim_past); one adopts it (the
 * lower id), folds it into its own slot and retires it: one slot per live
 * life again, every total the same, nothing folded twice. */
START_TEST(test_edge_past_lives_adopted_by_a_hub)
{
    setup();
    inc(0, "c", 1);
    inc(1, "c", 2);
    edge_slot(0, "c", 10, 5); /* e's first life, at its hub n0 */
    edge_slot(0, "d", 10, 3);
    settle();
    gossip();
    for (int i = 0; i < MAXN; i++)
        collect_at(i);
    ck_assert_int_eq(fold_claim_past(&nodes[0].gc, &nodes[0].t, NULL, "e", 10, now_ms), TALLY_OK);
    ck_assert_ptr_null(fold_adoption(&nodes[0].t, "e", 1)); /* its first life: nothing past */
    edge_slot(1, "c", 20, 4);                               /* e again, empty, now at hub n1 */
    settle();
    ck_assert_int_eq(fold_claim_past(&nodes[1].gc, &nodes[1].t, NULL, "e", 20, now_ms), TALLY_OK);
    ck_assert_int_eq(fold_claim_past(&nodes[0].gc, &nodes[0].t, NULL, "e", 20, now_ms), TALLY_OK);
    ck_assert(adopted_by(1, "e", "n1", false));
    gossip();
    ck_assert(adopted_by(1, "e", "n0", false)); /* the lower id */
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < MAXN; i++)
            collect_at(i);
        settle();
        gossip();
    }
    for (int i = 0; i < MAXN; i++) {
        ck_assert_int_eq(value(i, "c"), 1 + 2 + 5 + 4);
        ck_assert_int_eq(value(i, "d"), 3);
        ck_assert_uint_eq(slots(i, "c"), 3); /* n0, n1, and e's running life */
        ck_assert_uint_eq(slots(i, "d"), 1); /* n0's, holding e's first life */
        ck_assert_uint_eq(folds(i, "c") + folds(i, "d"), 0);
        ck_assert_uint_eq(fold_below_of(&nodes[i].t, "e", 1), 20);
        ck_assert_ptr_null(fold_adoption(&nodes[i].t, "e", 1)); /* over: the watermark says it */
    }
    /* a stale copy of the claim changes nothing, and is not kept */
    ck_assert_int_eq(fold_set_adopt(&nodes[2].t, NULL, "e", 1, "n1", 20, false), TALLY_OK);
    ck_assert_ptr_null(fold_adoption(&nodes[2].t, "e", 1));
    ck_assert_uint_eq(own_p(0, "c"), 1 + 5);
    ck_assert_uint_eq(own_p(1, "c"), 2); /* n1 never folded */
    assert_same_digests();
    teardown();
}
END_TEST

Suite *fold_suite(void)
{
    Suite *s = suite_create("fold");
    TCase *tc = tcase_create("fold");
    tcase_add_test(tc, test_fold_keeps_totals);
    tcase_add_test(tc, test_fold_receiver_holds_more);
    tcase_add_test(tc, test_fold_merge_order);
    tcase_add_test(tc, test_fold_moves_bases);
    tcase_add_test(tc, test_fold_collected);
    tcase_add_test(tc, test_fold_collection_waits_for_a_member);
    tcase_add_test(tc, test_fold_retirement_reaches_a_node_that_missed_it);
    tcase_add_test(tc, test_fold_stats_say_all_only_while_collecting);
    tcase_add_test(tc, test_remove_adopts_and_collects);
    tcase_add_test(tc, test_remove_two_adopters_across_a_partition);
    tcase_add_test(tc, test_remove_claims_merge_in_any_order);
    tcase_add_test(tc, test_edge_past_lives_adopted_by_a_hub);
    suite_add_tcase(s, tc);
    return s;
}
