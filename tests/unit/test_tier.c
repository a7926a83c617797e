/*
 * test_tier.c - edges and hubs (tier.c): what goes up, what comes down, and
 * exactness when UPs are lost, when an edge moves to another hub and back,
 * and when the new hub knows less than the old one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

/* A node: its table and presence, and its role's state. */
struct node {
    struct tally_table t;
    struct tally_presence pr;
    struct tier_hub hub;
    struct tier_edge edge;
};

static struct node a, b, e, f;   /* hubs a, b; edges e, f */
static struct wire_buf msg, out; /* out: where the writers write */
static uint64_t now;

/* The parts of the last message written (UP, DOWN or relay), each at most
 * max_bytes; msg is the first. */
#define MAX_PARTS 512
static struct wire_buf part[MAX_PARTS];
static size_t nparts;
static size_t max_bytes;

static void collect(const struct wire_buf *m, void *ud)
{
    (void)ud;
    ck_assert_uint_lt(nparts, MAX_PARTS);
    ck_assert_uint_le(m->len, max_bytes);
    wbuf_reset(&part[nparts]);
    wbuf_bytes(&part[nparts], m->data, m->len);
    if (nparts++ == 0) {
        wbuf_reset(&msg);
        wbuf_bytes(&msg, m->data, m->len);
    }
}

#define HB 1000 /* heartbeat_ms */

static void node_init(struct node *n)
{
    table_init(&n->t, 10000, 100);
    presence_init(&n->pr, 1000);
}

static void setup(void)
{
    node_init(&a);
    node_init(&b);
    node_init(&e);
    node_init(&f);
    tier_hub_init(&a.hub, "a", 111);
    tier_hub_init(&b.hub, "b", 222);
    tier_edge_init(&e.edge, "e", 7, 1);
    tier_edge_init(&f.edge, "f", 9, 1);
    memset(&msg, 0, sizeof(msg));
    now = 1;
    nparts = 0;
    max_bytes = 65536;
}

static void node_free(struct node *n)
{
    tier_hub_free(&n->hub);
    tier_edge_free(&n->edge);
    presence_free(&n->pr);
    table_free(&n->t);
}

static void teardown(void)
{
    node_free(&a);
    node_free(&b);
    node_free(&e);
    node_free(&f);
    wbuf_free(&msg);
    wbuf_free(&out);
    for (size_t i = 0; i < MAX_PARTS; i++)
        wbuf_free(&part[i]);
}

