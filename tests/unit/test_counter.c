/*
 * test_counter.c - the PN-counter's merge law and range invariants
 * (counter.c), and the table around it: bounds, dirty list, digests
 * (table.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

#define MAX TALLY_MAX_SAFE

/* splitmix64: a seeded PRNG, so a failure replays exactly. */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n)
{
    return rnd() % n;
}

/* A slot value: mostly small, sometimes anywhere up to 2^53-1. */
static uint64_t rnd_value(void)
{
    switch (rnd_below(4)) {
    case 0:
        return 0;
    case 1:
        return rnd_below(100);
    case 2:
        return rnd_below((uint64_t)MAX + 1);
    default:
        return (uint64_t)MAX - rnd_below(3);
    }
}

static struct tally_table table;

static void table_setup(void)
{
    rng_state = 42;
    table_init(&table, 1000000, 1000);
}

static void table_teardown(void)
{
    table_free(&table);
}

static struct tally_counter *counter(const char *name)
{
    struct tally_counter *c = NULL;
    ck_assert_int_eq(table_get(&table, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    return c;
}

/* ==== Merge law ==== */

#define NREPLICAS 6
#define NDEVICES 4

/* A random state as the list of merges that builds it. */
struct state {
    int nslots, ndevs;
    struct tally_slot slots[12];
    struct tally_dev devs[8];
};

static void random_state(struct state *s)
{
    s->nslots = (int)rnd_below(13);
    for (int i = 0; i < s->nslots; i++)
        s->slots[i] = (struct tally_slot){
            .replica = (uint32_t)rnd_below(NREPLICAS), .p = rnd_value(), .n = rnd_value()};
    s->ndevs = (int)rnd_below(9);
    for (int i = 0; i < s->ndevs; i++)
        s->devs[i] =
            (struct tally_dev){.device = (uint32_t)rnd_below(NDEVICES), .total = rnd_value()};
}

/* Merges one slot or device and checks that nothing went down and that the
 * return value says whether something rose. */
static bool merge_slot_checked(struct tally_counter *c, const struct tally_slot *in)
{
    const struct tally_slot *had = counter_slot(c, in->replica);
    struct tally_slot before = had ? *had : (struct tally_slot){.replica = in->replica};
    bool rose;
    ck_assert_int_eq(counter_merge_slot(c, in->replica, in->p, in->n, &rose), TALLY_OK);
    const struct tally_slot *now = counter_slot(c, in->replica);
    struct tally_slot after = now ? *now : (struct tally_slot){.replica = in->replica};
    ck_assert_uint_ge(after.p, before.p);
    ck_assert_uint_ge(after.n, before.n);
    ck_assert_uint_eq(after.p, before.p > in->p ? before.p : in->p);
    ck_assert_uint_eq(after.n, before.n > in->n ? before.n : in->n);
    /* rose says whether something rose, or the slot is new (a zero slot says
     * the counter exists). */
    ck_assert_int_eq(rose, after.p != before.p || after.n != before.n || !had);
    return rose;
}

static bool merge_dev_checked(struct tally_counter *c, const struct tally_dev *in)
{
    const struct tally_dev *had = counter_device(c, in->device);
    uint64_t before = had ? had->total : 0;
    bool rose;
    ck_assert_int_eq(counter_merge_device(c, in->device, in->total, &rose), TALLY_OK);
    const struct tally_dev *now = counter_device(c, in->device);
    uint64_t after = now ? now->total : 0;
    ck_assert_uint_eq(after, before > in->total ? before : in->total);
    ck_assert_int_eq(rose, after != before || (!had && now));
    return rose;
}

static void apply_state(struct tally_counter *c, const struct state *s)
{
    for (int i = 0; i < s->nslots; i++)
        merge_slot_checked(c, &s->slots[i]);
    for (int i = 0; i < s->ndevs; i++)
        merge_dev_checked(c, &s->devs[i]);
}

/* Merges the whole state of src into dst; returns how many merges changed dst. */
static int merge_counter(struct tally_counter *dst, const struct tally_counter *src)
{
    int changed = 0;
    for (uint16_t i = 0; i < src->nslots; i++) {
        struct tally_slot sl = src->slots[i]; /* src may be dst */
        changed += merge_slot_checked(dst, &sl);
    }
    for (uint16_t i = 0; i < counter_ndevs(src); i++) {
        struct tally_dev dv = counter_devs(src)[i];
        changed += merge_dev_checked(dst, &dv);
    }
    return changed;
}

static void assert_same(const struct tally_counter *a, const struct tally_counter *b)
{
    for (uint32_t r = 0; r < NREPLICAS; r++) {
        const struct tally_slot *x = counter_slot(a, r), *y = counter_slot(b, r);
        ck_assert_uint_eq(x ? x->p : 0, y ? y->p : 0);
        ck_assert_uint_eq(x ? x->n : 0, y ? y->n : 0);
    }
    for (uint32_t d = 0; d < NDEVICES; d++) {
        const struct tally_dev *x = counter_device(a, d), *y = counter_device(b, d);
        ck_assert_uint_eq(x ? x->total : 0, y ? y->total : 0);
    }
    ck_assert_int_eq(counter_value(a), counter_value(b));
}

static void assert_sorted(const struct tally_counter *c)
{
    for (uint16_t i = 1; i < c->nslots; i++)
        ck_assert_uint_lt(c->slots[i - 1].replica, c->slots[i].replica);
    for (uint16_t i = 1; i < counter_ndevs(c); i++)
        ck_assert_uint_lt(counter_devs(c)[i - 1].device, counter_devs(c)[i].device);
}

/* A new, empty counter for one role in one round. */
static struct tally_counter *fresh(const char *role, int round)
{
    char name[32];
    snprintf(name, sizeof(name), "%s-%d", role, round);
    return counter(name);
}

START_TEST(test_merge_law_random)
{
    for (int round = 0; round < 3000; round++) {
        struct state sa, sb, sc;
        random_state(&sa);
        random_state(&sb);
        random_state(&sc);

        struct tally_counter *a = fresh("a", round);
        struct tally_counter *b = fresh("b", round);
        struct tally_counter *c = fresh("c", round);
        apply_state(a, &sa);
        apply_state(b, &sb);
        apply_state(c, &sc);
        assert_sorted(a);

        /* Commutative: a+b == b+a */
        struct tally_counter *ab = fresh("ab", round);
        struct tally_counter *ba = fresh("ba", round);
        merge_counter(ab, a);
        merge_counter(ab, b);
        merge_counter(ba, b);
        merge_counter(ba, a);
        assert_same(ab, ba);

        /* Associative: (a+b)+c == a+(b+c) */
        struct tally_counter *bc = fresh("bc", round);
        merge_counter(bc, b);
        merge_counter(bc, c);
        struct tally_counter *left = fresh("l", round);
        merge_counter(left, ab);
        merge_counter(left, c);
        struct tally_counter *right = fresh("r", round);
        merge_counter(right, a);
        merge_counter(right, bc);
        assert_same(left, right);
        assert_sorted(left);

        /* Idempotent: merging a state already included changes nothing. */
        ck_assert_int_eq(merge_counter(left, a), 0);
        ck_assert_int_eq(merge_counter(left, left), 0);
        assert_same(left, right);

        /* The merge is the slot-wise maximum of the merged states. */
        for (uint32_t r = 0; r < NREPLICAS; r++) {
            uint64_t p = 0, n = 0;
            const struct tally_counter *parts[] = {a, b, c};
            for (int k = 0; k < 3; k++) {
                const struct tally_slot *s = counter_slot(parts[k], r);
                if (s && s->p > p)
                    p = s->p;
                if (s && s->n > n)
                    n = s->n;
            }
            const struct tally_slot *got = counter_slot(left, r);
            ck_assert_uint_eq(got ? got->p : 0, p);
            ck_assert_uint_eq(got ? got->n : 0, n);
        }
        /* Whatever the merged parts, the value stays in the contract's range. */
        int64_t v = counter_value(left);
        ck_assert(v >= -MAX && v <= MAX);
    }
}
END_TEST

START_TEST(test_merge_refuses_out_of_range)
{
    struct tally_counter *c = counter("x");
    ck_assert_int_eq(counter_merge_slot(c, 0, (uint64_t)MAX + 1, 0, &changed), TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_merge_slot(c, 0, 0, (uint64_t)MAX + 1, &changed), TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_merge_device(c, 0, (uint64_t)MAX + 1, &changed), TALLY_E_OVERFLOW);
    ck_assert_int_eq(c->nslots, 0);
    ck_assert_int_eq(counter_ndevs(c), 0);
    /* A zero slot says the counter exists (a 0 increment made it): it is
     * stored once. */
    ck_assert_int_eq(counter_merge_slot(c, 3, 0, 0, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(counter_merge_slot(c, 3, 0, 0, &changed), TALLY_OK);
    ck_assert(!changed);
    ck_assert_int_eq(c->nslots, 1);
}
END_TEST

/* ==== counter_add at the limits ==== */

struct snap {
    uint16_t nslots, ndevs;
    struct tally_slot slots[8];
    struct tally_dev devs[8];
};

static void take_snap(const struct tally_counter *c, struct snap *s)
{
    memset(s, 0, sizeof(*s));
    s->nslots = c->nslots;
    s->ndevs = counter_ndevs(c);
    if (c->nslots)
        memcpy(s->slots, c->slots, c->nslots * sizeof(*c->slots));
    if (counter_ndevs(c))
        memcpy(s->devs, counter_devs(c), counter_ndevs(c) * sizeof(*s->devs));
}

static void assert_unchanged(const struct tally_counter *c, const struct snap *before)
{
    struct snap now;
    take_snap(c, &now);
    ck_assert_mem_eq(&now, before, sizeof(now));
}

static void add_refused(struct tally_counter *c, uint32_t replica, int64_t delta, int want)
{
    struct snap before;
    take_snap(c, &before);
    ck_assert_int_eq(counter_add(c, replica, delta), want);
    assert_unchanged(c, &before);
}

START_TEST(test_add_limits)
{
    struct tally_counter *up = counter("up"), *down = counter("down");
    ck_assert_int_eq(counter_add(up, 0, MAX), TALLY_OK);
    ck_assert_int_eq(counter_value(up), MAX);
    add_refused(up, 0, 1, TALLY_E_OVERFLOW);
    add_refused(up, 1, 1, TALLY_E_OVERFLOW); /* another replica: P sum */
    ck_assert_int_eq(counter_value(up), MAX);

    ck_assert_int_eq(counter_add(down, 0, -MAX), TALLY_OK);
    ck_assert_int_eq(counter_value(down), -MAX);
    add_refused(down, 0, -1, TALLY_E_OVERFLOW);
    add_refused(down, 2, -1, TALLY_E_OVERFLOW);
    /* Going back towards zero is fine. */
    ck_assert_int_eq(counter_add(down, 0, 5), TALLY_OK);
    ck_assert_int_eq(counter_value(down), -MAX + 5);

    struct tally_counter *e = counter("e");
    add_refused(e, 0, MAX + 1, TALLY_E_DELTA_RANGE);
    add_refused(e, 0, -MAX - 1, TALLY_E_DELTA_RANGE);
    add_refused(e, 0, INT64_MIN, TALLY_E_DELTA_RANGE);
    add_refused(e, 0, INT64_MAX, TALLY_E_DELTA_RANGE);
    ck_assert_int_eq(e->nslots, 0);
    /* A 0 increment creates the counter (a zero slot), once. */
    ck_assert_int_eq(counter_add(e, 0, 0), TALLY_OK);
    ck_assert_int_eq(e->nslots, 1);
    ck_assert_int_eq(counter_add(e, 1, 0), TALLY_OK);
    ck_assert_int_eq(e->nslots, 1);
    ck_assert_int_eq(counter_value(e), 0);
}
END_TEST

START_TEST(test_add_refuses_p_or_n_sum_overflow)
{
    /* P and N each near the limit while the value is 0: the sum of P (or N)
     * is what overflows, not the value. */
    struct tally_counter *c = counter("pn");
    ck_assert_int_eq(counter_merge_slot(c, 0, MAX - 10, MAX - 10, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(counter_value(c), 0);
    add_refused(c, 1, 11, TALLY_E_OVERFLOW);
    add_refused(c, 1, -11, TALLY_E_OVERFLOW);
    add_refused(c, 0, 11, TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_add(c, 1, 10), TALLY_OK);
    ck_assert_int_eq(counter_add(c, 1, -10), TALLY_OK);
    ck_assert_int_eq(counter_value(c), 0);
    add_refused(c, 1, 1, TALLY_E_OVERFLOW);
    add_refused(c, 1, -1, TALLY_E_OVERFLOW);
    struct tally_sums s;
    counter_sums(c, &s);
    ck_assert_int_eq(s.p, MAX);
    ck_assert_int_eq(s.n, MAX);
}
END_TEST

START_TEST(test_add_refuses_value_overflow_from_devices)
{
    struct tally_counter *c = counter("dev");
    ck_assert_int_eq(counter_merge_device(c, 0, MAX - 3, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(counter_add(c, 0, 3), TALLY_OK);
    ck_assert_int_eq(counter_value(c), MAX);
    add_refused(c, 0, 1, TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_add(c, 0, -1), TALLY_OK);
    ck_assert_int_eq(counter_value(c), MAX - 1);
}
END_TEST

START_TEST(test_add_random_stays_in_range)
{
    struct tally_counter *c = counter("walk");
    int64_t expect = 0;
    for (int i = 0; i < 20000; i++) {
        int64_t mag = (int64_t)(rnd_below(3) == 0 ? rnd_below((uint64_t)MAX + 1) : rnd_below(1000));
        int64_t delta = rnd_below(2) ? mag : -mag;
        struct snap before;
        take_snap(c, &before);
        int rc = counter_add(c, (uint32_t)rnd_below(4), delta);
        if (rc == TALLY_OK) {
            expect += delta;
        } else {
            ck_assert_int_eq(rc, TALLY_E_OVERFLOW);
            assert_unchanged(c, &before);
        }
        struct tally_sums s;
        counter_sums(c, &s);
        ck_assert_int_eq(s.value, expect);
        ck_assert(s.value >= -MAX && s.value <= MAX);
        ck_assert(s.p >= 0 && s.p <= MAX && s.n >= 0 && s.n <= MAX);
        for (uint16_t k = 0; k < c->nslots; k++)
            ck_assert(c->slots[k].p <= (uint64_t)MAX && c->slots[k].n <= (uint64_t)MAX);
    }
}
END_TEST

START_TEST(test_report_limits)
{
    struct tally_counter *c = counter("rep");
    ck_assert_int_eq(counter_add(c, 0, MAX - 5), TALLY_OK);
    struct snap before;
    take_snap(c, &before);
    ck_assert_int_eq(counter_report(c, 0, 6, &changed), TALLY_E_OVERFLOW);
    assert_unchanged(c, &before);
    ck_assert_int_eq(counter_report(c, 0, (uint64_t)MAX + 1, &changed), TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_report(c, 0, 5, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(counter_value(c), MAX);
    /* A lower or equal report changes nothing and is not an error. */
    ck_assert_int_eq(counter_report(c, 0, 5, &changed), TALLY_OK);
    ck_assert(!changed);
    ck_assert_int_eq(counter_report(c, 0, 2, &changed), TALLY_OK);
    ck_assert(!changed);
    ck_assert_int_eq(counter_value(c), MAX);
    /* A second device may not take the value past the limit either. */
    ck_assert_int_eq(counter_report(c, 1, 1, &changed), TALLY_E_OVERFLOW);
    ck_assert_ptr_null(counter_device(c, 1));
}
END_TEST

/* A counter may hold max_devices devices, and every local increment or
 * report checks the range against the counter's sums: they are kept, not
 * summed over the devices each time. Summing made these 200,000 reports run
 * past the test's timeout (4 s); they take a few milliseconds. */
START_TEST(test_many_devices_cost_no_sum_each)
{
    enum { NDEV = 200000 };
    struct tally_counter *c = counter("meters");
    for (uint32_t i = 0; i < NDEV; i++) {
        ck_assert_int_eq(counter_report(c, i, 3, &changed), TALLY_OK);
        ck_assert(changed);
    }
    ck_assert_int_eq(counter_add(c, 0, 1), TALLY_OK);
    ck_assert_int_eq(counter_report(c, 7, 10, &changed), TALLY_OK); /* raised: +7 */
    ck_assert_int_eq(counter_merge_device(c, 8, 4, &changed), TALLY_OK);
    ck_assert_int_eq(counter_merge_device(c, 9, 2, &changed), TALLY_OK); /* lower: nothing */
    ck_assert(!changed);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < counter_ndevs(c); i++)
        sum += counter_devs(c)[i].total;
    struct tally_sums s;
    counter_sums(c, &s);
    ck_assert_int_eq(s.devices, (int64_t)sum);
    ck_assert_int_eq(s.devices, 3 * NDEV + 7 + 1);
    ck_assert_int_eq(s.value, s.devices + 1);
    /* the range is still checked against every device's part */
    ck_assert_int_eq(counter_report(c, NDEV, (uint64_t)(MAX - s.value) + 1, &changed),
                     TALLY_E_OVERFLOW);
    ck_assert_int_eq(counter_report(c, NDEV, (uint64_t)(MAX - s.value), &changed), TALLY_OK);
    ck_assert_int_eq(counter_value(c), MAX);
}
END_TEST

/* ==== The table ==== */

/* Issue 10 #4: one counter holds max_devices devices, not 65,535. */
START_TEST(test_counter_holds_more_than_65535_devices)
{
    struct tally_table t;
    struct tally_counter *c;
    enum { NDEV = 70000 };
    table_init(&t, 10, 100000);
    ck_assert_int_eq(table_get(&t, "meters", 6, TABLE_LOCAL, &c), TALLY_OK);
    for (uint32_t i = 0; i < NDEV; i++) {
        char id[32];
        uint32_t d;
        int len = snprintf(id, sizeof(id), "meter-%u", (unsigned)i);
        ck_assert_int_eq(table_device(&t, id, (size_t)len, DEVICE_LOCAL, &d), TALLY_OK);
        ck_assert_int_eq(table_merge_device(&t, c, d, 2, true, &changed), TALLY_OK);
        ck_assert(changed);
    }
    ck_assert_uint_eq(counter_ndevs(c), NDEV);
    ck_assert_int_eq(counter_value(c), 2 * NDEV);
    for (uint32_t i = 1; i < counter_ndevs(c); i++)
        ck_assert_uint_lt(counter_devs(c)[i - 1].device, counter_devs(c)[i].device);
    /* Lookups find every one of them (a binary search over the array). */
    ck_assert_uint_eq(counter_device(c, NDEV - 1)->total, 2);
    ck_assert_uint_eq(counter_device(c, 65535)->total, 2);
    ck_assert_ptr_null(counter_device(c, NDEV));
    table_free(&t);
}
END_TEST

/* Issue 10 #4 and #6: limits refuse local input only; what is merged from
 * peers or loaded from disk is kept, and the table says it is over. */
START_TEST(test_table_limits_refuse_local_input_only)
{
    struct tally_table t;
    struct tally_counter *c;
    uint32_t d;
    table_init(&t, 1, 1);
    ck_assert_int_eq(table_get(&t, "a", 1, TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_get(&t, "b", 1, TABLE_LOCAL, &c), TALLY_E_MAX_COUNTERS);
    ck_assert(!table_over_counters(&t));
    ck_assert_int_eq(table_get(&t, "b", 1, TABLE_MERGE, &c), TALLY_OK);
    ck_assert_int_eq(table_get(&t, "c", 1, TABLE_MERGE, &c), TALLY_OK);
    ck_assert_uint_eq(t.ncounters, 3);
    ck_assert(table_over_counters(&t));
    ck_assert_int_eq(table_get(&t, "d", 1, TABLE_LOCAL, &c), TALLY_E_MAX_COUNTERS);
    ck_assert_int_eq(table_get(&t, "b", 1, TABLE_LOCAL, &c), TALLY_OK); /* known names: fine */

    ck_assert_int_eq(table_device(&t, "m1", 2, DEVICE_LOCAL, &d), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "m2", 2, DEVICE_LOCAL, &d), TALLY_E_MAX_DEVICES);
    ck_assert_int_eq(table_device(&t, "m2", 2, DEVICE_PEER, &d), TALLY_OK);
    ck_assert(table_over_devices(&t));
    table_free(&t);
}
END_TEST

START_TEST(test_table_max_counters)
{
    struct tally_table t;
    struct tally_counter *c, *again;
    table_init(&t, 3, 10);
    ck_assert_int_eq(table_get(&t, "a", 1, TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_get(&t, "b", 1, TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_get(&t, "c", 1, TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_get(&t, "d", 1, TABLE_LOCAL, &again), TALLY_E_MAX_COUNTERS);
    ck_assert_ptr_null(table_find(&t, "d", 1));
    ck_assert_int_eq(table_get(&t, "c", 1, TABLE_LOCAL, &again), TALLY_OK);
    ck_assert_ptr_eq(again, c);
    ck_assert_uint_eq(t.ncounters, 3);
    table_free(&t);
}
END_TEST

START_TEST(test_table_dirty_list)
{
    uint32_t r;
    ck_assert_int_eq(table_replica(&table, "n1", strlen("n1"), 7, &r), TALLY_OK);
    struct tally_counter *a = counter("a"), *b = counter("b"), *c = counter("c");
    ck_assert_int_eq(table_add(&table, a, r, 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&table, b, r, 2, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&table, a, r, 3, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_merge_slot(&table, c, r, 4, 0, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_merge_slot(&table, b, r, 1, 0, &changed), TALLY_OK);
    ck_assert(!changed); /* nothing new */
    ck_assert_int_eq(table_add(&table, b, r, 0, &changed), TALLY_OK);
    ck_assert(!changed);
    ck_assert_uint_eq(table.ndirty, 3);
    struct tally_counter *order[] = {a, b, c}, *it;
    for (int i = 0; i < 3; i++) {
        it = table_pop_dirty(&table);
        ck_assert_ptr_eq(it, order[i]);
        ck_assert_int_eq(it->dirty, 0);
    }
    ck_assert_uint_eq(table.ndirty, 0);
    ck_assert_ptr_null(table_pop_dirty(&table));
    /* After it was taken, a change lists the counter again, alone. */
    ck_assert_int_eq(table_add(&table, c, r, 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_ptr_eq(table_pop_dirty(&table), c);
    ck_assert_ptr_null(table_pop_dirty(&table));
    /* A refused change does not list it. */
    ck_assert_int_eq(table_add(&table, c, r, MAX, &changed), TALLY_E_OVERFLOW);
    ck_assert_ptr_null(table_pop_dirty(&table));
}
END_TEST

/* The plugin's flush pops counters one at a time: in order, each once, and
 * a counter changed after its pop goes to the back of the list. */
START_TEST(test_table_pop_dirty)
{
    uint32_t r;
    ck_assert_int_eq(table_replica(&table, "n1", strlen("n1"), 7, &r), TALLY_OK);
    struct tally_counter *a = counter("a"), *b = counter("b");
    ck_assert_ptr_null(table_pop_dirty(&table));
    ck_assert_int_eq(table_add(&table, a, r, 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&table, b, r, 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_ptr_eq(table_pop_dirty(&table), a);
    ck_assert_int_eq(a->dirty, 0);
    ck_assert_int_eq(table_add(&table, a, r, 1, &changed), TALLY_OK);
    ck_assert(changed); /* back of the list */
    ck_assert_int_eq(table_add(&table, b, r, 1, &changed), TALLY_OK);
    ck_assert(changed); /* already listed */
    ck_assert_uint_eq(table.ndirty, 2);
    ck_assert_ptr_eq(table_pop_dirty(&table), b);
    ck_assert_ptr_eq(table_pop_dirty(&table), a);
    ck_assert_ptr_null(table_pop_dirty(&table));
    ck_assert_uint_eq(table.ndirty, 0);
    ck_assert_int_eq(table_add(&table, b, r, 1, &changed), TALLY_OK);
    ck_assert(changed); /* the emptied list still works */
    ck_assert_ptr_eq(table_pop_dirty(&table), b);
}
END_TEST

START_TEST(test_table_registries)
{
    struct tally_table t;
    uint32_t i1, i2, i3, d1, d2, d3, again;
    table_init(&t, 10, 2);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 1, &i1), TALLY_OK);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 2, &i2), TALLY_OK);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 1, &i3), TALLY_OK);
    ck_assert_uint_ne(i1, i2);
    ck_assert_uint_eq(i1, i3);
    ck_assert_int_ne(table_replica(&t, "", strlen(""), 1, &i3), TALLY_OK);

    ck_assert_int_eq(table_device(&t, "d1", 2, DEVICE_FIND, &d1), TALLY_E_DEVICE);
    ck_assert_int_eq(table_device(&t, "d1", 2, DEVICE_LOCAL, &d1), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "d2", 2, DEVICE_LOCAL, &d2), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "d3", 2, DEVICE_LOCAL, &d3), TALLY_E_MAX_DEVICES);
    ck_assert_uint_eq(t.ndevices, 2);
    /* Known devices are still found at the bound... */
    ck_assert_int_eq(table_device(&t, "d1", 2, DEVICE_LOCAL, &again), TALLY_OK);
    ck_assert_uint_eq(again, d1);
    /* ...and devices learned from peers are never refused. */
    ck_assert_int_eq(table_device(&t, "d3", 2, DEVICE_PEER, &d3), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "d3", 2, DEVICE_FIND, &again), TALLY_OK);
    ck_assert_uint_eq(again, d3);
    ck_assert_uint_ne(d1, d2);
    ck_assert_uint_ne(d2, d3);
    table_free(&t);
}
END_TEST

/* One merge of a slot or device maximum, by node/device name so that two
 * tables can register them in different orders. */
struct op {
    char name[8];
    bool device;
    uint32_t owner;
    uint64_t p, n;
};

static void apply_op(struct tally_table *t, const struct op *o)
{
    struct tally_counter *c;
    uint32_t idx;
    char owner[16];
    ck_assert_int_eq(table_get(t, o->name, strlen(o->name), TABLE_LOCAL, &c), TALLY_OK);
    if (o->device) {
        snprintf(owner, sizeof(owner), "dev%u", o->owner);
        ck_assert_int_eq(table_device(t, owner, strlen(owner), DEVICE_PEER, &idx), TALLY_OK);
        ck_assert_int_eq(table_merge_device(t, c, idx, o->p, false, &changed), TALLY_OK);
    } else {
        snprintf(owner, sizeof(owner), "n%u", o->owner % 3);
        ck_assert_int_eq(table_replica(t, owner, strlen(owner), o->owner / 3, &idx), TALLY_OK);
        ck_assert_int_eq(table_merge_slot(t, c, idx, o->p, o->n, &changed), TALLY_OK);
    }
}

static void random_ops(struct op *ops, int n)
{
    for (int i = 0; i < n; i++) {
        struct op *o = &ops[i];
        snprintf(o->name, sizeof(o->name), "c%u", (unsigned)rnd_below(40));
        o->device = rnd_below(4) == 0;
        o->owner = (uint32_t)rnd_below(6);
        o->p = rnd_value();
        o->n = o->device ? 0 : rnd_value();
    }
}

START_TEST(test_digest_order_independent)
{
    enum { N = 2000 };
    static struct op ops[N];
    for (int round = 0; round < 20; round++) {
        random_ops(ops, N);
        struct tally_table t1, t2;
        table_init(&t1, 1000, 100);
        table_init(&t2, 1000, 100);
        for (int i = 0; i < N; i++)
            apply_op(&t1, &ops[i]);
        /* Shuffle, then apply in the new order (and a second time). */
        for (int i = N - 1; i > 0; i--) {
            int j = (int)rnd_below((uint64_t)i + 1);
            struct op tmp = ops[i];
            ops[i] = ops[j];
            ops[j] = tmp;
        }
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < N; i++)
                apply_op(&t2, &ops[i]);
        ck_assert_mem_eq(t1.digest, t2.digest, sizeof(t1.digest));

        /* One slot more, anywhere: some bucket differs. */
        struct tally_counter *c = table_find(&t2, ops[0].name, strlen(ops[0].name));
        uint32_t r;
        ck_assert_int_eq(table_replica(&t2, "n9", strlen("n9"), 1, &r), TALLY_OK);
        ck_assert_int_eq(table_merge_slot(&t2, c, r, 1, 0, &changed), TALLY_OK);
        ck_assert(changed);
        ck_assert(memcmp(t1.digest, t2.digest, sizeof(t1.digest)) != 0);
        /* The same change on t1 restores equality. */
        ck_assert_int_eq(table_replica(&t1, "n9", strlen("n9"), 1, &r), TALLY_OK);
        c = table_find(&t1, ops[0].name, strlen(ops[0].name));
        ck_assert_int_eq(table_merge_slot(&t1, c, r, 1, 0, &changed), TALLY_OK);
        ck_assert(changed);
        ck_assert_mem_eq(t1.digest, t2.digest, sizeof(t1.digest));
        table_free(&t1);
        table_free(&t2);
    }
}
END_TEST

START_TEST(test_digest_distinguishes_states)
{
    /* Same name, same owner, different values; or same value, different
     * owner or name: all different digests. */
    static const struct op variants[] = {
        {"x", false, 0, 1, 0}, {"x", false, 0, 0, 1}, {"x", false, 0, 2, 0}, {"x", false, 1, 1, 0},
        {"y", false, 0, 1, 0}, {"x", true, 0, 1, 0},  {"x", true, 1, 1, 0},
    };
    enum { NV = sizeof(variants) / sizeof(variants[0]) };
    uint64_t digests[NV][TALLY_BUCKETS];
    for (int i = 0; i < NV; i++) {
        struct tally_table t;
        table_init(&t, 10, 10);
        apply_op(&t, &variants[i]);
        memcpy(digests[i], t.digest, sizeof(t.digest));
        table_free(&t);
    }
    for (int i = 0; i < NV; i++)
        for (int j = i + 1; j < NV; j++)
            ck_assert_msg(memcmp(digests[i], digests[j], sizeof(digests[i])) != 0,
                          "variants %d and %d have the same digest", i, j);
}
END_TEST

START_TEST(test_digest_add_matches_merge)
{
    /* A local add and a merge of the resulting slot state give one digest. */
    struct tally_table t1, t2;
    struct tally_counter *c1, *c2;
    uint32_t r1, r2;
    table_init(&t1, 10, 10);
    table_init(&t2, 10, 10);
    ck_assert_int_eq(table_replica(&t1, "n1", strlen("n1"), 5, &r1), TALLY_OK);
    ck_assert_int_eq(table_replica(&t2, "n1", strlen("n1"), 5, &r2), TALLY_OK);
    ck_assert_int_eq(table_get(&t1, "k", 1, TABLE_LOCAL, &c1), TALLY_OK);
    ck_assert_int_eq(table_get(&t2, "k", 1, TABLE_LOCAL, &c2), TALLY_OK);
    for (int i = 1; i <= 100; i++)
        ck_assert_int_eq(table_add(&t1, c1, r1, i % 3 == 0 ? -i : i, &changed), TALLY_OK);
    ck_assert(changed);
    const struct tally_slot *s = counter_slot(c1, r1);
    ck_assert_int_eq(table_merge_slot(&t2, c2, r2, s->p, s->n, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_mem_eq(t1.digest, t2.digest, sizeof(t1.digest));
    table_free(&t1);
    table_free(&t2);
}
END_TEST

Suite *counter_suite(void)
{
    Suite *s = suite_create("counter");
    TCase *tc = tcase_create("merge");
    tcase_add_checked_fixture(tc, table_setup, table_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_merge_law_random);
    tcase_add_test(tc, test_merge_refuses_out_of_range);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, table_setup, table_teardown);
    tcase_add_test(tc, test_add_limits);
    tcase_add_test(tc, test_add_refuses_p_or_n_sum_overflow);
    tcase_add_test(tc, test_add_refuses_value_overflow_from_devices);
    tcase_add_test(tc, test_add_random_stays_in_range);
    tcase_add_test(tc, test_report_limits);
    tcase_add_test(tc, test_many_devices_cost_no_sum_each);
    suite_add_tcase(s, tc);
    tc = tcase_create("table");
    tcase_add_checked_fixture(tc, table_setup, table_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_table_max_counters);
    tcase_add_test(tc, test_counter_holds_more_than_65535_devices);
    tcase_add_test(tc, test_table_limits_refuse_local_input_only);
    tcase_add_test(tc, test_table_dirty_list);
    tcase_add_test(tc, test_table_pop_dirty);
    tcase_add_test(tc, test_table_registries);
    tcase_add_test(tc, test_digest_order_independent);
    tcase_add_test(tc, test_digest_distinguishes_states);
    tcase_add_test(tc, test_digest_add_matches_merge);
    suite_add_tcase(s, tc);
    return s;
}
