/*
 * test_reset.c - the observed reset and delete of reset.c, on tables that
 * stand for three nodes and exchange whole counter states as SYNC messages
 * (encoded and decoded by wire.c), in every order: what the README promises
 * of a reset with a concurrent increment, of a delete, and of an increment
 * after a delete, with nothing counted twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

struct node {
    struct tally_table t;
    uint32_t self;
};

static void node_init(struct node *n, const char *id)
{
    table_init(&n->t, 1000, 100);
    ck_assert_int_eq(table_replica(&n->t, id, strlen(id), 1, &n->self), TALLY_OK);
}

static struct tally_counter *get(struct node *n, const char *name)
{
    struct tally_counter *c;
    ck_assert_int_eq(table_get(&n->t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    return c;
}

static void inc(struct node *n, const char *name, int64_t delta)
{
    ck_assert_int_eq(table_add(&n->t, get(n, name), n->self, delta, &changed), TALLY_OK);
}

static void report(struct node *n, const char *name, const char *device, uint64_t total)
{
    uint32_t d;
    ck_assert_int_eq(table_device(&n->t, device, strlen(device), DEVICE_LOCAL, &d), TALLY_OK);
    ck_assert_int_eq(table_merge_device(&n->t, get(n, name), d, total, true, &changed), TALLY_OK);
}

static void reset(struct node *n, const char *name, bool delete)
{
    ck_assert_int_eq(table_reset(&n->t, get(n, name), delete), TALLY_OK);
}

static int64_t value(struct node *n, const char *name)
{
    return table_value(&n->t, get(n, name));
}

static bool hidden(struct node *n, const char *name)
{
    return table_hidden(&n->t, get(n, name));
}

/* Sends every counter of `from` to `to` as one SYNC message, merged as the
 * plugin merges one (repl_apply_sync): slots, device maxima, then the base. */
static void sync(struct node *from, struct node *to)
{
    struct wire_sync_writer w = {0};
    struct wire_sync s;
    struct repl r;
    uint16_t k;
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, from->t.counters, c, tmp)
    {
        ck_assert_int_eq(sync_writer_add(&w, &from->t, c), TALLY_OK);
    }
    ck_assert_int_eq(sync_writer_finish(&w, "x", 1, 1), TALLY_OK);
    ck_assert_int_eq(wire_decode_sync(w.out.data, w.out.len, &s), TALLY_OK);
    repl_init(&r, 2);
    ck_assert_int_eq(repl_neighbour(&r, "x", &k), TALLY_OK);
    ck_assert_int_eq(repl_apply_sync(&r, &to->t, NULL, &s, k), TALLY_OK);
    repl_free(&r);
    wire_sync_free(&s);
    sync_writer_free(&w);
}

/* Every node sends to every other, twice: a full mesh that has converged. */
static void converge(struct node *n, int count)
{
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < count; i++)
            for (int j = 0; j < count; j++)
                if (i != j)
                    sync(&n[i], &n[j]);
    for (int i = 1; i < count; i++)
        ck_assert_mem_eq(n[0].t.digest, n[i].t.digest, sizeof(n[0].t.digest));
}

static void free_all(struct node *n, int count)
{
    for (int i = 0; i < count; i++)
        table_free(&n[i].t);
}

START_TEST(test_reset_keeps_concurrent_increments)
{
    struct node n[3];
    node_init(&n[0], "a"), node_init(&n[1], "b"), node_init(&n[2], "c");
    inc(&n[0], "likes", 10);
    inc(&n[1], "likes", 5);
    converge(n, 3);
    ck_assert_int_eq(value(&n[2], "likes"), 15);
    /* a resets while b and c increment, before either hears of the reset */
    reset(&n[0], "likes", false);
    inc(&n[1], "likes", 7);
    inc(&n[2], "likes", -2);
    ck_assert_int_eq(value(&n[0], "likes"), 0);
    converge(n, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(value(&n[i], "likes"), 5); /* 7 - 2: what a had not seen */
        ck_assert(!hidden(&n[i], "likes"));
    }
    /* Repeated and replayed resets take nothing more. */
    reset(&n[2], "likes", false);
    reset(&n[2], "likes", false);
    converge(n, 3);
    ck_assert_int_eq(value(&n[1], "likes"), 0);
    inc(&n[1], "likes", 4);
    converge(n, 3);
    ck_assert_int_eq(value(&n[0], "likes"), 4);
    free_all(n, 3);
}
END_TEST