static void inc(struct node *n, const char *name, int64_t delta)
{
    struct tally_counter *c;
    uint32_t self;
    ck_assert_int_eq(table_get(&n->t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(
        table_replica(&n->t, n->edge.node_id, strlen(n->edge.node_id), n->edge.incarnation, &self),
        TALLY_OK);
    ck_assert_int_eq(table_add(&n->t, c, self, delta, &changed), TALLY_OK);
    ck_assert_int_eq(tier_edge_wrote(&n->edge, name, strlen(name)), TALLY_OK);
}

static void watch(struct node *n, const char *name)
{
    ck_assert_int_eq(tier_edge_watch(&n->edge, name, strlen(name), true), TALLY_OK);
}

/* The edge's next UP (its parts), with every_ms; false when none is due. */
static bool up_every(struct node *edge, uint64_t every_ms)
{
    nparts = 0;
    ck_assert_int_eq(tier_edge_up(&edge->edge, &edge->t, &edge->pr, now, every_ms, HB, max_bytes,
                                  &out, collect, NULL),
                     TALLY_OK);
    return nparts > 0;
}

static bool up(struct node *edge)
{
    return up_every(edge, 0);
}

/* name's last watcher at edge leaves, and the 30 s linger passes: the UP
 * after the watcher stamps the view idle, the one past the linger drops it. */
static void unwatch_past_linger(struct node *edge, const char *name)
{
    ck_assert_int_eq(tier_edge_watch(&edge->edge, name, strlen(name), false), TALLY_OK);
    now += 10;
    up(edge);
    now += 30000;
    up(edge);
    ck_assert(!tier_edge_follows(&edge->edge, name, strlen(name)));
}

static struct tier_child *hub_takes_part(struct node *hub, size_t i)
{
    struct tier_child *ch;
    ck_assert_int_eq(
        tier_hub_apply_up(&hub->hub, &hub->t, &hub->pr, part[i].data, part[i].len, now, &ch),
        TALLY_OK);
    return ch;
}

/* Every part of the last UP, in order. */
static struct tier_child *hub_takes(struct node *hub)
{
    struct tier_child *ch = NULL;
    for (size_t i = 0; i < nparts; i++)
        ch = hub_takes_part(hub, i);
    return ch;
}

/* The DOWN owed to ch, every part applied by the edge (fn told of each view
 * changed); its number of parts. */
static size_t down_to(struct node *hub, struct tier_child *ch, struct node *edge,
                      tier_changed_fn *fn, void *ud)
{
    tier_hub_tick(&hub->hub);
    nparts = 0;
    ck_assert_int_eq(
        tier_hub_down(&hub->hub, &hub->t, &hub->pr, ch, now, HB, max_bytes, &out, collect, NULL),
        TALLY_OK);
    for (size_t i = 0; i < nparts; i++)
        ck_assert_int_eq(tier_edge_apply_down(&edge->edge, part[i].data, part[i].len, fn, ud),
                         TALLY_OK);
    return nparts;
}

static size_t down(struct node *hub, struct tier_child *ch, struct node *edge)
{
    return down_to(hub, ch, edge, NULL, NULL);
}

static void count_changed(const char *name, size_t len, void *ud)
{
    (void)name;
    (void)len;
    ++*(int *)ud;
}

/* The DOWN owed to ch, applied by the edge; the views it reported changed. */
static int down_changed(struct node *hub, struct tier_child *ch, struct node *edge)
{
    int calls = 0;
    down_to(hub, ch, edge, count_changed, &calls);
    return calls;
}

/* One round trip: UP (if due) to hub, DOWN back. */
static struct tier_child *round_trip(struct node *edge, struct node *hub)
{
    struct tier_child *ch = NULL;
    if (up(edge))
        ch = hub_takes(hub);
    if (ch)
        down(hub, ch, edge);
    return ch;
}

/* Hub-to-hub replication, here by copying every slot: the maximum. */
static void hubs_sync(struct node *from, struct node *to)
{
    for (struct tally_counter *c = from->t.counters; c; c = c->hh.next) {
        struct tally_counter *d;
        ck_assert_int_eq(table_get(&to->t, c->name, c->name_len, TABLE_LOCAL, &d), TALLY_OK);
        for (uint16_t i = 0; i < c->nslots; i++) {
            const struct tally_replica *r = from->t.replicas[c->slots[i].replica];
            uint32_t idx;
            ck_assert_int_eq(table_replica(&to->t, r->key, strlen(r->key), r->incarnation, &idx),
                             TALLY_OK);
            ck_assert_int_eq(
                table_merge_slot(&to->t, d, idx, c->slots[i].p, c->slots[i].n, &changed), TALLY_OK);
        }
    }
}

static int64_t hub_value(struct node *hub, const char *name)
{
    struct tally_counter *c = table_find(&hub->t, name, strlen(name));
    return c ? counter_value(c) : 0;
}

static int64_t shown(struct node *edge, const char *name)
{
    return tier_edge_value(&edge->edge, &edge->t, name, strlen(name));
}

/* An edge that starts a new life with its past life's slot loaded (a reboot
 * inside the fsync window): it shows its running life only, its UP carries
 * the past slot (more than the hub had), the hub counts it once, and the
 * edge drops it when the DOWN's watermark says it is retired, only once its
 * first UP was acknowledged. */
START_TEST(an_edge_sends_its_past_life_up_and_shows_it_once)
{
    inc(&e, "likes", 3);
    watch(&e, "likes");
    struct tier_child *ch = round_trip(&e, &a);
    ck_assert_int_eq(hub_value(&a, "likes"), 3);
    inc(&e, "likes", 2); /* acknowledged at e, never sent: the hub holds 3 */
    /* the reboot: the same table (loaded), a new life 8 */
    tier_edge_free(&e.edge);
    tier_edge_init(&e.edge, "e", 8, 1);
    ck_assert_int_eq(tier_edge_wrote(&e.edge, "likes", 5), TALLY_OK);
    watch(&e, "likes");
    ck_assert_int_eq(shown(&e, "likes"), 0); /* its past is the hub's to show */
    inc(&e, "likes", 1);
    ck_assert(up(&e));
    ch = hub_takes(&a);
    ck_assert_int_eq(hub_value(&a, "likes"), 5 + 1);
    ck_assert(!tier_edge_started_up(&e.edge)); /* not yet acknowledged */
    down(&a, ch, &e); /* a new session: the next UP carries everything again */
    ck_assert(!tier_edge_started_up(&e.edge));
    now += HB;
    ch = round_trip(&e, &a);
    ck_assert(tier_edge_started_up(&e.edge));
    ck_assert_int_eq(shown(&e, "likes"), 6);
    ck_assert_uint_eq(e.edge.below, 0);
    /* the hubs retire life 7 (fold.c): the next DOWN says so */
    ck_assert_int_eq(fold_set_below(&a.t, NULL, "e", 1, 8), TALLY_OK);
    ch = tier_hub_child(&a.hub, "e");
    ck_assert_ptr_nonnull(ch);
    now += HB;
    down(&a, ch, &e);
    ck_assert_uint_eq(e.edge.below, 8);
    /* a past life's slot never claims to be the running one */
    uint32_t r;
    struct tally_counter *c = table_find(&e.t, "likes", 5);
    ck_assert_int_eq(table_replica(&e.t, "e", 1, 9, &r), TALLY_OK);
    ck_assert_int_eq(table_merge_slot(&e.t, c, r, 50, 0, &changed), TALLY_OK);
    ck_assert_int_eq(tier_edge_wrote(&e.edge, "likes", 5), TALLY_OK);
    now += HB;
    ck_assert(up(&e));
    struct tier_child *got;
    ck_assert_int_eq(tier_hub_apply_up(&a.hub, &a.t, &a.pr, part[0].data, part[0].len, now, &got),
                     TALLY_E_WIRE);
}
END_TEST

START_TEST(edge_holds_only_its_own_slot_and_shows_the_world)
{
    inc(&e, "likes", 3);
    inc(&f, "likes", 4);
    watch(&e, "likes");
    round_trip(&f, &a);
    round_trip(&e, &a);
    ck_assert_int_eq(hub_value(&a, "likes"), 7);
    ck_assert_int_eq(shown(&e, "likes"), 7);
    struct tally_counter *c = table_find(&e.t, "likes", 5);
    ck_assert_uint_eq(c->nslots, 1); /* e never holds f's slot */
    /* A new increment at e shows at once, without waiting for the hub. */
    inc(&e, "likes", 1);
    ck_assert_int_eq(shown(&e, "likes"), 8);
    round_trip(&e, &a);
    ck_assert_int_eq(hub_value(&a, "likes"), 8);
    ck_assert_int_eq(shown(&e, "likes"), 8);
}
END_TEST

/* A poller (subscribe, read the retained total, leave) must find the hub's
 * answer at its next poll: the view outlives its last watcher by
 * TIER_VIEW_LINGER_MS (30 s), keeps taking DOWNs, and then goes. */
START_TEST(a_view_lingers_after_its_last_watcher)
{
    inc(&f, "likes", 4);
    round_trip(&f, &a);
    watch(&e, "likes");
    ck_assert_int_eq(tier_edge_watch(&e.edge, "likes", 5, false), TALLY_OK); /* gone at once */
    now += 10;
    round_trip(&e, &a); /* the UP still names it: the hub answers */
    ck_assert_int_eq(shown(&e, "likes"), 4);
    inc(&f, "likes", 2);
    round_trip(&f, &a);
    now += HB; /* the heartbeat DOWN carries every watched figure */
    round_trip(&e, &a);
    ck_assert_int_eq(shown(&e, "likes"), 6);
    now += 30000;
    up(&e); /* stamps nothing new: the linger is over, the view is dropped */
    ck_assert_int_eq(shown(&e, "likes"), 0);
    /* watched again within the linger: kept, never back to its own part */
    watch(&e, "likes");
    round_trip(&e, &a);
    ck_assert_int_eq(tier_edge_watch(&e.edge, "likes", 5, false), TALLY_OK);
    now += 10;
    up(&e);
    now += 29000;
    up(&e);
    watch(&e, "likes");
    ck_assert_int_eq(shown(&e, "likes"), 6);
}
END_TEST

/* Regression: a hub reports zeros of a name it holds nothing of, and the
 * edge took that as news: plugin.c made a counter of it and published a
 * total 0, for every name a client at the edge ever watched, and past the
 * linger the edge kept its figures (zeros) for good. */
START_TEST(a_name_nobody_writes_is_neither_shown_nor_kept_at_an_edge)
{
    watch(&e, "ghost");
    ck_assert(up(&e));
    ck_assert_int_eq(down_changed(&a, hub_takes(&a), &e), 0);
    unwatch_past_linger(&e, "ghost");
    ck_assert_uint_eq(tier_edge_entries(&e.edge), 0);
    /* written elsewhere, and watched again: news */
    inc(&f, "ghost", 3);
    round_trip(&f, &a);
    watch(&e, "ghost");
    now += 10;
    ck_assert(up(&e));
    ck_assert_int_eq(down_changed(&a, hub_takes(&a), &e), 1);
    ck_assert_int_eq(shown(&e, "ghost"), 3);
    /* a counter the edge writes is news at its first DOWN, zeros or not */
    inc(&e, "mine", 0);
    watch(&e, "mine");
    now += 10;
    ck_assert(up(&e));
    ck_assert_int_eq(down_changed(&a, hub_takes(&a), &e), 1);
}
END_TEST

/* An edge shows a counter's total only while it follows it: a view its hub
 * has filled. Past the linger it follows no more; an increment then is
 * answered with its own part plus the last view's figures (kept for the
 * counters it writes), and a view made again starts from those, so a hub
 * that knows less (a failover) cannot take its first total below them. */
START_TEST(an_edge_shows_a_total_only_while_it_follows_the_counter)
{
    inc(&f, "likes", 990);
    round_trip(&f, &a);
    inc(&e, "likes", 10);
    watch(&e, "likes");
    ck_assert(!tier_edge_follows(&e.edge, "likes", 5)); /* no DOWN yet: not shown */
    round_trip(&e, &a);
    ck_assert(tier_edge_follows(&e.edge, "likes", 5));
    ck_assert_int_eq(shown(&e, "likes"), 1000);
    unwatch_past_linger(&e, "likes");
    inc(&e, "likes", 1);
    ck_assert_int_eq(tier_edge_answer(&e.edge, &e.t, "likes", 5), 1001);
    /* watched again, through a hub that holds e's slot only */
    watch(&e, "likes");
    ck_assert(!tier_edge_follows(&e.edge, "likes", 5));
    ck_assert_int_eq(shown(&e, "likes"), 1001);
    now += HB;
    round_trip(&e, &b);
    ck_assert_int_eq(hub_value(&b, "likes"), 11);
    ck_assert(tier_edge_follows(&e.edge, "likes", 5));
    ck_assert_int_eq(shown(&e, "likes"), 1001);
    ck_assert_int_eq(tier_edge_answer(&e.edge, &e.t, "likes", 5), 1001);
    /* a counter never shown here starts from nothing */
    watch(&e, "other");
    ck_assert_int_eq(tier_edge_answer(&e.edge, &e.t, "other", 5), 0);
}
END_TEST

/* The same for a counter the edge only watches: its view's figures outlive
 * it, and a view made again through a hub that knows less starts from them.
 * Before, they went with the view, and the edge's first total after the
 * failover was that hub's 990 under the 1000 it had left retained. */
START_TEST(a_counter_only_watched_at_an_edge_keeps_its_figures_past_its_view)
{
    inc(&f, "news", 990);
    round_trip(&f, &a);
    hubs_sync(&a, &b);
    inc(&f, "news", 10);
    now += HB;
    round_trip(&f, &a); /* a: 1000, b: 990 */
    ck_assert_int_eq(hub_value(&a, "news"), 1000);
    ck_assert_int_eq(hub_value(&b, "news"), 990);
    watch(&e, "news");
    round_trip(&e, &a);
    ck_assert_int_eq(shown(&e, "news"), 1000);
    unwatch_past_linger(&e, "news");
    /* watched again, through b, which holds less of it than a did */
    watch(&e, "news");
    now += HB;
    round_trip(&e, &b);
    ck_assert(tier_edge_follows(&e.edge, "news", 4));
    ck_assert_int_eq(shown(&e, "news"), 1000);
    /* nothing of it is the edge's to send: once b has acknowledged the
     * watch list (its first DOWN gave the session), no UP is due */
    now += 10;
    round_trip(&e, &b);
    now += 10;
    ck_assert(!up(&e));
    ck_assert_int_eq(hub_value(&b, "news"), 990);
}
END_TEST

START_TEST(a_lost_up_is_carried_by_the_next)
{
    inc(&e, "x", 5);
    ck_assert(up(&e)); /* lost */
    inc(&e, "y", 2);
    now += 10;
    ck_assert(up(&e));
    struct tier_child *ch = hub_takes(&a);
    ck_assert_int_eq(hub_value(&a, "x"), 5);
    ck_assert_int_eq(hub_value(&a, "y"), 2);
    /* The hub's first DOWN gives e its session; what e sends under it is
     * acknowledged, and then nothing more is due until the heartbeat. */
    down(&a, ch, &e);
    now += 10;
    ck_assert(up(&e));
    ch = hub_takes(&a);
    down(&a, ch, &e);
    now += 10;
    ck_assert(!up(&e));
    now += HB;
    ck_assert(up(&e));
}
END_TEST

/* An UP not yet acknowledged goes again once an interval, not at every call
 * (a broker loop turns thousands of times a second under load). */
START_TEST(an_unacknowledged_up_is_resent_once_an_interval)
{
    inc(&e, "x", 1);
    ck_assert(up_every(&e, 100));
    for (int i = 0; i < 99; i++) {
        now++;
        inc(&e, "x", 1);
        ck_assert(!up_every(&e, 100));
    }
    now++;
    ck_assert(up_every(&e, 100));
    struct tier_child *ch = hub_takes(&a);
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(hub_value(&a, "x"), 100);
}
END_TEST

START_TEST(failover_sends_the_whole_slot_and_counts_it_once)
{
    inc(&e, "likes", 10);
    watch(&e, "likes");
    round_trip(&e, &a);
    hubs_sync(&a, &b);
    inc(&e, "likes", 5);
    round_trip(&e, &a); /* a has 15 from e, b only 10: then a dies */
    ck_assert_int_eq(hub_value(&a, "likes"), 15);
    ck_assert_int_eq(hub_value(&b, "likes"), 10);
    now += 10;
    ck_assert(!up(&e)); /* all acknowledged by a */
    /* The bridge reaches b: b's first DOWN names a new hub. */
    struct tier_child *ch = NULL;
    now += HB;
    ch = round_trip(&e, &b); /* heartbeat UP carries nothing new... */
    ck_assert_uint_eq(e.edge.hub_changes, 2);
    now += 10;
    ch = round_trip(&e, &b); /* ...but the new hub's DOWN makes the slot go again */
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(hub_value(&b, "likes"), 15);
    /* a comes back with its state and syncs: maxima, not sums. */
    hubs_sync(&a, &b);
    hubs_sync(&b, &a);
    ck_assert_int_eq(hub_value(&a, "likes"), 15);
    ck_assert_int_eq(hub_value(&b, "likes"), 15);
    /* And e moves back to a: again the whole slot, again counted once. */
    inc(&e, "likes", 1);
    round_trip(&e, &a);
    now += 10;
    round_trip(&e, &a);
    hubs_sync(&a, &b);
    ck_assert_int_eq(hub_value(&a, "likes"), 16);
    ck_assert_int_eq(hub_value(&b, "likes"), 16);
    ck_assert_int_eq(shown(&e, "likes"), 16);
}
END_TEST

START_TEST(a_new_hub_that_knows_less_never_makes_a_total_go_back)
{
    watch(&e, "likes");
    inc(&f, "likes", 100);
    round_trip(&f, &a); /* b never hears of f's 100 before a dies */
    round_trip(&e, &a);
    ck_assert_int_eq(shown(&e, "likes"), 100);
    now += HB;
    round_trip(&e, &b);
    now += 10;
    round_trip(&e, &b);
    ck_assert_int_eq(hub_value(&b, "likes"), 0);
    ck_assert_int_eq(shown(&e, "likes"), 100);
    /* f moves to b too: then b is exact, and e with it. */
    inc(&f, "likes", 1);
    now += HB;
    round_trip(&f, &b);
    now += 10;
    round_trip(&f, &b);
    now += 10;
    round_trip(&e, &b);
    ck_assert_int_eq(hub_value(&b, "likes"), 101);
    ck_assert_int_eq(shown(&e, "likes"), 101);
}
END_TEST

START_TEST(a_reset_at_a_hub_reaches_the_edge)
{
    watch(&e, "likes");
    inc(&e, "likes", 5);
    inc(&f, "likes", 7);
    round_trip(&f, &a);
    round_trip(&e, &a);
    now += 10;
    round_trip(&e, &a);
    ck_assert_int_eq(shown(&e, "likes"), 12);
    struct tally_counter *c = table_find(&a.t, "likes", 5);
    ck_assert_int_eq(table_reset(&a.t, c, false), TALLY_OK);
    inc(&e, "likes", 2); /* concurrent with the reset: it survives it */
    now += 10;
    round_trip(&e, &a);
    ck_assert_int_eq(table_value(&a.t, c), 2);
    ck_assert_int_eq(shown(&e, "likes"), 2);
}
END_TEST

/* The state document at an edge shows the cluster's parts, not its own
 * table's: once the hub has answered, P, N and devices after resets are the
 * hub's own table_sums. */
static void same_sums(struct node *edge, struct node *hub, const char *name)
{
    struct tally_sums es, hs;
    tier_edge_sums(&edge->edge, &edge->t, name, strlen(name), &es);
    table_sums(&hub->t, table_find(&hub->t, name, strlen(name)), &hs);
    ck_assert_int_eq(es.p, hs.p);
    ck_assert_int_eq(es.n, hs.n);
    ck_assert_int_eq(es.devices, hs.devices);
    ck_assert_int_eq(es.value, hs.value);
}

START_TEST(an_edge_shows_the_parts_of_the_clusters_total)
{
    watch(&e, "likes");
    inc(&e, "likes", 5);
    inc(&e, "likes", -1);
    inc(&f, "likes", 7);
    inc(&f, "likes", -3);
    round_trip(&f, &a);
    round_trip(&e, &a);
    now += 10;
    round_trip(&e, &a);
    same_sums(&e, &a, "likes");
    ck_assert_int_eq(shown(&e, "likes"), 8);
    struct tally_counter *c = table_find(&a.t, "likes", 5);
    ck_assert_int_eq(table_reset(&a.t, c, false), TALLY_OK);
    inc(&e, "likes", 2);
    inc(&e, "likes", -1);
    now += 10;
    round_trip(&e, &a);
    same_sums(&e, &a, "likes");
    ck_assert_int_eq(shown(&e, "likes"), 1);
}
END_TEST

START_TEST(a_forgotten_edge_resends_everything)
{
    inc(&e, "x", 4);
    ck_assert_int_eq(presence_view(&e.pr, "c1", "home", 4, &changed), TALLY_OK);
    ck_assert(changed);
    tier_edge_pages_changed(&e.edge);
    round_trip(&e, &a);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 1);
    /* a loses e's record (silent past the timeout) and its state. */
    tier_hub_free(&a.hub);
    node_free(&a);
    node_init(&a);
    tier_hub_init(&a.hub, "a", 111); /* even under the same session */
    now += HB;
    round_trip(&e, &a);
    now += 10;
    round_trip(&e, &a);
    ck_assert_int_eq(hub_value(&a, "x"), 4);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 1);
}
END_TEST

START_TEST(presence_is_summed_over_edges_and_an_edge_that_moves_counts_once)
{
    ck_assert_int_eq(presence_view(&e.pr, "c1", "home", 4, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(presence_view(&e.pr, "c2", "home", 4, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(presence_view(&f.pr, "c3", "home", 4, &changed), TALLY_OK);
    ck_assert(changed);
    tier_edge_pages_changed(&e.edge);
    tier_edge_pages_changed(&f.edge);
    round_trip(&e, &a);
    round_trip(&f, &a);
    now += 10;
    round_trip(&e, &a);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 3);
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "home", 4), 3);
    ck_assert_uint_eq(tier_edge_page_total(&f.edge, &f.pr, "home", 4), 3);
    /* b hears e from a's relay, then from e itself after a move. */
    struct tier_child *ch = tier_hub_child(&a.hub, "e");
    ck_assert_ptr_nonnull(ch);
    nparts = 0;
    ck_assert_int_eq(tier_hub_relay(ch, &a.pr, max_bytes, now, &out, collect, NULL), TALLY_OK);
    ck_assert_uint_eq(nparts, 1);
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(msg.data, msg.len, &wp), TALLY_OK);
    struct tally_origin *o = presence_origin(&b.pr, "e");
    o->incarnation = wp.incarnation;
    o->seq = wp.seq;
    presence_origin_begin(&b.pr, o, 0, UINT64_MAX);
    for (uint32_t i = 0; i < wp.npages; i++)
        presence_origin_set(&b.pr, o, wp.pages[i].page, wp.pages[i].len, wp.pages[i].count);
    wire_presence_free(&wp);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    now += HB;
    round_trip(&e, &b);
    now += 10;
    round_trip(&e, &b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2); /* replaced, not added */
}
END_TEST

/* ==== Presence between hubs: relays on change, liveness by listing ==== */

#define TIMEOUT 15000 /* peer_timeout_ms */

/* What plugin.c's on_presence does with part i of the last message. */
static void presence_takes_part(struct node *hub, size_t i)
{
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(part[i].data, part[i].len, &wp), TALLY_OK);
    char origin[TALLY_NODE_ID_MAX + 1];
    memcpy(origin, wp.origin, wp.origin_len);
    origin[wp.origin_len] = '\0';
    struct tally_origin *o = presence_origin(&hub->pr, origin);
    ck_assert_ptr_nonnull(o);
    bool taken;
    ck_assert_int_eq(presence_apply(&hub->pr, o, &wp, &taken), TALLY_OK);
    if (taken && tier_hub_says_alive(&hub->hub, o))
        o->last_heard_ms = now;
    if (taken)
        ck_assert_int_eq(tier_hub_heard(&hub->hub, &hub->pr, &wp, now), TALLY_OK);
    wire_presence_free(&wp);
}

/* The child's relay from hub (what changed, or all if wanted), delivered to
 * `to` unless lost (to NULL); its number of parts. */
static size_t relay(struct node *hub, const char *child, struct node *to)
{
    struct tier_child *ch = tier_hub_child(&hub->hub, child);
    ck_assert_ptr_nonnull(ch);
    nparts = 0;
    ck_assert_int_eq(tier_hub_relay(ch, &hub->pr, max_bytes, now, &out, collect, NULL), TALLY_OK);
    for (size_t i = 0; i < nparts && to; i++)
        presence_takes_part(to, i);
    return nparts;
}

/* The entries (its own and its edges') hub's last heartbeat listed. */
static uint32_t listed;

/* hub's presence heartbeat, delivered to `to` (none: lost) and to `also`,
 * if any; the wants it carried. */
static uint32_t heartbeat_at(struct node *hub, struct node *to, struct node *also)
{
    static uint64_t seq;
    uint32_t sent, wants = 0;
    nparts = 0;
    listed = 0;
    ck_assert_int_eq(tier_hub_heartbeat(&hub->hub, &hub->pr, 1, seq + 1, now, TIMEOUT, max_bytes,
                                        &out, collect, NULL, &sent),
                     TALLY_OK);
    ck_assert_uint_eq(sent, nparts);
    seq += sent;
    for (size_t i = 0; i < nparts; i++) {
        struct wire_presence wp;
        ck_assert_int_eq(wire_decode_presence(part[i].data, part[i].len, &wp), TALLY_OK);
        wants += wp.nwants;
        listed += wp.nlisted;
        wire_presence_free(&wp);
        if (to)
            presence_takes_part(to, i);
        if (also)
            presence_takes_part(also, i);
    }
    return wants;
}

static uint32_t heartbeat(struct node *hub, struct node *to)
{
    return heartbeat_at(hub, to, NULL);
}

/* What plugin.c's tick expires at a hub: silent origins (every tick)... */
static void expire_origins(struct node *hub)
{
    for (struct tally_origin *o = hub->pr.origins; o; o = o->hh.next)
        if (o->alive && now - o->last_heard_ms > TIMEOUT)
            presence_origin_expire(&hub->pr, o);
}

/* ... and silent children (at most once a publish interval). */
static void expire(struct node *hub)
{
    tier_hub_expire(&hub->hub, now, TIMEOUT);
    expire_origins(hub);
}

static void viewers(struct node *edge, const char *page, int n)
{
    for (int i = 0; i < n; i++) {
        char client[16];
        snprintf(client, sizeof(client), "v%d", i);
        ck_assert_int_eq(presence_view(&edge->pr, client, page, strlen(page), &changed), TALLY_OK);
    }
    tier_edge_pages_changed(&edge->edge);
}

/* e's two viewers of home reach a by e's UP, and b by a's relay. */
static void e_views_home_through_a(void)
{
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    relay(&a, "e", &b);
}

/* e's viewers reach b once, by a's relay; after that a relays nothing while
 * they do not change, and a's heartbeat listing keeps them alive at b for
 * as long as e is heard; once e is silent they leave b within
 * peer_timeout_ms of a's last hearing of e. */
START_TEST(a_listed_edge_stays_alive_and_leaves_once_unheard)
{
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    ck_assert_uint_eq(relay(&a, "e", &b), 1);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    uint64_t relays = 0;
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        round_trip(&e, &a);
        relays += relay(&a, "e", &b);
        ck_assert_uint_eq(heartbeat(&a, &b), 0);
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
    ck_assert_uint_eq(relays, 0); /* nothing changed: nothing relayed */
    uint64_t last_heard = now;
    while (now + HB < last_heard + TIMEOUT) {
        now += HB;
        heartbeat(&a, &b);
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
    now = last_heard + TIMEOUT + 1;
    heartbeat(&a, &b);
    expire(&a);
    expire(&b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 0);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 0);
    ck_assert_ptr_null(tier_hub_child(&a.hub, "e"));
}
END_TEST

/* e views home (relayed to b), then news: a relays that to nobody. */
static void lose_a_relay(void)
{
    e_views_home_through_a();
    viewers(&e, "news", 3);
    now += 10;
    round_trip(&e, &a);
    ck_assert_uint_eq(relay(&a, "e", NULL), 1); /* lost */
}

/* lose_a_relay, then e dies; b's heartbeat wants e's viewers of a, and it is
 * 2 heartbeats before a forgets e. Returns when a last heard e. */
static uint64_t e_dies_and_b_wants_it(void)
{
    lose_a_relay();
    uint64_t last_heard = now;
    now += HB;
    heartbeat(&a, &b);
    ck_assert_uint_eq(heartbeat(&b, &a), 1);
    now = last_heard + TIMEOUT - 2 * HB;
    return last_heard;
}

/* A relay lost on its way: the next listing shows b that it lacks e's
 * latest viewers, b's heartbeat wants them, a relays them whole. */
START_TEST(a_lost_relay_is_wanted_and_sent_again)
{
    lose_a_relay();
    ck_assert_uint_eq(presence_total(&b.pr, "news", 4), 0);
    now += HB;
    ck_assert_uint_eq(heartbeat(&a, &b), 0);
    ck_assert_uint_eq(heartbeat(&b, &a), 1); /* b wants e */
    ck_assert_uint_ge(relay(&a, "e", &b), 1);
    ck_assert_uint_eq(presence_total(&b.pr, "news", 4), 3);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    now += HB;
    heartbeat(&a, &b);
    ck_assert_uint_eq(heartbeat(&b, &a), 0); /* satisfied */
    ck_assert_uint_eq(relay(&a, "e", &b), 0);
    /* Lost again, and e falls silent: b wants it only while it lives. */
    viewers(&e, "sports", 1);
    now += 10;
    round_trip(&e, &a);
    relay(&a, "e", NULL);
    uint64_t last_heard = now;
    now += HB;
    heartbeat(&a, &b);
    ck_assert_uint_eq(heartbeat(&b, &a), 1);
    now = last_heard + TIMEOUT + 1;
    expire(&a);
    expire(&b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 0);
    ck_assert_uint_eq(heartbeat(&b, &a), 0);
}
END_TEST