START_TEST(test_merge_order_does_not_matter)
{
    /* The same operations, delivered in two different orders, give the same
     * state and value. */
    struct node n[3], m[3];
    const char *ids[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        node_init(&n[i], ids[i]), node_init(&m[i], ids[i]);
    for (struct node *x = n; x; x = x == n ? m : NULL) {
        inc(&x[0], "v", 3);
        inc(&x[1], "v", 4);
        sync(&x[1], &x[0]);
        reset(&x[0], "v", false);
        inc(&x[1], "v", 1);
        inc(&x[2], "v", 9);
    }
    sync(&n[0], &n[2]), sync(&n[1], &n[2]), sync(&n[2], &n[0]), sync(&n[2], &n[1]);
    sync(&n[0], &n[1]), sync(&n[1], &n[0]);
    sync(&m[0], &m[1]), sync(&m[0], &m[2]), sync(&m[1], &m[0]), sync(&m[2], &m[1]);
    sync(&m[1], &m[2]), sync(&m[2], &m[0]), sync(&m[1], &m[0]);
    for (int i = 0; i < 3; i++) {
        ck_assert_mem_eq(n[i].t.digest, m[0].t.digest, sizeof(n[i].t.digest));
        ck_assert_int_eq(value(&n[i], "v"), 10); /* 1 + 9 */
        ck_assert_int_eq(value(&m[i], "v"), 10);
    }
    free_all(n, 3);
    free_all(m, 3);
}
END_TEST

START_TEST(test_delete_hides_and_an_increment_brings_it_back)
{
    struct node n[3];
    node_init(&n[0], "a"), node_init(&n[1], "b"), node_init(&n[2], "c");
    inc(&n[0], "gone", 8);
    inc(&n[1], "gone", 2);
    converge(n, 3);
    reset(&n[1], "gone", true);
    ck_assert(hidden(&n[1], "gone"));
    converge(n, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert(hidden(&n[i], "gone"));
        ck_assert_int_eq(value(&n[i], "gone"), 0);
    }
    /* An increment after the delete, anywhere: back, counting from zero. */
    inc(&n[2], "gone", 3);
    ck_assert(!hidden(&n[2], "gone"));
    converge(n, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert(!hidden(&n[i], "gone"));
        ck_assert_int_eq(value(&n[i], "gone"), 3);
    }
    /* A reset of a deleted counter takes nothing more (what plugin.c does for
     * a 0 increment): the digest moves only by the stamp, and it is shown. */
    reset(&n[1], "gone", true);
    converge(n, 3);
    const struct tally_base *b = table_base(&n[1].t, get(&n[1], "gone"));
    uint32_t nbase = b->nslots;
    struct tally_base_slot before[8];
    ck_assert_uint_le(nbase, 8);
    memcpy(before, b->slots, nbase * sizeof(*before));
    uint64_t digest[TALLY_BUCKETS];
    memcpy(digest, n[1].t.digest, sizeof(digest));
    reset(&n[1], "gone", false);
    b = table_base(&n[1].t, get(&n[1], "gone"));
    ck_assert_uint_eq(b->nslots, nbase);
    ck_assert_mem_eq(b->slots, before, nbase * sizeof(*before));
    ck_assert_uint_eq(b->reset, b->deleted + 1);
    ck_assert(memcmp(digest, n[1].t.digest, sizeof(digest)) != 0); /* the stamp moved */
    ck_assert(!hidden(&n[1], "gone"));
    ck_assert_int_eq(value(&n[1], "gone"), 0);
    converge(n, 3);
    ck_assert(!hidden(&n[0], "gone"));
    /* Deleted again, then reset by a node that saw the delete: shown at 0. */
    reset(&n[0], "gone", true);
    converge(n, 3);
    ck_assert(hidden(&n[2], "gone"));
    reset(&n[2], "gone", false);
    converge(n, 3);
    ck_assert(!hidden(&n[0], "gone"));
    ck_assert_int_eq(value(&n[0], "gone"), 0);
    free_all(n, 3);
}
END_TEST

START_TEST(test_concurrent_delete_and_increment_or_reset)
{
    struct node n[2];
    node_init(&n[0], "a"), node_init(&n[1], "b");
    inc(&n[0], "x", 5);
    inc(&n[0], "y", 5);
    converge(n, 2);
    /* a deletes x while b increments it: the increment survives, x stays. */
    reset(&n[0], "x", true);
    inc(&n[1], "x", 1);
    converge(n, 2);
    ck_assert(!hidden(&n[0], "x"));
    ck_assert_int_eq(value(&n[0], "x"), 1);
    /* a deletes y while b resets it, each unaware: the same stamp, and a
     * delete wins a tie; nothing was added, so y is gone everywhere. */
    reset(&n[0], "y", true);
    reset(&n[1], "y", false);
    converge(n, 2);
    ck_assert(hidden(&n[0], "y") && hidden(&n[1], "y"));
    free_all(n, 2);
}
END_TEST

START_TEST(test_reset_of_device_reports)
{
    struct node n[2];
    node_init(&n[0], "a"), node_init(&n[1], "b");
    report(&n[0], "meter", "m-1", 100);
    inc(&n[0], "meter", 1);
    converge(n, 2);
    ck_assert_int_eq(value(&n[1], "meter"), 101);
    reset(&n[1], "meter", false);
    report(&n[0], "meter", "m-1", 130); /* concurrent with the reset */
    converge(n, 2);
    ck_assert_int_eq(value(&n[0], "meter"), 30); /* the rise since the reset */
    /* the state document's parts follow the value */
    struct tally_sums s;
    table_sums(&n[0].t, get(&n[0], "meter"), &s);
    ck_assert_int_eq(s.devices, 30);
    ck_assert_int_eq(s.p, 0);
    free_all(n, 2);
}
END_TEST

/* A counter may hold max_devices devices, and a reset gives it a base entry
 * for each: each device's base is found by a binary search, not by walking
 * the base. With the walk this test ran past its timeout (the reset alone
 * took the broker 13 s at 100,000 devices, and each publish of the total 2 s
 * after it); it takes a fraction of a second. */
START_TEST(test_reset_of_a_counter_with_many_devices)
{
    enum { DEVICES = 50000 };
    struct node n[2];
    for (int i = 0; i < 2; i++) {
        table_init(&n[i].t, 1000, DEVICES + 1);
        ck_assert_int_eq(table_replica(&n[i].t, i ? "b" : "a", 1, 1, &n[i].self), TALLY_OK);
    }
    struct tally_counter *c = get(&n[0], "meters");
    char id[16];
    for (int i = 0; i < DEVICES; i++) {
        uint32_t d;
        snprintf(id, sizeof(id), "m-%d", i);
        ck_assert_int_eq(table_device(&n[0].t, id, strlen(id), DEVICE_PEER, &d), TALLY_OK);
        ck_assert_int_eq(table_merge_device(&n[0].t, c, d, 2, false, &changed), TALLY_OK);
    }
    ck_assert_int_eq(value(&n[0], "meters"), 2 * DEVICES);
    reset(&n[0], "meters", false);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(value(&n[0], "meters"), 0);
    report(&n[0], "meters", "m-7", 5);
    report(&n[0], "meters", "m-new", 4);
    ck_assert_int_eq(value(&n[0], "meters"), 3 + 4);
    ck_assert(!hidden(&n[0], "meters"));
    sync(&n[0], &n[1]);
    ck_assert_int_eq(value(&n[1], "meters"), 3 + 4);
    free_all(n, 2);
}
END_TEST

/* A hub holds a slot per edge in a counter every edge writes, and a reset
 * gives it a base entry for each; a retired life of an edge leaves a fold
 * entry (fold.c). Summing walks the slots, the base and the fold entries in
 * step, all three sorted by replica: a lookup in the base for each slot made
 * a counter of 10,000 slots, once reset, cost 26 ms a sum (at every publish
 * of its total and every DOWN to an edge watching it), and this test ran
 * past its timeout; it takes a fraction of a second. The figures: each
 * slot, with its base and its fold entry interleaved, gives what the README
 * promises after a reset. */
START_TEST(test_reset_of_a_counter_with_many_slots)
{
    enum { EDGES = 50000 };
    struct node n[2];
    for (int i = 0; i < 2; i++)
        node_init(&n[i], i ? "b" : "a");
    struct tally_counter *c = get(&n[0], "likes");
    uint32_t *edge = malloc(EDGES * sizeof(*edge));
    char id[16];
    for (int i = 0; i < EDGES; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        ck_assert_int_eq(table_replica(&n[0].t, id, strlen(id), 1, &edge[i]), TALLY_OK);
        ck_assert_int_eq(table_merge_slot(&n[0].t, c, edge[i], 10 + i % 5, i % 3, &changed),
                         TALLY_OK);
    }
    reset(&n[0], "likes", false);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(value(&n[0], "likes"), 0);
    /* after the reset: every 7th edge adds 3 and takes 1; every 11th has a
     * fold entry 2 past its slot (what a fold moved elsewhere: taken from it
     * as well); every 13th is new since the reset (no base entry) */
    int64_t want = 0;
    for (int i = 0; i < EDGES; i++) {
        const struct tally_slot *sl = counter_slot(c, edge[i]);
        uint64_t p = sl->p, n_ = sl->n;
        if (i % 7 == 0) {
            ck_assert_int_eq(table_merge_slot(&n[0].t, c, edge[i], p + 3, n_ + 1, &changed),
                             TALLY_OK);
            want += 3 - 1;
        }
        if (i % 11 == 0) {
            struct tally_fold f = {.replica = edge[i], .p = p + 2, .n = n_};
            ck_assert_int_eq(table_merge_fold(&n[0].t, c, &f, &changed), TALLY_OK);
            want -= i % 7 == 0 ? 2 : 0;
        }
        if (i % 13 == 0) {
            uint32_t r;
            snprintf(id, sizeof(id), "new-%d", i);
            ck_assert_int_eq(table_replica(&n[0].t, id, strlen(id), 1, &r), TALLY_OK);
            ck_assert_int_eq(table_merge_slot(&n[0].t, c, r, 4, 1, &changed), TALLY_OK);
            want += 4 - 1;
        }
    }
    ck_assert_int_gt(want, 0);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(value(&n[0], "likes"), want);
    ck_assert(!hidden(&n[0], "likes"));
    /* each slot's share is what table_slot_taken says it loses, one by one */
    int64_t each = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        uint64_t bp, bn;
        table_slot_taken(&n[0].t, c, c->slots[i].replica, &bp, &bn);
        each += (int64_t)(c->slots[i].p - (c->slots[i].p > bp ? bp : c->slots[i].p)) -
                (int64_t)(c->slots[i].n - (c->slots[i].n > bn ? bn : c->slots[i].n));
    }
    ck_assert_int_eq(each, want);
    sync(&n[0], &n[1]);
    ck_assert_int_eq(value(&n[1], "likes"), want);
    free(edge);
    free_all(n, 2);
}
END_TEST