/* Regression: a relay answering a want goes up to peer_timeout_ms after its
 * carrier last heard the edge, which may be dead by then. A hub with no
 * listing of the edge (restarted, or its listings lost) took the relay's
 * arrival as the edge's hearing, and counted a dead edge's viewers for up to
 * another peer_timeout_ms (tests/sim, seed 365 of the heavy mix with
 * --tier-bytes 110: 16 s after e19 died). The relay carries the carrier's
 * entry of its listing: the edge leaves that hub too within peer_timeout_ms
 * of its carrier's last hearing. */
START_TEST(a_relay_long_after_an_edge_was_heard_does_not_revive_it)
{
    struct node *c = &f; /* a hub restarted: no listing of e yet */
    tier_hub_init(&c->hub, "c", 333);
    uint64_t last_heard = e_dies_and_b_wants_it();
    expire(&a);
    ck_assert_ptr_nonnull(tier_hub_child(&a.hub, "e")); /* a still holds e's record */
    ck_assert_uint_ge(relay(&a, "e", c), 1);            /* the answer, flooded to c too */
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 3);
    now = last_heard + TIMEOUT + 1;
    expire(&a);
    expire(c);
    ck_assert_ptr_null(tier_hub_child(&a.hub, "e"));
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 0);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 0);
}
END_TEST

/* Regression (simulator, 8 hubs in a ring, 150 ms delays, seed 490): a's
 * relay of its own edge e, answering b's want, came back to a around the
 * ring 567 ms later, its listing entry of e aged as when it left. a took
 * the entry as news and counted e, dead, 83 ms past peer_timeout_ms. An
 * entry of an UP a heard itself is not news to a. */
START_TEST(a_hubs_own_relay_back_through_a_ring_does_not_keep_its_edge_alive)
{
    uint64_t last_heard = e_dies_and_b_wants_it();
    ck_assert_uint_ge(relay(&a, "e", &b), 1);
    now += 2 * HB - 1; /* around the ring, back at a */
    for (size_t i = 0; i < nparts; i++)
        presence_takes_part(&a, i);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
    now = last_heard + TIMEOUT + 1;
    expire(&a);
    ck_assert_ptr_null(tier_hub_child(&a.hub, "e"));
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 0);
    ck_assert_uint_eq(presence_total(&a.pr, "news", 4), 0);
}
END_TEST

/* Regression (simulator, groups of hubs, seed 2943 of tests/sim/run.sh's
 * groups mix): the same, but a's relay came back 969 ms later, over six
 * bridges, after a had forgotten e (peer_timeout_ms after it last heard
 * it): with no record of e to tell it was ours, a took it as newer than
 * what it held, and counted e, dead, again. a's origin of e holds its
 * pages at the seq of its relay: the relay is not newer there. */
START_TEST(a_hubs_own_relay_back_after_it_forgot_its_edge_does_not_revive_it)
{
    uint64_t last_heard = e_dies_and_b_wants_it();
    ck_assert_uint_ge(relay(&a, "e", &b), 1);
    now = last_heard + TIMEOUT + 1;
    expire(&a);
    ck_assert_ptr_null(tier_hub_child(&a.hub, "e"));
    for (size_t i = 0; i < nparts; i++) /* back around the groups */
        presence_takes_part(&a, i);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 0);
    ck_assert_uint_eq(presence_total(&a.pr, "news", 4), 0);
}
END_TEST

/* e is carried by a, which dies; e moves to b. A third hub (c, in f's
 * node) counts e's viewers once throughout, and keeps them after a's
 * listing is gone, because b lists e. */
START_TEST(an_edge_that_moves_off_a_dead_hub_is_counted_once)
{
    struct node *c = &f;
    tier_hub_init(&c->hub, "c", 333);
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    relay(&a, "e", c);
    heartbeat(&a, c);
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    /* a dies; e's bridge reaches b, which relays e's pages under a later
     * seq: they replace a's, not add to them. */
    for (int s = 0; s < 3; s++) {
        now += HB;
        round_trip(&e, &b);
        relay(&b, "e", c);
        heartbeat(&b, c);
        ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    }
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        round_trip(&e, &b);
        relay(&b, "e", c);
        heartbeat(&b, c);
        expire(&b);
        expire(c);
        ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    }
    ck_assert(!presence_origin(&c->pr, "a")->alive); /* a is gone, e is not */
    ck_assert(presence_origin(&c->pr, "e")->alive);
}
END_TEST

/* e's viewers reach b and c by a's relays (c loses the last one if told
 * to), then a dies and e moves to b, which holds what e sends it already:
 * b floods nothing. Returns c. */
static struct node *e_moves_to_a_hub_holding_its_pages(bool c_loses_a_relay)
{
    struct node *c = &f;
    tier_hub_init(&c->hub, "c", 333);
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    ck_assert_uint_eq(relay(&a, "e", &b), 1);
    presence_takes_part(c, 0);
    viewers(&e, "news", 3);
    now += 10;
    round_trip(&e, &a);
    ck_assert_uint_eq(relay(&a, "e", &b), 1);
    if (!c_loses_a_relay)
        presence_takes_part(c, 0);
    heartbeat_at(&a, &b, c);
    for (int s = 0; s < 2; s++) { /* the first UP under a's session, then the whole list */
        now += HB;
        round_trip(&e, &b);
        ck_assert_uint_eq(relay(&b, "e", c), 0);
    }
    ck_assert_uint_eq(presence_total(&b.pr, "news", 4), 3);
    return c;
}

/* b lists e at its next heartbeat with the seq a relay would have had; c,
 * holding the same pages, takes that seq as its own and wants nothing. A
 * change after the move is relayed as ever. */
START_TEST(an_edge_that_moves_to_a_hub_holding_its_pages_is_not_relayed_again)
{
    struct node *c = e_moves_to_a_hub_holding_its_pages(false);
    const struct tally_origin *at_b = presence_origin(&b.pr, "e");
    const struct tally_origin *at_c = presence_origin(&c->pr, "e");
    ck_assert_uint_gt(at_b->seq, at_c->seq);
    ck_assert_uint_eq(heartbeat(&b, c), 0);
    ck_assert_uint_eq(at_c->seq, at_b->seq); /* the listing's seq, taken */
    ck_assert_uint_eq(heartbeat(c, &b), 0);  /* nothing wanted */
    ck_assert_uint_eq(relay(&b, "e", c), 0);
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 3);
    viewers(&e, "sports", 1);
    now += 10;
    round_trip(&e, &b);
    ck_assert_uint_eq(relay(&b, "e", c), 1);
    ck_assert_uint_eq(presence_total(&c->pr, "sports", 6), 1);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 3);
}
END_TEST

/* c lost a's last relay: b's listing shows it another digest, c wants e's
 * pages, b relays them whole, and c is exact. */
START_TEST(a_hub_that_lacks_the_pages_of_an_edge_that_moved_wants_them)
{
    struct node *c = e_moves_to_a_hub_holding_its_pages(true);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 0);
    ck_assert_uint_eq(heartbeat(&b, c), 0);
    ck_assert_uint_eq(heartbeat(c, &b), 1); /* c wants e */
    ck_assert_uint_ge(relay(&b, "e", c), 1);
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 3);
    now += HB;
    heartbeat(&b, c);
    ck_assert_uint_eq(heartbeat(c, &b), 0);
}
END_TEST

/* What hub replays to b, restarted (all of it, in one step). */
static uint32_t replay_to_b(struct node *hub)
{
    uint32_t from = 0;
    nparts = 0;
    uint32_t n = presence_replay(&hub->pr, hub->hub.node_id, "b", now, TIMEOUT, max_bytes, &from,
                                 100, &out, collect, NULL);
    ck_assert_uint_eq(from, UINT32_MAX);
    return n;
}

/* ==== The carrier's keepalive: a carried set, not a listing of every edge ==== */

/* e, with viewers, heard by a every heartbeat: a lists it once, and then
 * its heartbeat is its own entry and its carried set, which keeps e alive
 * at b for as long as a hears it. Once a has not heard e for a third of
 * the timeout, a lists it out of the set, at every heartbeat, with its age:
 * e leaves b within peer_timeout_ms of a's last hearing, as before. */
START_TEST(a_carried_edge_is_listed_once_and_kept_alive_by_the_carriers_keepalive)
{
    e_views_home_through_a();
    ck_assert_uint_eq(heartbeat(&a, &b), 0);
    ck_assert_uint_eq(listed, 2); /* a's own entry and e's */
    const struct tally_origin *at_b = presence_origin(&b.pr, "e");
    ck_assert_ptr_eq(at_b->carrier, presence_origin(&b.pr, "a"));
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        round_trip(&e, &a);
        ck_assert_uint_eq(heartbeat(&a, &b), 0);
        if (s > 0)                        /* the first: e's list went again, not yet acknowledged */
            ck_assert_uint_eq(listed, 1); /* a's own entry: e is in its set */
        ck_assert(!presence_origin(&b.pr, "a")->listing_wanted);
        ck_assert_uint_ge(at_b->last_heard_ms, now - HB); /* vouched for */
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
    uint64_t last_heard = now;
    while (now + HB < last_heard + TIMEOUT) {
        now += HB;
        heartbeat(&a, &b);
        ck_assert_uint_eq(listed, now - last_heard > TIMEOUT / 3 ? 2 : 1);
        ck_assert_uint_le(at_b->last_heard_ms, last_heard); /* never later than a heard it */
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
    ck_assert_ptr_null(at_b->carrier); /* out of a's set */
    now = last_heard + TIMEOUT + 1;
    heartbeat(&a, &b);
    expire(&a);
    expire(&b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 0);
}
END_TEST

/* a's heartbeat naming e is lost: its next keepalive's set holds e, b's
 * does not; b vouches for nothing of a's, and from a heartbeat after it
 * first heard a it asks a for its full listing, which names e. */
START_TEST(a_lost_entry_is_found_by_the_carried_set_and_the_full_listing_names_it)
{
    e_views_home_through_a();
    now += 10;
    round_trip(&e, &a);  /* e's list acknowledged: its entry stays as it is */
    heartbeat(&a, NULL); /* names e: lost */
    struct tally_origin *a_at_b = presence_origin(&b.pr, "a");
    const struct tally_origin *e_at_b = presence_origin(&b.pr, "e");
    now += HB;
    round_trip(&e, &a);
    heartbeat(&a, &b);
    ck_assert_uint_eq(listed, 1);
    ck_assert(a_at_b->listing_wanted);
    ck_assert_ptr_null(e_at_b->carrier);
    ck_assert_uint_eq(heartbeat(&b, &a), 0); /* a first heard just now: not yet */
    now += HB;
    round_trip(&e, &a);
    heartbeat(&a, &b);
    ck_assert_uint_eq(heartbeat(&b, &a), 1); /* b wants a's listing */
    now += 10;
    ck_assert_uint_eq(heartbeat(&a, &b), 0);
    ck_assert_uint_eq(listed, 2); /* all of it: e */
    ck_assert(!a_at_b->listing_wanted);
    ck_assert_ptr_eq(e_at_b->carrier, a_at_b);
    now += HB;
    round_trip(&e, &a);
    heartbeat(&a, &b);
    ck_assert_uint_eq(listed, 1);
    ck_assert_uint_eq(heartbeat(&b, &a), 0);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
}
END_TEST

/* b holds e in a's set, but misses every heartbeat of a that lists e out
 * of it, until a has forgotten e. a's next keepalive shows a set without
 * e: b vouches for nothing, wants the full listing, and takes e out of
 * a's set when it comes without it. e leaves b within peer_timeout_ms of
 * a's last hearing: b's hearing of it is never later. */
START_TEST(an_edge_a_carrier_forgot_leaves_its_set_at_the_full_listing)
{
    e_views_home_through_a();
    heartbeat(&a, &b);
    uint64_t last_heard = now;
    const struct tally_origin *e_at_b = presence_origin(&b.pr, "e");
    ck_assert_ptr_nonnull(e_at_b->carrier);
    while (tier_hub_child(&a.hub, "e")) {
        now += HB;
        heartbeat(&a, NULL); /* lost */
        expire(&a);
    }
    now += HB;
    heartbeat(&a, &b);
    ck_assert(presence_origin(&b.pr, "a")->listing_wanted);
    ck_assert_uint_le(e_at_b->last_heard_ms, last_heard);
    ck_assert_uint_eq(heartbeat(&b, &a), 1);
    heartbeat(&a, &b);
    ck_assert_ptr_null(e_at_b->carrier);
    ck_assert(!presence_origin(&b.pr, "a")->listing_wanted);
    expire(&b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 0);
}
END_TEST

/* e moves from a to b. b's heartbeat lists e in b's set with a newer seq:
 * c moves e to b's set, and a takes e out of its own at once (it has
 * moved), and lists it out of it: the sets at c agree with a's and b's,
 * and nobody wants a full listing. */
START_TEST(an_edge_that_moves_leaves_its_old_carriers_set_at_once)
{
    struct node *c = &f;
    tier_hub_init(&c->hub, "c", 333);
    e_views_home_through_a();
    presence_takes_part(c, 0);
    heartbeat_at(&a, &b, c);
    heartbeat_at(&b, &a, c);
    ck_assert_ptr_eq(presence_origin(&c->pr, "e")->carrier, presence_origin(&c->pr, "a"));
    viewers(&e, "news", 1);
    for (int s = 0; s < 2; s++) {
        now += HB;
        round_trip(&e, &b);
        for (size_t i = 0, n = relay(&b, "e", &a); i < n; i++)
            presence_takes_part(c, i);
    }
    heartbeat_at(&b, &a, c);
    ck_assert_ptr_eq(presence_origin(&c->pr, "e")->carrier, presence_origin(&c->pr, "b"));
    ck_assert(!presence_origin(&c->pr, "b")->listing_wanted);
    heartbeat_at(&a, &b, c);
    ck_assert_uint_eq(listed, 2); /* a's own entry, and e out of its set */
    ck_assert(!presence_origin(&c->pr, "a")->listing_wanted);
    ck_assert(!presence_origin(&b.pr, "a")->listing_wanted);
    ck_assert_uint_eq(heartbeat_at(c, &a, &b), 0);
    ck_assert_uint_eq(presence_total(&c->pr, "news", 4), 1);
    ck_assert_uint_eq(presence_total(&c->pr, "home", 4), 2);
}
END_TEST

/* A neighbour's replay to a restarted hub names the carrier of each
 * edge (a, of its own e): b, restarted, holds a's set whole before a's
 * next keepalive, and wants no listing. */
START_TEST(a_replay_names_the_carrier_and_a_restarted_hub_wants_no_listing)
{
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    now += 10;
    round_trip(&e, &a);
    heartbeat(&a, NULL);
    ck_assert_uint_eq(replay_to_b(&a), 1);
    presence_takes_part(&b, 0);
    ck_assert_ptr_eq(presence_origin(&b.pr, "e")->carrier, presence_origin(&b.pr, "a"));
    now += HB;
    round_trip(&e, &a);
    heartbeat(&a, &b);
    ck_assert_uint_eq(listed, 1);
    ck_assert(!presence_origin(&b.pr, "a")->listing_wanted);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
}
END_TEST

/* A hub replays its own edges to a neighbour that restarted (presence.c),
 * as it holds them from their UPs, not only the origins it holds as some
 * other hub lists them: b, restarted, has e's viewers from a at once. Once
 * e has moved on (a listing names a newer seq of it), a replays it no more,
 * until it holds what that listing says. */
START_TEST(a_hub_replays_its_own_edges_to_a_restarted_neighbour)
{
    struct node *c = &f;
    tier_hub_init(&c->hub, "c", 333);
    viewers(&e, "home", 2);
    round_trip(&e, &a);
    ck_assert_uint_eq(replay_to_b(&a), 1);
    presence_takes_part(&b, 0);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    const struct tally_origin *at_b = presence_origin(&b.pr, "e");
    ck_assert(at_b->listed); /* with a's entry: alive as of a's hearing */
    ck_assert_uint_eq(at_b->seq, presence_origin(&a.pr, "e")->seq);
    ck_assert_uint_eq(heartbeat(&b, &a), 0); /* b wants nothing */
    /* e moves to c, which relays its new pages; lost to a, which still
     * carries what e had, until c's listing names a newer seq */
    viewers(&e, "news", 1);
    for (int s = 0; s < 2; s++) {
        now += HB;
        round_trip(&e, c);
    }
    ck_assert_uint_ge(relay(c, "e", NULL), 1);
    ck_assert(presence_origin(&a.pr, "e")->carried);
    ck_assert_uint_eq(heartbeat(c, &a), 0);
    ck_assert_uint_eq(replay_to_b(&a), 0);
    /* a wants e, c relays it: a no longer carries e, and holds it as listed */
    ck_assert_uint_eq(heartbeat(&a, c), 1);
    ck_assert_uint_ge(relay(c, "e", &a), 1);
    ck_assert(!presence_origin(&a.pr, "e")->carried);
    ck_assert_uint_eq(presence_total(&a.pr, "news", 4), 1);
    ck_assert_uint_eq(replay_to_b(&a), 1);
}
END_TEST

/* Regression: a hub expires a silent edge's origin at every tick and its
 * record at most once a publish interval. e, frozen (SIGSTOP) and thawed in
 * between, kept its record, its session and its acknowledgements at a, so
 * its UPs carried no page list again: a counted none of its viewers for as
 * long as it lived (nor did a's edges, by DOWN), while b had them back by
 * a's listing. e heard again counts again at a, and at b. */
START_TEST(an_edge_heard_after_its_origin_expired_but_not_its_record_counts_again)
{
    e_views_home_through_a();
    heartbeat(&a, &b);
    now += 10;
    round_trip(&e, &a); /* under a's session: its page list acknowledged */
    ck_assert(!e.edge.pages_changed && e.edge.pages_sent_seq <= e.edge.acked);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    now += TIMEOUT + 1;
    expire_origins(&a);
    expire_origins(&b);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 0);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 0);
    now += 10;
    ck_assert(up(&e)); /* a heartbeat, without the page list */
    ck_assert(!e.edge.pages_changed && e.edge.pages_sent_seq <= e.edge.acked);
    ck_assert_ptr_eq(hub_takes(&a), tier_hub_child(&a.hub, "e")); /* the same record */
    expire(&a);
    ck_assert_ptr_nonnull(tier_hub_child(&a.hub, "e"));
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
    heartbeat(&a, &b);
    ck_assert_uint_eq(heartbeat(&b, &a), 1); /* b wants e */
    relay(&a, "e", &b);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        round_trip(&e, &a);
        relay(&a, "e", &b);
        heartbeat(&a, &b);
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
}
END_TEST

/* Regression: an edge keeps the others' viewers of the pages its own viewers
 * watch; its hub stops sending a page once the edge's list drops it, but the
 * edge kept the last figure it had, and showed it (the plugin re-sets it at
 * every DOWN) for as long as it lived: here f's viewer of p, gone long ago.
 * A DOWN still in flight when the list went up must not bring it back. */
START_TEST(an_edge_forgets_the_others_viewers_of_a_page_its_viewers_left)
{
    viewers(&e, "p", 1);
    viewers(&f, "p", 1);
    round_trip(&e, &a);
    round_trip(&f, &a);
    now += 10;
    struct tier_child *ce = round_trip(&e, &a);
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "p", 1), 2);
    /* a's next DOWN to e is built, and held in flight */
    ck_assert_int_eq(presence_view(&e.pr, "w", "q", 1, &changed), TALLY_OK);
    tier_hub_tick(&a.hub);
    nparts = 0;
    ck_assert_int_eq(
        tier_hub_down(&a.hub, &a.t, &a.pr, ce, now + HB, HB, max_bytes, &out, collect, NULL),
        TALLY_OK);
    ck_assert_uint_eq(nparts, 1);
    struct wire_buf late = {0};
    wbuf_bytes(&late, part[0].data, part[0].len);
    presence_unview(&e.pr, "v0", "p", 1);
    tier_edge_pages_changed(&e.edge);
    now += 10;
    round_trip(&e, &a); /* its list without p */
    ck_assert_int_eq(tier_edge_apply_down(&e.edge, late.data, late.len, NULL, NULL), TALLY_OK);
    wbuf_free(&late);
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "p", 1), 0);
    presence_unview(&f.pr, "v0", "p", 1);
    tier_edge_pages_changed(&f.edge);
    for (int s = 0; s < 3; s++) {
        now += HB;
        round_trip(&e, &a);
        round_trip(&f, &a);
    }
    ck_assert_uint_eq(presence_total(&a.pr, "p", 1), 0);
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "p", 1), 0);
    ck_assert_uint_eq(tier_edge_page_total(&f.edge, &f.pr, "p", 1), 0);
    /* a viewer of p again: followed again */
    viewers(&f, "p", 1);
    viewers(&e, "p", 1);
    for (int s = 0; s < 2; s++) {
        now += HB;
        round_trip(&f, &a);
        round_trip(&e, &a);
    }
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "p", 1), 2);
    ck_assert_uint_eq(tier_edge_page_total(&f.edge, &f.pr, "p", 1), 2);
}
END_TEST