START_TEST(test_version_1_sync_still_merges)
{
    /* A SYNC from a node of the previous version (no base section). */
    static const char v1[] =
        "TL\x01\x01\x02n9\x01\x02n9\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x00\x05\x00\x00";
    struct wire_sync s;
    ck_assert_int_eq(wire_decode_sync(v1, sizeof(v1) - 1, &s), TALLY_OK);
    ck_assert_uint_eq(s.ncounters, 1);
    ck_assert(!s.counters[0].based);
    ck_assert_uint_eq(s.slots[0].p, 5);
    wire_sync_free(&s);
}
END_TEST

Suite *reset_suite(void)
{
    Suite *s = suite_create("reset");
    TCase *tc = tcase_create("observed reset");
    tcase_add_test(tc, test_reset_keeps_concurrent_increments);
    tcase_add_test(tc, test_merge_order_does_not_matter);
    tcase_add_test(tc, test_delete_hides_and_an_increment_brings_it_back);
    tcase_add_test(tc, test_concurrent_delete_and_increment_or_reset);
    tcase_add_test(tc, test_reset_of_device_reports);
    tcase_add_test(tc, test_version_1_sync_still_merges);
    tcase_add_test(tc, test_reset_of_a_counter_with_many_devices);
    tcase_add_test(tc, test_reset_of_a_counter_with_many_slots);
    suite_add_tcase(s, tc);
    return s;
}