/* Regression: a hub cached the total of every page any edge's viewers had
 * ever watched (a per-tick cache, never emptied): a client at an edge that
 * views page after page (presence/p1, p2, ...) grew every hub's memory
 * without bound. Only the pages viewed now are held. */
START_TEST(a_hub_holds_only_the_pages_its_edges_view_now)
{
    char page[16];
    for (int i = 0; i < 200; i++) {
        snprintf(page, sizeof(page), "p%d", i);
        viewers(&e, page, 1);
        now += HB;
        round_trip(&e, &a);
        presence_unview(&e.pr, "v0", page, strlen(page));
        tier_edge_pages_changed(&e.edge);
        now += HB;
        round_trip(&e, &a);
    }
    viewers(&e, "home", 1);
    now += HB;
    round_trip(&e, &a);
    now += HB;
    round_trip(&e, &a);
    ck_assert_uint_le(tier_hub_entries(&a.hub), 3); /* e, and home */
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, "home", 4), 1);
}
END_TEST

/* A child's relay only where its record still is (a hub forgets it
 * peer_timeout_ms after its last UP). */
static void relay_if_carried(struct node *hub, const char *child, struct node *to)
{
    if (tier_hub_child(&hub->hub, child))
        relay(hub, child, to);
}

/* e moves to b and back to a within peer_timeout_ms: a kept its record and
 * session, b keeps one for peer_timeout_ms more and goes on listing e with
 * what it last relayed. Neither hub counts e's viewers twice or drops them,
 * while both hubs expire at their own cadences, and a change after the move
 * back reaches both. */
START_TEST(an_edge_that_moves_and_comes_back_within_peer_timeout_counts_once)
{
    e_views_home_through_a();
    heartbeat(&a, &b);
    uint64_t session_at_a = e.edge.hub_session;
    for (int s = 0; s < 5 + 3 * TIMEOUT / HB; s++) {
        struct node *at = s < 5 ? &b : &a, *other = s < 5 ? &a : &b;
        now += HB;
        round_trip(&e, at);
        ck_assert(s < 5 ? e.edge.hub_session != session_at_a : e.edge.hub_session == session_at_a);
        relay(at, "e", other);
        heartbeat(&a, &b);
        heartbeat(&b, &a);
        relay_if_carried(&a, "e", &b);
        relay_if_carried(&b, "e", &a);
        expire_origins(&a);
        expire_origins(&b);
        if (s % 3 == 0) { /* records: at most once a publish interval */
            expire(&a);
            expire(&b);
        }
        ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
    ck_assert_ptr_null(tier_hub_child(&b.hub, "e"));
    viewers(&e, "home", 3);
    for (int s = 0; s < 3; s++) {
        now += HB;
        round_trip(&e, &a);
        relay(&a, "e", &b);
        heartbeat(&b, &a);
        heartbeat(&a, &b);
        relay(&a, "e", &b);
    }
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 3);
    ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 3);
}
END_TEST

/* The other order of b38098a's gap: a hub's origin for its edge can outlive
 * its record of it (in a ring, the hub's own relay comes back and counts as
 * hearing the edge). e heard in between makes a new record, with a new
 * session, from an UP without its page list: a keeps counting the viewers it
 * had, e sends its list again once told the session, and b follows. */
START_TEST(an_edge_heard_after_its_record_but_not_its_origin_expired_stays_counted)
{
    e_views_home_through_a();
    heartbeat(&a, &b);
    now += 10;
    round_trip(&e, &a);
    ck_assert(!e.edge.pages_changed && e.edge.pages_sent_seq <= e.edge.acked);
    uint64_t heard = now;
    presence_origin(&a.pr, "e")->last_heard_ms = now + 50; /* its relay, back round a ring */
    now = heard + TIMEOUT + 1;
    tier_hub_expire(&a.hub, now, TIMEOUT);
    expire_origins(&a);
    ck_assert_ptr_null(tier_hub_child(&a.hub, "e"));
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
    ck_assert(up(&e)); /* under the old session, without its page list */
    struct tier_child *ch = hub_takes(&a);
    ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
    down(&a, ch, &e); /* the new session: e forgets its acknowledgements */
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        ck_assert_ptr_nonnull(round_trip(&e, &a));
        relay(&a, "e", &b);
        heartbeat(&a, &b);
        heartbeat(&b, &a);
        relay(&a, "e", &b);
        expire(&a);
        expire(&b);
        ck_assert_uint_eq(presence_total(&a.pr, "home", 4), 2);
        ck_assert_uint_eq(presence_total(&b.pr, "home", 4), 2);
    }
}
END_TEST

START_TEST(bad_messages_are_refused)
{
    inc(&e, "x", 1);
    watch(&e, "x");
    ck_assert(up(&e));
    struct tier_child *ch;
    for (size_t cut = 0; cut + 1 < msg.len; cut++)
        ck_assert_int_ne(tier_hub_apply_up(&a.hub, &a.t, &a.pr, msg.data, cut, now, &ch), TALLY_OK);
    ch = hub_takes(&a);
    tier_hub_tick(&a.hub);
    nparts = 0;
    ck_assert_int_eq(
        tier_hub_down(&a.hub, &a.t, &a.pr, ch, now, HB, max_bytes, &out, collect, NULL), TALLY_OK);
    ck_assert_uint_eq(nparts, 1);
    for (size_t cut = 0; cut + 1 < msg.len; cut++)
        ck_assert_int_ne(tier_edge_apply_down(&e.edge, msg.data, cut, NULL, NULL), TALLY_OK);
    ck_assert_int_eq(tier_edge_apply_down(&e.edge, msg.data, msg.len, NULL, NULL), TALLY_OK);
}
END_TEST

/* A hub in a group (group.c) names it in its DOWNs, version 3: the edge
 * keeps the first group it hears of, the one whose sum its count is in from
 * then on (plugin.c names it in the edge's UP topic, and a hub of another
 * group refuses those), whatever hub answers later. A hub in no group
 * writes version 2, as before; a group that is no node id is refused. */
START_TEST(an_edge_keeps_the_group_of_the_first_hub_in_a_group_that_answered)
{
    inc(&e, "x", 1);
    ck_assert(up(&e));
    struct tier_child *ch = hub_takes(&a);
    ck_assert_uint_eq(down(&a, ch, &e), 1);
    ck_assert_uint_eq(msg.data[2], WIRE_VERSION);
    ck_assert_str_eq(e.edge.group, "");
    strcpy(a.hub.group, "g1");
    now += HB;
    ck_assert_uint_eq(down(&a, ch, &e), 1);
    ck_assert_uint_eq(msg.data[2], WIRE_DOWN_VERSION);
    ck_assert_str_eq(e.edge.group, "g1");
    ck_assert_int_eq(hub_value(&a, "x"), 1);
    /* a DOWN of a hub of another group (one that took the edge's UP
     * anyway: one of an older version, or an UP before the edge knew) */
    strcpy(b.hub.group, "g2");
    ck_assert(up(&e));
    ch = hub_takes(&b);
    ck_assert_uint_eq(down(&b, ch, &e), 1);
    ck_assert_str_eq(e.edge.group, "g1");
    strcpy(b.hub.group, "g 2");
    now += HB;
    tier_hub_tick(&b.hub);
    nparts = 0;
    ck_assert_int_eq(
        tier_hub_down(&b.hub, &b.t, &b.pr, ch, now, HB, max_bytes, &out, collect, NULL), TALLY_OK);
    ck_assert_uint_eq(nparts, 1);
    ck_assert_int_eq(tier_edge_apply_down(&e.edge, msg.data, msg.len, NULL, NULL), TALLY_E_WIRE);
    ck_assert_str_eq(e.edge.group, "g1");
}
END_TEST

/* An edge with 2,000 counters it writes and watches and 300 pages viewed:
 * its UP and the hub's DOWN pass 4096 bytes, and go in parts. */
#define MANY 2000
#define PAGES 300

static void many_names(char *out, const char *kind, int i)
{
    snprintf(out, 64, "%s-%04d-a-longish-name-for-the-test", kind, i);
}

static void many_setup(void)
{
    max_bytes = 4096;
    char name[64];
    for (int i = 0; i < MANY; i++) {
        many_names(name, "c", i);
        inc(&e, name, i % 7 + 1);
        watch(&e, name);
    }
    for (int i = 0; i < PAGES; i++) {
        char client[16];
        snprintf(client, sizeof(client), "v%d", i);
        many_names(name, "page", i);
        ck_assert_int_eq(presence_view(&e.pr, client, name, strlen(name), &changed), TALLY_OK);
    }
    tier_edge_pages_changed(&e.edge);
}

/* How many of e's counters the hub holds exactly. */
static int hub_exact(struct node *hub)
{
    char name[64];
    int exact = 0;
    for (int i = 0; i < MANY; i++) {
        many_names(name, "c", i);
        exact += hub_value(hub, name) == i % 7 + 1;
    }
    return exact;
}

START_TEST(an_up_and_a_down_past_max_bytes_go_in_parts_that_apply_alone)
{
    many_setup();
    ck_assert(up(&e));
    ck_assert_uint_gt(nparts, 10); /* about 100 KB at 4096 bytes a part */
    /* Each part alone: taken in reverse order by b, every slot arrives. */
    struct tier_child *ch = NULL;
    for (size_t i = nparts; i-- > 0;)
        ch = hub_takes_part(&b, i);
    ck_assert_int_eq(hub_exact(&b), MANY);
    /* In order, by a: slots, the watch list and the viewers, all of them. */
    ch = hub_takes(&a);
    ck_assert_int_eq(hub_exact(&a), MANY);
    char name[64];
    many_names(name, "page", PAGES - 1);
    ck_assert_uint_eq(presence_total(&a.pr, name, strlen(name)), 1);
    inc(&f, "c-0001-a-longish-name-for-the-test", 10);
    round_trip(&f, &a);
    /* The DOWN: every watched counter, in parts the edge applies one by one. */
    ck_assert_uint_gt(down(&a, ch, &e), 10);
    for (int i = 0; i < MANY; i++) {
        many_names(name, "c", i);
        ck_assert_int_eq(shown(&e, name), i % 7 + 1 + (i == 1 ? 10 : 0));
    }
    /* That first UP had no session from a: the next, the whole slot again,
     * is acknowledged, part by part, and then nothing goes up until the
     * heartbeat. */
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_gt(nparts, 10);
    hub_takes(&a);
    down(&a, ch, &e);
    now += 10;
    ck_assert(!up(&e));
    /* The relay of e's 300 pages to the other hubs is in parts too. */
    nparts = 0;
    ck_assert_int_eq(tier_hub_relay(ch, &a.pr, max_bytes, now, &out, collect, NULL), TALLY_OK);
    ck_assert_uint_gt(nparts, 1);
    uint32_t relayed = 0;
    for (size_t i = 0; i < nparts; i++) {
        struct wire_presence wp;
        ck_assert_int_eq(wire_decode_presence(part[i].data, part[i].len, &wp), TALLY_OK);
        relayed += wp.npages;
        wire_presence_free(&wp);
    }
    ck_assert_uint_eq(relayed, PAGES);
    /* A part that changes one range of the list (a page's, "Edge: the
     * pages that changed"): only that range goes on. */
    ck_assert_int_eq(presence_view(&e.pr, "late", name, strlen(name), &changed), TALLY_OK);
    tier_edge_pages_changed(&e.edge);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 1);
    ch = hub_takes_part(&a, nparts - 1);
    nparts = 0;
    ck_assert_int_eq(tier_hub_relay(ch, &a.pr, max_bytes, now, &out, collect, NULL), TALLY_OK);
    ck_assert_uint_eq(nparts, 1);
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(part[0].data, part[0].len, &wp), TALLY_OK);
    ck_assert_uint_eq(wp.lo, presence_hash(name, strlen(name)));
    ck_assert_uint_eq(wp.hi, wp.lo);
    ck_assert_uint_eq(wp.npages, 1);
    wire_presence_free(&wp);
    ck_assert_uint_eq(presence_total(&a.pr, name, strlen(name)), 1); /* a new page */
}
END_TEST

/* A part lost in the middle: the hub's ack stops before it, so the edge
 * sends its counters again (an ack past it would leave them out forever). */
START_TEST(a_lost_part_is_not_acknowledged)
{
    many_setup();
    ck_assert(up(&e));
    struct tier_child *ch = hub_takes(&a);
    down(&a, ch, &e); /* e learns a's session */
    now += 10;
    ck_assert(up(&e)); /* its whole slot again, under that session */
    ck_assert_uint_gt(nparts, 3);
    uint64_t first = e.edge.seq - nparts;
    /* a restarts empty (under the same session, as above) and then hears
     * every part but the second */
    node_free(&a);
    node_init(&a);
    tier_hub_init(&a.hub, "a", 111);
    for (size_t i = 0; i < nparts; i++)
        if (i != 1)
            ch = hub_takes_part(&a, i);
    ck_assert_int_lt(hub_exact(&a), MANY);
    down(&a, ch, &e);
    ck_assert_uint_eq(e.edge.acked, first);
    now += 10;
    ck_assert(up(&e));
    hub_takes(&a);
    ck_assert_int_eq(hub_exact(&a), MANY);
}
END_TEST

/* ==== The heartbeat's pages: all of them when owed, else a keepalive with their digest ==== */

/* a's heartbeat at b, part by part: the pages it carried, and whether it
 * was a keepalive alone (one part of no range, no pages, a few bytes). */
static uint32_t heartbeat_pages_at(struct node *to, bool *keepalive)
{
    heartbeat(&a, to);
    uint32_t pages = 0;
    *keepalive = nparts == 1;
    for (size_t i = 0; i < nparts; i++) {
        struct wire_presence wp;
        ck_assert_int_eq(wire_decode_presence(part[i].data, part[i].len, &wp), TALLY_OK);
        pages += wp.npages;
        *keepalive = *keepalive && wp.lo > wp.hi && wp.npages == 0 && part[i].len < 100;
        wire_presence_free(&wp);
    }
    return pages;
}

static void view_pages(struct node *n, int pages)
{
    for (int i = 0; i < pages; i++) {
        char page[64];
        snprintf(page, sizeof(page), "a-page-with-a-longish-name-%04d", i);
        ck_assert_int_eq(presence_view(&n->pr, "v", page, strlen(page), &changed), TALLY_OK);
    }
}

#define OWN_PAGES 600

/* A node's heartbeat at rest is a keepalive, whatever its pages: b holds
 * a's counts as they were, a alive, and wants nothing while the digest of
 * a's own entry is that of the counts b holds. All a's pages go again only
 * when owed. */
START_TEST(a_heartbeat_at_rest_is_a_keepalive_whatever_the_pages)
{
    max_bytes = 4096;
    view_pages(&a, OWN_PAGES);
    bool keepalive;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), OWN_PAGES); /* the first */
    ck_assert_uint_gt(nparts, 2);
    ck_assert(!keepalive);
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0599", 31), 1);
    for (int s = 0; s < 3 * TIMEOUT / HB; s++) {
        now += HB;
        ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
        ck_assert(keepalive);
        ck_assert_uint_eq(heartbeat(&b, &a), 0); /* b wants nothing of a */
        expire_origins(&b);
        struct tally_origin *o = presence_origin(&b.pr, "a");
        ck_assert(o->alive);
        ck_assert_uint_eq(o->last_heard_ms, now);
        ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0000", 31), 1);
        ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0599", 31), 1);
    }
    /* Owed (a change that could not go alone, a node heard anew): at once. */
    now += HB;
    tier_hub_owe_pages(&a.hub);
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), OWN_PAGES);
    now += HB;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
    ck_assert(keepalive);
}
END_TEST

/* b wants a at its next heartbeat, and a's next carries all its `pages`:
 * b then counts `viewers` of page 42 and wants nothing more. */
static void b_wants_a_and_is_healed(uint32_t pages, uint64_t viewers)
{
    bool keepalive;
    ck_assert_uint_eq(heartbeat(&b, &a), 1);
    now += HB;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), pages);
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0042", 31), viewers);
    ck_assert_uint_eq(heartbeat(&b, &a), 0);
}

/* b lost all a's counts (it restarted): a's keepalive tells it a is alive,
 * and its own entry that b lacks counts, so b's next heartbeat wants a, and
 * a's next heartbeat after that carries them all. */
START_TEST(a_node_that_lacks_our_counts_wants_them_and_has_them_at_our_next_heartbeat)
{
    view_pages(&a, 100);
    bool keepalive;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 100);
    node_free(&b);
    node_init(&b);
    tier_hub_init(&b.hub, "b", 333);
    now += HB;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
    ck_assert(keepalive);
    ck_assert(presence_origin(&b.pr, "a")->alive);
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0042", 31), 0);
    b_wants_a_and_is_healed(100, 1);
    now += HB;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
    ck_assert(keepalive);
}
END_TEST

/* A change of a's counts goes alone; lost on its way to b, a's next
 * keepalive shows b another digest: b wants a, and a's next heartbeat
 * heals it. A change still unsent at a heartbeat goes ahead of it, so that
 * its digest never makes b want a for nothing. */
START_TEST(a_change_lost_on_its_way_is_wanted_at_the_next_heartbeat)
{
    view_pages(&a, 100);
    bool keepalive;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 100);
    ck_assert_int_eq(presence_view(&a.pr, "w", "a-page-with-a-longish-name-0042", 31, &changed),
                     TALLY_OK);
    static uint64_t seq = 1000000; /* above heartbeat()'s */
    nparts = 0;
    ck_assert_uint_eq(presence_announce_changes(&a.pr, "a", 1, ++seq, &out, collect, NULL), 1);
    /* lost */
    now += HB;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
    ck_assert(keepalive);
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0042", 31), 1);
    b_wants_a_and_is_healed(100, 2);
    /* A change made since a's last announcement rides its heartbeat. */
    ck_assert_int_eq(presence_view(&a.pr, "x", "a-page-with-a-longish-name-0042", 31, &changed),
                     TALLY_OK);
    now += HB;
    heartbeat(&a, &b);
    ck_assert_uint_eq(nparts, 2); /* the change alone, then the keepalive */
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0042", 31), 3);
    ck_assert_uint_eq(heartbeat(&b, &a), 0);
}
END_TEST

/* b expired a (it did not hear a for a while) while a heard b all along, so
 * a owes b nothing it knows of: a's next keepalive makes a alive at b with
 * no counts, and b wants them. */
START_TEST(a_node_that_expired_us_while_we_heard_it_wants_our_counts)
{
    view_pages(&a, 100);
    bool keepalive;
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 100);
    now += TIMEOUT + 1;
    expire_origins(&b);
    ck_assert(!presence_origin(&b.pr, "a")->alive);
    ck_assert_uint_eq(presence_total(&b.pr, "a-page-with-a-longish-name-0042", 31), 0);
    ck_assert_uint_eq(heartbeat_pages_at(&b, &keepalive), 0);
    ck_assert(presence_origin(&b.pr, "a")->alive);
    b_wants_a_and_is_healed(100, 1);
}
END_TEST

/* ==== An edge's UP: the pages that changed (tier.c) ==== */

#define EDGE_PAGES 400

static void page_of(char *out, int i)
{
    snprintf(out, 64, "a-page-with-a-longish-name-%04d", i);
}

/* client views (on) or leaves page i at the edge. */
static void edge_views(struct node *edge, const char *client, int i, bool on)
{
    char page[64];
    page_of(page, i);
    if (on)
        ck_assert_int_eq(presence_view(&edge->pr, client, page, strlen(page), &changed), TALLY_OK);
    else
        presence_unview(&edge->pr, client, page, strlen(page));
    tier_edge_pages_changed(&edge->edge);
}

static size_t up_bytes(void)
{
    size_t bytes = 0;
    for (size_t i = 0; i < nparts; i++)
        bytes += part[i].len;
    return bytes;
}

/* The edge views `pages` pages and a holds its whole list, acknowledged. */
static struct tier_child *pages_acked(struct node *edge, int pages)
{
    max_bytes = 4096;
    view_pages(edge, pages);
    tier_edge_pages_changed(&edge->edge);
    struct tier_child *ch = round_trip(edge, &a); /* the edge learns a's session */
    now += 10;
    ck_assert(up(edge)); /* its whole list again, under that session */
    hub_takes(&a);
    relay(&a, edge->edge.node_id, NULL);
    down(&a, ch, edge);
    now += 10;
    ck_assert(!up(edge));
    return ch;
}

/* How many of the edge's first `pages` pages a hub that hears nothing but
 * the last UP holds: b, made anew, its first record of an edge under the
 * session the edge's UPs name (a hub takes changes only under its own). */
static int pages_in_last_up(struct node *edge, int pages)
{
    node_free(&b);
    node_init(&b);
    tier_hub_init(&b.hub, "b", edge->edge.hub_session - 1);
    hub_takes(&b);
    int held = 0;
    for (int i = 0; i < pages; i++) {
        char page[64];
        page_of(page, i);
        held += presence_total(&b.pr, page, strlen(page)) > 0;
    }
    return held;
}

static uint64_t hub_total(struct node *hub, int i)
{
    char page[64];
    page_of(page, i);
    return presence_total(&hub->pr, page, strlen(page));
}

/* One page's viewers change among EDGE_PAGES: the UP holds that page's hash
 * alone, a part of a hundred bytes (the whole list is about 13 KB), which
 * replaces that range only at the hub, and only that range is relayed. */
START_TEST(an_up_carries_only_the_pages_that_changed)
{
    pages_acked(&e, EDGE_PAGES);
    edge_views(&e, "w", 7, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 1);
    ck_assert_uint_lt(up_bytes(), 150);
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), 1);
    hub_takes(&a);
    for (int i = 0; i < EDGE_PAGES; i++)
        ck_assert_uint_eq(hub_total(&a, i), i == 7 ? 2 : 1);
    ck_assert_uint_eq(relay(&a, "e", &b), 1);
    char page[64];
    page_of(page, 7);
    ck_assert_uint_eq(presence_total(&b.pr, page, strlen(page)), 2);
    /* acknowledged: nothing more goes up until the next change */
    down(&a, tier_hub_child(&a.hub, "e"), &e);
    now += 10;
    ck_assert(!up(&e));
}
END_TEST

/* An UP of changes lost on its way: the next carries its change again,
 * beside the new one, until a hub acknowledges an UP that held it. */
START_TEST(an_up_lost_on_its_way_loses_no_change)
{
    struct tier_child *ch = pages_acked(&e, EDGE_PAGES);
    edge_views(&e, "w", 7, true);
    now += 10;
    ck_assert(up(&e)); /* lost */
    ck_assert_uint_eq(nparts, 1);
    now += 10;
    ck_assert(up(&e)); /* unacknowledged: again, once an interval */
    ck_assert_uint_eq(nparts, 1);
    edge_views(&e, "w", 9, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 2);
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), 2);
    hub_takes(&a);
    ck_assert_uint_eq(hub_total(&a, 7), 2);
    ck_assert_uint_eq(hub_total(&a, 9), 2);
    ck_assert_uint_eq(hub_total(&a, 8), 1);
    down(&a, ch, &e);
    edge_views(&e, "w", 11, true);
    now += 10;
    ck_assert(up(&e)); /* acknowledged changes go no more */
    ck_assert_uint_eq(nparts, 1);
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), 1);
    ck_assert_uint_eq(hub_total(&b, 11), 2);
}
END_TEST

static void published(const char *page, size_t len, uint64_t total, void *ud)
{
    (void)page;
    (void)len;
    (void)total;
    (void)ud;
}

/* A page whose last viewer left (and which the edge freed once its 0 was
 * published): its hash goes as an empty range, which takes it off the hub. */
START_TEST(a_page_left_goes_up_as_an_empty_range)
{
    pages_acked(&e, EDGE_PAGES);
    edge_views(&e, "v", 7, false);
    presence_flush(&e.pr, now, 1000000, published, NULL); /* frees it */
    char page[64];
    page_of(page, 7);
    ck_assert_uint_eq(tier_edge_page_total(&e.edge, &e.pr, page, strlen(page)), 0);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 1);
    ck_assert_uint_lt(up_bytes(), 100);
    hub_takes(&a);
    ck_assert_uint_eq(hub_total(&a, 7), 0);
    ck_assert_uint_eq(hub_total(&a, 6), 1);
    ck_assert_uint_eq(hub_total(&a, 8), 1);
    /* viewed again: back */
    edge_views(&e, "v", 7, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 1);
    hub_takes(&a);
    ck_assert_uint_eq(hub_total(&a, 7), 1);
}
END_TEST

/* Changes of up to a quarter of the pages go alone; past that, or on an
 * edge of fewer than PRESENCE_CHANGES_MIN_PAGES pages, the whole list goes,
 * as it does until the hub has acknowledged one. */
START_TEST(past_a_quarter_of_the_pages_changed_the_whole_list_goes_up)
{
    struct tier_child *ch = pages_acked(&e, EDGE_PAGES);
    for (int i = 0; i < EDGE_PAGES / 4; i++)
        edge_views(&e, "w", i, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, EDGE_PAGES / 4);
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), EDGE_PAGES / 4);
    hub_takes(&a);
    down(&a, ch, &e);
    for (int i = 0; i < EDGE_PAGES / 4 + 1; i++)
        edge_views(&e, "x", i, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_lt(nparts, EDGE_PAGES / 4);
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), EDGE_PAGES);
    /* not acknowledged yet: a change sends the whole list again */
    edge_views(&e, "y", 0, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_int_eq(pages_in_last_up(&e, EDGE_PAGES), EDGE_PAGES);
    hub_takes(&a);
    ck_assert_uint_eq(hub_total(&a, 0), 4);
    ck_assert_uint_eq(hub_total(&a, EDGE_PAGES / 4), 2);
    ck_assert_uint_eq(hub_total(&a, EDGE_PAGES - 1), 1);
    /* few pages: one message holds them all */
    pages_acked(&f, PRESENCE_CHANGES_MIN_PAGES - 1);
    edge_views(&f, "w", 0, true);
    now += 10;
    ck_assert(up(&f));
    ck_assert_int_eq(pages_in_last_up(&f, PRESENCE_CHANGES_MIN_PAGES - 1),
                     PRESENCE_CHANGES_MIN_PAGES - 1);
}
END_TEST

/* e moves to b with a change not yet acknowledged: b holds e's pages as a
 * relayed them, and a record of e made by this UP, with none of its list.
 * The change alone would stand for all e's pages at b: b waits for the
 * whole list, which e sends once it hears b's session. */
START_TEST(a_change_that_reaches_a_new_hub_waits_for_the_whole_list)
{
    pages_acked(&e, EDGE_PAGES); /* its relay lost */
    now += HB;
    heartbeat(&a, &b);
    /* b never held any of e's viewers: it waits a heartbeat for a replay
     * (presence_replay, of a neighbour that saw it restart) before it
     * wants e */
    ck_assert_uint_eq(heartbeat(&b, &a), 0);
    now += HB;
    ck_assert_uint_eq(heartbeat(&b, &a), 1); /* b wants e */
    ck_assert_uint_gt(relay(&a, "e", &b), 1);
    ck_assert_uint_eq(hub_total(&b, 8), 1);
    edge_views(&e, "w", 7, true);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_eq(nparts, 1);
    struct tier_child *ch = hub_takes(&b);
    ck_assert_uint_eq(hub_total(&b, 8), 1);
    ck_assert_uint_eq(hub_total(&b, 7), 1);
    down(&b, ch, &e);
    now += 10;
    ck_assert(up(&e));
    ck_assert_uint_gt(nparts, 1);
    hub_takes(&b);
    for (int i = 0; i < EDGE_PAGES; i++)
        ck_assert_uint_eq(hub_total(&b, i), i == 7 ? 2 : 1);
}
END_TEST

Suite *tier_suite(void)
{
    Suite *s = suite_create("tier");
    TCase *tc = tcase_create("tier");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, edge_holds_only_its_own_slot_and_shows_the_world);
    tcase_add_test(tc, an_edge_sends_its_past_life_up_and_shows_it_once);
    tcase_add_test(tc, a_view_lingers_after_its_last_watcher);
    tcase_add_test(tc, an_edge_shows_a_total_only_while_it_follows_the_counter);
    tcase_add_test(tc, a_counter_only_watched_at_an_edge_keeps_its_figures_past_its_view);
    tcase_add_test(tc, a_lost_up_is_carried_by_the_next);
    tcase_add_test(tc, an_unacknowledged_up_is_resent_once_an_interval);
    tcase_add_test(tc, failover_sends_the_whole_slot_and_counts_it_once);
    tcase_add_test(tc, a_new_hub_that_knows_less_never_makes_a_total_go_back);
    tcase_add_test(tc, a_reset_at_a_hub_reaches_the_edge);
    tcase_add_test(tc, an_edge_shows_the_parts_of_the_clusters_total);
    tcase_add_test(tc, a_forgotten_edge_resends_everything);
    tcase_add_test(tc, presence_is_summed_over_edges_and_an_edge_that_moves_counts_once);
    tcase_add_test(tc, a_listed_edge_stays_alive_and_leaves_once_unheard);
    tcase_add_test(tc, a_lost_relay_is_wanted_and_sent_again);
    tcase_add_test(tc, a_relay_long_after_an_edge_was_heard_does_not_revive_it);
    tcase_add_test(tc, a_hubs_own_relay_back_through_a_ring_does_not_keep_its_edge_alive);
    tcase_add_test(tc, a_hubs_own_relay_back_after_it_forgot_its_edge_does_not_revive_it);
    tcase_add_test(tc, an_edge_that_moves_off_a_dead_hub_is_counted_once);
    tcase_add_test(tc, an_edge_heard_after_its_origin_expired_but_not_its_record_counts_again);
    tcase_add_test(tc, an_edge_forgets_the_others_viewers_of_a_page_its_viewers_left);
    tcase_add_test(tc, an_edge_that_moves_and_comes_back_within_peer_timeout_counts_once);
    tcase_add_test(tc, an_edge_heard_after_its_record_but_not_its_origin_expired_stays_counted);
    tcase_add_test(tc, an_edge_that_moves_to_a_hub_holding_its_pages_is_not_relayed_again);
    tcase_add_test(tc, a_hub_that_lacks_the_pages_of_an_edge_that_moved_wants_them);
    tcase_add_test(tc, a_hub_replays_its_own_edges_to_a_restarted_neighbour);
    tcase_add_test(tc, a_carried_edge_is_listed_once_and_kept_alive_by_the_carriers_keepalive);
    tcase_add_test(tc, a_lost_entry_is_found_by_the_carried_set_and_the_full_listing_names_it);
    tcase_add_test(tc, an_edge_a_carrier_forgot_leaves_its_set_at_the_full_listing);
    tcase_add_test(tc, an_edge_that_moves_leaves_its_old_carriers_set_at_once);
    tcase_add_test(tc, a_replay_names_the_carrier_and_a_restarted_hub_wants_no_listing);
    tcase_add_test(tc, bad_messages_are_refused);
    tcase_add_test(tc, an_edge_keeps_the_group_of_the_first_hub_in_a_group_that_answered);
    tcase_add_test(tc, an_up_and_a_down_past_max_bytes_go_in_parts_that_apply_alone);
    tcase_add_test(tc, a_lost_part_is_not_acknowledged);
    tcase_add_test(tc, a_hub_holds_only_the_pages_its_edges_view_now);
    tcase_add_test(tc, a_name_nobody_writes_is_neither_shown_nor_kept_at_an_edge);
    tcase_add_test(tc, a_heartbeat_at_rest_is_a_keepalive_whatever_the_pages);
    tcase_add_test(tc, a_node_that_lacks_our_counts_wants_them_and_has_them_at_our_next_heartbeat);
    tcase_add_test(tc, a_change_lost_on_its_way_is_wanted_at_the_next_heartbeat);
    tcase_add_test(tc, a_node_that_expired_us_while_we_heard_it_wants_our_counts);
    tcase_add_test(tc, an_up_carries_only_the_pages_that_changed);
    tcase_add_test(tc, an_up_lost_on_its_way_loses_no_change);
    tcase_add_test(tc, a_page_left_goes_up_as_an_empty_range);
    tcase_add_test(tc, past_a_quarter_of_the_pages_changed_the_whole_list_goes_up);
    tcase_add_test(tc, a_change_that_reaches_a_new_hub_waits_for_the_whole_list);
    suite_add_tcase(s, tc);
    return s;
}
