/*
 * test_group.c - groups of hubs (group.c): a hub's figure of its own group's
 * sum of each counter, the GSUMs that carry it to the other groups, and how
 * a hub of another group takes them, as the slot of one replica named after
 * the group. Hubs are tables in memory; GSUMs go from one to another as the
 * bytes group_announce wrote.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

#define MAXMSG 512
#define REFRESH_MS 1000
#define REFRESH_DUE (GROUP_REFRESH_CALM * REFRESH_MS) /* the first refresh */
#define MAX_BYTES 65536
#define PLAIN 2 /* what a hub in a group and in no region writes */

struct msg {
    uint8_t *data;
    size_t len;
};

/* The GSUMs one announce wrote. */
struct outbox {
    struct msg m[MAXMSG];
    int n;
};

struct hub {
    char id[16];
    struct tally_table t;
    struct tally_group g, r;  /* its group; its region (level 2), off unless in one */
    struct tally_group up[2]; /* the regions above its region (levels 3, 4), off unless in them */
    struct wire_buf b;
};

/* h's unit of level k (1 to TALLY_LEVELS). */
static struct tally_group *unit(struct hub *h, int k)
{
    return k == 1 ? &h->g : k == 2 ? &h->r : &h->up[k - 3];
}

static void collect(const struct wire_buf *b, void *ud)
{
    struct outbox *o = ud;
    ck_assert_int_lt(o->n, MAXMSG);
    o->m[o->n].data = malloc(b->len);
    ck_assert_ptr_nonnull(o->m[o->n].data);
    memcpy(o->m[o->n].data, b->data, b->len);
    o->m[o->n++].len = b->len;
}

static void outbox_free(struct outbox *o)
{
    for (int i = 0; i < o->n; i++)
        free(o->m[i].data);
    o->n = 0;
}

/* A hub of group `group` (NULL or "": none), in its life `session`. Its
 * first announce (at 0, nothing to say) starts the refresh clock: the next
 * one is due at REFRESH_DUE. */
static void hub_init_in(struct hub *h, const char *id, const char *group, const char *region,
                        uint64_t session)
{
    memset(h, 0, sizeof(*h));
    snprintf(h->id, sizeof(h->id), "%s", id);
    table_init(&h->t, 100000, 1000);
    /* region: plugin_opt_region's path, "r1" or "r1/z1" ... */
    char names[TALLY_LEVELS][GROUP_NAME_MAX + 1] = {{0}};
    snprintf(names[0], sizeof(names[0]), "%s", group ? group : "");
    ck_assert_int_ge(region_path(region ? region : "", region ? strlen(region) : 0, names + 1), 0);
    struct outbox none = {0};
    for (int k = 1; k <= TALLY_LEVELS; k++) {
        group_init(unit(h, k), names[k - 1], session, REFRESH_MS);
        group_scope(unit(h, k), k, k < TALLY_LEVELS ? names[k] : NULL);
        ck_assert_int_eq(group_bind(unit(h, k), &h->t), TALLY_OK);
        group_announce(unit(h, k), &h->t, h->id, 0, MAX_BYTES, 100, &h->b, collect, &none);
    }
    ck_assert_int_eq(none.n, 0);
}

static void hub_init(struct hub *h, const char *id, const char *group, uint64_t session)
{
    hub_init_in(h, id, group, NULL, session);
}

static void hub_free(struct hub *h)
{
    for (int k = 1; k <= TALLY_LEVELS; k++)
        group_free(unit(h, k));
    table_free(&h->t);
    wbuf_free(&h->b);
}

/* a1 of group g1 and b1 of group g2, in their first lives */
static void two_groups(struct hub *a, struct hub *b)
{
    hub_init(a, "a1", "g1", 1);
    hub_init(b, "b1", "g2", 1);
}

static void hubs_free(struct hub *a, struct hub *b)
{
    hub_free(a);
    hub_free(b);
}

static struct tally_counter *get(struct hub *h, const char *name)
{
    struct tally_counter *c;
    ck_assert_int_eq(table_get(&h->t, name, strlen(name), TABLE_MERGE, &c), TALLY_OK);
    return c;
}

static struct tally_counter *find(struct hub *h, const char *name)
{
    return table_find(&h->t, name, strlen(name));
}

static uint32_t replica(struct hub *h, const char *node, uint64_t incarnation)
{
    uint32_t r;
    ck_assert_int_eq(table_replica(&h->t, node, strlen(node), incarnation, &r), TALLY_OK);
    return r;
}

/* Node `node`'s slot of counter `name` at hub h rises to (p, n), as
 * replication within the group brings it. */
static void slot(struct hub *h, const char *name, const char *node, uint64_t p, uint64_t n)
{
    bool changed;
    ck_assert_int_eq(table_merge_slot(&h->t, get(h, name), replica(h, node, 1), p, n, &changed),
                     TALLY_OK);
}

static void report(struct hub *h, const char *name, const char *device, uint64_t total)
{
    uint32_t d;
    bool changed;
    ck_assert_int_eq(table_device(&h->t, device, strlen(device), DEVICE_LOCAL, &d), TALLY_OK);
    ck_assert_int_eq(table_merge_device(&h->t, get(h, name), d, total, true, &changed), TALLY_OK);
}

/* The maximum hub h holds of device `device` in counter `name`; 0 if none. */
static uint64_t device(struct hub *h, const char *name, const char *device)
{
    uint32_t d;
    struct tally_counter *c = find(h, name);
    if (!c || table_device(&h->t, device, strlen(device), DEVICE_FIND, &d) != TALLY_OK)
        return 0;
    const struct tally_dev *dv = counter_device(c, d);
    return dv ? dv->total : 0;
}

static void note(struct hub *h, const char *name)
{
    ck_assert_int_eq(group_note(&h->g, &h->t, get(h, name)), TALLY_OK);
}

static int announce_sized(struct hub *h, uint64_t now_ms, size_t max_bytes, size_t budget,
                          struct outbox *out)
{
    int before = out->n;
    uint32_t wrote = 0;
    for (int k = 1; k <= TALLY_LEVELS; k++)
        wrote += group_announce(unit(h, k), &h->t, h->id, now_ms, max_bytes, budget, &h->b, collect,
                                out);
    ck_assert_int_eq((int)wrote, out->n - before);
    return (int)wrote;
}

/* What is owed, outside a refresh (now 1: the refresh is due at 1000). */
static int announce(struct hub *h, struct outbox *out)
{
    return announce_sized(h, 1, MAX_BYTES, 100, out);
}

/* As plugin.c's on_gsum and on_rsum<k>: an RSUM of level k comes on the
 * topic of its level, which the marks before its unit's name tell here. */
static int apply_bytes(struct hub *h, const void *data, size_t len, bool *fresh)
{
    uint8_t type = len >= 4 ? ((const uint8_t *)data)[3] : 0;
    int level = 1;
    if (type == WIRE_RSUM || type == WIRE_RWANT) {
        struct wire_reader r = {(const uint8_t *)data + 4, (const uint8_t *)data + len, false};
        size_t olen, glen;
        wr_str8(&r, &olen);
        wr_u64(&r);
        wr_varint(&r);
        const char *name = wr_str8(&r, &glen);
        level = r.bad ? 2 : 2 + unit_marks(name, glen);
        level = level < TALLY_LEVELS ? level : TALLY_LEVELS;
    }
    return group_apply(unit(h, level), &h->t, NULL, h->id, data, len, fresh);
}

/* Applies a message that must be taken; returns its *fresh. */
static bool apply(struct hub *h, const struct msg *m)
{
    bool fresh = true;
    ck_assert_int_eq(apply_bytes(h, m->data, m->len, &fresh), TALLY_OK);
    return fresh;
}

static void apply_all(struct hub *h, const struct outbox *o)
{
    for (int i = 0; i < o->n; i++)
        ck_assert(apply(h, &o->m[i]));
}

/* The slot of group `group`'s replica in counter `name` at hub h, or NULL
 * (a region's: ".name"). */
static const struct tally_slot *group_slot(struct hub *h, const char *name, const char *group)
{
    struct tally_counter *c = find(h, name);
    char id[TALLY_NODE_ID_MAX + 1];
    snprintf(id, sizeof(id), "%c%s", GROUP_MARK, group);
    for (uint32_t i = 0; c && i < h->t.nreplicas; i++) {
        const struct tally_replica *r = h->t.replicas[i];
        if (r->incarnation == GROUP_INCARNATION && replica_is_node(r, id, strlen(id)))
            return counter_slot(c, i);
    }
    return NULL;
}

static int64_t value(struct hub *h, const char *name)
{
    struct tally_counter *c = find(h, name);
    return c ? table_value(&h->t, c) : 0;
}

struct sum {
    uint64_t p, n, bp, bn;
};

static struct sum sum(struct hub *h, const char *name)
{
    struct sum s;
    group_sum(&h->t, get(h, name), &s.p, &s.n, &s.bp, &s.bn);
    return s;
}

static void assert_sum(struct hub *h, const char *name, uint64_t p, uint64_t n, uint64_t bp,
                       uint64_t bn)
{
    struct sum s = sum(h, name);
    ck_assert_msg(s.p == p && s.n == n && s.bp == bp && s.bn == bn,
                  "%s: sum (%llu, %llu, %llu, %llu), want (%llu, %llu, %llu, %llu)", name,
                  (unsigned long long)s.p, (unsigned long long)s.n, (unsigned long long)s.bp,
                  (unsigned long long)s.bn, (unsigned long long)p, (unsigned long long)n,
                  (unsigned long long)bp, (unsigned long long)bn);
}

static void assert_group_slot(struct hub *h, const char *name, const char *group, uint64_t p,
                              uint64_t n)
{
    const struct tally_slot *s = group_slot(h, name, group);
    ck_assert_msg(s, "%s at %s: no slot of .%s", name, h->id, group);
    ck_assert_msg(s->p == p && s->n == n, "%s at %s: .%s is (%llu, %llu), want (%llu, %llu)", name,
                  h->id, group, (unsigned long long)s->p, (unsigned long long)s->n,
                  (unsigned long long)p, (unsigned long long)n);
}

/* ==== Reading a GSUM back (the format in group.c's opening comment) ==== */

struct gsum_head {
    const char *origin, *group;
    size_t origin_len, group_len;
    uint64_t session, seq, counters;
};

static struct wire_reader reader(const struct msg *m, struct gsum_head *h)
{
    struct wire_reader r = {m->data, m->data + m->len, false};
    ck_assert_uint_ge(m->len, 4);
    ck_assert(m->data[0] == 'T' && m->data[1] == 'L');
    ck_assert_uint_eq(m->data[2], PLAIN); /* a hub in no region */
    ck_assert_uint_eq(m->data[3], WIRE_GSUM);
    r.p += 4;
    h->origin = wr_str8(&r, &h->origin_len);
    h->session = wr_u64(&r);
    h->seq = wr_varint(&r);
    h->group = wr_str8(&r, &h->group_len);
    h->counters = wr_varint(&r);
    ck_assert(!r.bad);
    return r;
}

/* How many counter records the messages of o carry, and of them named
 * `name` (NULL: none counted). */
static uint64_t records(const struct outbox *o, const char *name, uint64_t *named)
{
    uint64_t total = 0;
    if (named)
        *named = 0;
    for (int i = 0; i < o->n; i++) {
        struct gsum_head h;
        struct wire_reader r = reader(&o->m[i], &h);
        total += h.counters;
        for (uint64_t k = 0; k < h.counters; k++) {
            size_t len;
            const char *cname = wr_str8(&r, &len);
            for (int v = 0; v < 4; v++) /* P, N, BP, BN */
                wr_varint(&r);
            uint8_t flags = wr_u8(&r);
            ck_assert_uint_eq(flags & ~7u, 0);
            for (int v = 0; (flags & 1) && v < 2; v++) /* the stamps */
                wr_varint(&r);
            uint64_t nbases = flags & 2 ? wr_varint(&r) : 0;
            for (uint64_t k = 0; k < nbases; k++) {
                size_t glen;
                wr_str8(&r, &glen);
                wr_varint(&r);
                wr_varint(&r);
            }
            uint64_t ndevs = flags & 4 ? wr_varint(&r) : 0;
            for (uint64_t d = 0; d < ndevs; d++) {
                size_t idlen;
                wr_str8(&r, &idlen);
                wr_varint(&r);
                wr_varint(&r);
            }
            if (named && name && len == strlen(name) && memcmp(cname, name, len) == 0)
                (*named)++;
        }
        ck_assert(!r.bad && r.p == r.end);
    }
    return total;
}

/* ==== Writing GSUMs by hand (for the malformed ones) ==== */

struct gsum_rec {
    const char *name;
    uint64_t p, n, bp, bn;
    const char *dev; /* NULL: no device */
    uint64_t dev_total;
    /* version 2 on */
    uint64_t deleted, reset;
    const char *base_group; /* NULL: no group base */
    uint64_t base_p, base_n, dev_base;
    uint8_t flags; /* more flags than what it carries (for an unknown one) */
};

/* Version 3 names the sender's region after its group. */
static void write_sums(struct wire_buf *b, uint8_t version, uint8_t type, const char *origin,
                       uint64_t session, uint64_t seq, const char *group, const char *region,
                       const struct gsum_rec *recs, int nrecs)
{
    const uint8_t h[4] = {'T', 'L', version, type};
    wbuf_reset(b);
    wbuf_bytes(b, h, sizeof(h));
    wbuf_str8(b, origin, strlen(origin));
    wbuf_u64(b, session);
    wbuf_varint(b, seq);
    wbuf_str8(b, group, strlen(group));
    if (version >= 3)
        wbuf_str8(b, region, strlen(region));
    wbuf_varint(b, (uint64_t)nrecs);
    for (int i = 0; i < nrecs; i++) {
        wbuf_str8(b, recs[i].name, strlen(recs[i].name));
        wbuf_varint(b, recs[i].p);
        wbuf_varint(b, recs[i].n);
        wbuf_varint(b, recs[i].bp);
        wbuf_varint(b, recs[i].bn);
        bool stamps = recs[i].deleted || recs[i].reset;
        if (version >= 2)
            wbuf_u8(b, (uint8_t)((stamps ? 1 : 0) | (recs[i].base_group ? 2 : 0) |
                                 (recs[i].dev ? 4 : 0) | recs[i].flags));
        if (version >= 2 && stamps) {
            wbuf_varint(b, recs[i].deleted);
            wbuf_varint(b, recs[i].reset);
        }
        if (version >= 2 && recs[i].base_group) {
            wbuf_varint(b, 1);
            wbuf_str8(b, recs[i].base_group, strlen(recs[i].base_group));
            wbuf_varint(b, recs[i].base_p);
            wbuf_varint(b, recs[i].base_n);
        }
        if (version < 2 || recs[i].dev)
            wbuf_varint(b, recs[i].dev ? 1 : 0);
        if (recs[i].dev) {
            wbuf_str8(b, recs[i].dev, strlen(recs[i].dev));
            wbuf_varint(b, recs[i].dev_total);
            if (version >= 2)
                wbuf_varint(b, recs[i].dev_base);
        }
    }
    ck_assert(!b->failed);
}

static void write_gsum(struct wire_buf *b, uint8_t version, uint8_t type, const char *origin,
                       uint64_t session, uint64_t seq, const char *group,
                       const struct gsum_rec *recs, int nrecs)
{
    write_sums(b, version, type, origin, session, seq, group, "", recs, nrecs);
}

static struct msg as_msg(const struct wire_buf *b)
{
    return (struct msg){b->data, b->len};
}

/* ==== The group's sum ==== */

START_TEST(test_a_group_sum_is_the_sum_of_its_nodes_slots)
{
    struct hub a;
    hub_init(&a, "a1", "g1", 1);
    slot(&a, "c", "a1", 5, 2);
    slot(&a, "c", "e1", 3, 1);
    slot(&a, "c", ".g2", 100, 50); /* another group's: not ours */
    report(&a, "c", "dev1", 7);    /* devices travel apart */
    assert_sum(&a, "c", 8, 3, 0, 0);
    ck_assert_int_eq(value(&a, "c"), 8 - 3 + 50 + 7);
    /* a counter only another group wrote: nothing of ours */
    slot(&a, "d", ".g2", 4, 0);
    assert_sum(&a, "d", 0, 0, 0, 0);
    hub_free(&a);
}
END_TEST

/* Two slots near 2^53 sum past it: the sum stops at 2^53 - 1 (what a total
 * may show), and the other group takes it, where a larger value would have
 * had the whole GSUM refused. */
START_TEST(test_a_group_sum_past_the_largest_safe_integer_is_saturated)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    slot(&a, "c", "a1", TALLY_MAX_SAFE - 1, 0);
    slot(&a, "c", "e1", 5, 0);
    assert_sum(&a, "c", TALLY_MAX_SAFE, 0, 0, 0);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    ck_assert(apply(&b, &out.m[0]));
    assert_group_slot(&b, "c", "g1", TALLY_MAX_SAFE, 0);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

START_TEST(test_a_group_sum_of_a_reset_counter_has_the_sums_of_its_bases)
{
    struct hub a;
    hub_init(&a, "a1", "g1", 1);
    slot(&a, "c", "a1", 5, 2);
    slot(&a, "c", "e1", 3, 1);
    slot(&a, "c", ".g2", 10, 1); /* its base is not ours either */
    ck_assert_int_eq(table_reset(&a.t, get(&a, "c"), false), TALLY_OK);
    assert_sum(&a, "c", 8, 3, 8, 3);
    ck_assert_int_eq(value(&a, "c"), 0);
    slot(&a, "c", "e1", 6, 1); /* counted after the reset */
    assert_sum(&a, "c", 11, 3, 8, 3);
    ck_assert_int_eq(value(&a, "c"), 3);
    hub_free(&a);
}
END_TEST

/* Hub a1 restarted as its life 2: it folds its life 1's slot into its own
 * (fold.c); a moved part is in the sum once, and so is a reset's base. */
START_TEST(test_a_fold_leaves_the_group_sum_unchanged)
{
    struct hub a;
    hub_init(&a, "a1", "g1", 1);
    bool changed;
    struct tally_counter *c = get(&a, "c");
    uint32_t past = replica(&a, "a1", 1), self = replica(&a, "a1", 2);
    ck_assert_int_eq(table_merge_slot(&a.t, c, past, 5, 1, &changed), TALLY_OK);
    slot(&a, "c", "e1", 3, 0);
    slot(&a, "c", ".g2", 40, 0);
    assert_sum(&a, "c", 8, 1, 0, 0);
    ck_assert_int_eq(table_reset(&a.t, c, false), TALLY_OK);
    ck_assert_int_eq(table_merge_slot(&a.t, c, past, 6, 1, &changed), TALLY_OK); /* after it */
    assert_sum(&a, "c", 9, 1, 8, 1);
    table_set_self(&a.t, self);
    ck_assert_int_eq(fold_ready(&a.t, NULL), TALLY_OK);
    c = get(&a, "c");
    ck_assert_ptr_nonnull(table_fold(&a.t, c, past));
    ck_assert_ptr_null(counter_slot(c, past)); /* moved whole into self's */
    ck_assert_uint_eq(counter_slot(c, self)->p, 6);
    assert_sum(&a, "c", 9, 1, 8, 1);
    ck_assert_int_eq(value(&a, "c"), 1);
    /* a part of the past life that a peer held and we had not (a
     * partition): counted above its fold entry only */
    ck_assert_int_eq(table_merge_slot(&a.t, c, past, 8, 1, &changed), TALLY_OK);
    ck_assert(changed);
    assert_sum(&a, "c", 11, 1, 8, 1);
    ck_assert_int_eq(value(&a, "c"), 3);
    /* and once folded in turn, the same again */
    bool folded;
    ck_assert_int_eq(fold_counter(&a.t, c, &folded), TALLY_OK);
    ck_assert(folded);
    ck_assert_uint_eq(counter_slot(c, self)->p, 8);
    assert_sum(&a, "c", 11, 1, 8, 1);
    hub_free(&a);
}
END_TEST

/* ==== GSUMs from one group to another ==== */

START_TEST(test_a_gsum_gives_the_other_group_one_slot_of_its_sum)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    slot(&a, "c", "a1", 5, 2);
    slot(&a, "c", "e1", 3, 1);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    struct gsum_head h;
    reader(&out.m[0], &h);
    ck_assert(h.origin_len == 2 && memcmp(h.origin, "a1", 2) == 0);
    ck_assert(h.group_len == 2 && memcmp(h.group, "g1", 2) == 0);
    ck_assert_uint_eq(h.session, 1);
    ck_assert_uint_eq(h.counters, 1);
    /* the head (4 + 3 + 8 + 1 + 3 + 4), and "c" with its four sums and a
     * byte of flags: nothing else (no stamps, bases or devices) */
    ck_assert_uint_eq(out.m[0].len, 23 + 2 + 4 + 1);
    ck_assert(apply(&b, &out.m[0]));
    assert_group_slot(&b, "c", "g1", 8, 3);
    ck_assert_uint_eq(find(&b, "c")->nslots, 1); /* never a node of another group */
    ck_assert_int_eq(value(&b, "c"), 5);
    ck_assert_int_eq(value(&b, "c"), value(&a, "c"));
    /* a duplicate (another path of the flood): dropped, nothing changes */
    uint64_t digest[TALLY_BUCKETS];
    memcpy(digest, b.t.digest, sizeof(digest));
    ck_assert(!apply(&b, &out.m[0]));
    ck_assert_mem_eq(digest, b.t.digest, sizeof(digest));
    assert_group_slot(&b, "c", "g1", 8, 3);
    /* and a hub never takes back its own message */
    ck_assert(!apply(&a, &out.m[0]));
    ck_assert_ptr_null(group_slot(&a, "c", "g1"));
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

START_TEST(test_a_gsum_of_an_earlier_life_after_a_later_one_is_dropped)
{
    struct hub old, now, b;
    struct outbox from_old = {0}, from_now = {0};
    hub_init(&old, "a1", "g1", 4);
    hub_init(&now, "a1", "g1", 5);
    hub_init(&b, "b1", "g2", 1);
    slot(&old, "c", "e1", 50, 0); /* what it says is higher: it must not count */
    note(&old, "c");
    ck_assert_int_eq(announce(&old, &from_old), 1);
    slot(&now, "c", "e1", 7, 0);
    note(&now, "c");
    ck_assert_int_eq(announce(&now, &from_now), 1);
    ck_assert(apply(&b, &from_now.m[0]));
    ck_assert(!apply(&b, &from_old.m[0]));
    assert_group_slot(&b, "c", "g1", 7, 0);
    outbox_free(&from_old);
    outbox_free(&from_now);
    hub_free(&old);
    hub_free(&now);
    hub_free(&b);
}
END_TEST

START_TEST(test_a_hub_never_takes_its_own_groups_sum)
{
    struct hub a1, a2;
    struct outbox out = {0};
    hub_init(&a1, "a1", "g1", 1);
    hub_init(&a2, "a2", "g1", 1);
    slot(&a1, "c", "e1", 3, 0);
    slot(&a2, "c", "e1", 2, 0); /* a2 has not heard all of e1 yet */
    note(&a1, "c");
    ck_assert_int_eq(announce(&a1, &out), 1);
    ck_assert(apply(&a2, &out.m[0])); /* fresh: a2 floods it on */
    ck_assert_ptr_null(group_slot(&a2, "c", "g1"));
    ck_assert_uint_eq(find(&a2, "c")->nslots, 1);
    ck_assert_int_eq(value(&a2, "c"), 2);
    /* a counter only a1 has heard of yet: not made at a2 */
    slot(&a1, "d", "e1", 9, 0);
    note(&a1, "d");
    ck_assert_int_eq(announce(&a1, &out), 1);
    ck_assert(apply(&a2, &out.m[1]));
    ck_assert_ptr_null(find(&a2, "d"));
    ck_assert(!apply(&a2, &out.m[1]));
    outbox_free(&out);
    hub_free(&a1);
    hub_free(&a2);
}
END_TEST

START_TEST(test_a_group_slot_only_rises_whatever_the_order)
{
    struct hub a, b;
    struct outbox first = {0}, second = {0}, third = {0};
    two_groups(&a, &b);
    slot(&a, "c", "e1", 5, 1);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &first), 1);
    slot(&a, "c", "e1", 9, 1);
    slot(&a, "c", "e2", 1, 4);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &second), 1);
    uint64_t named;
    ck_assert_uint_eq(records(&second, "c", &named), 1);
    ck_assert_uint_eq(named, 1);
    /* the newer first, the older late: the older is fresh (not seen), but
     * takes nothing from the maximum */
    ck_assert(apply(&b, &second.m[0]));
    assert_group_slot(&b, "c", "g1", 10, 5);
    ck_assert(apply(&b, &first.m[0]));
    assert_group_slot(&b, "c", "g1", 10, 5);
    ck_assert(!apply(&b, &first.m[0]));
    ck_assert_int_eq(value(&b, "c"), 5);
    /* and the next rise is taken */
    slot(&a, "c", "e1", 20, 1);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &third), 1);
    ck_assert(apply(&b, &third.m[0]));
    assert_group_slot(&b, "c", "g1", 21, 5);
    ck_assert_int_eq(value(&b, "c"), value(&a, "c"));
    outbox_free(&first);
    outbox_free(&second);
    outbox_free(&third);
    hubs_free(&a, &b);
}
END_TEST

static uint64_t seq_of(const struct msg *m)
{
    struct gsum_head h;
    reader(m, &h);
    return h.seq;
}

/* A hub keeps the 64 seqs below the newest it has seen of an origin: one
 * older than those is taken as seen (dropped, not flooded on). */
START_TEST(test_a_gsum_far_below_the_newest_is_dropped)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    for (int i = 1; i <= 70; i++) {
        slot(&a, "c", "e1", (uint64_t)i, 0);
        note(&a, "c");
        ck_assert_int_eq(announce(&a, &out), 1);
    }
    uint64_t newest = seq_of(&out.m[69]);
    ck_assert(apply(&b, &out.m[69]));
    int inside = -1, outside = -1;
    for (int i = 0; i < 69; i++) {
        uint64_t back = newest - seq_of(&out.m[i]);
        if (back < 64 && inside < 0)
            inside = i;
        if (back >= 64)
            outside = i;
    }
    ck_assert_int_ge(inside, 0);
    ck_assert_int_ge(outside, 0);
    ck_assert(!apply(&b, &out.m[outside]));
    ck_assert(apply(&b, &out.m[inside]));
    ck_assert(!apply(&b, &out.m[inside]));
    assert_group_slot(&b, "c", "g1", 70, 0);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* ==== What is sent, and when ==== */

START_TEST(test_a_counter_whose_sum_did_not_rise_is_not_sent)
{
    struct hub a;
    struct outbox out = {0};
    hub_init(&a, "a1", "g1", 1);
    slot(&a, "c", "e1", 5, 0);
    slot(&a, "c", ".g2", 5, 0);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 0);
    slot(&a, "c", ".g2", 6, 0); /* another group's part rose: not ours to say */
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 0);
    slot(&a, "c", "e1", 5, 1);
    note(&a, "c");
    note(&a, "c"); /* queued once */
    ck_assert_int_eq(announce(&a, &out), 1);
    ck_assert_uint_eq(records(&out, NULL, NULL), 2);
    ck_assert_int_eq(announce(&a, &out), 0);
    outbox_free(&out);
    hub_free(&a);
}
END_TEST

START_TEST(test_the_refresh_sends_every_counter_again_in_chunks)
{
    struct hub a;
    struct outbox out = {0};
    hub_init(&a, "a1", "g1", 1);
    a.g.quiet_ms = 60000; /* echoes (next test) after the refreshes */
    char name[16];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        slot(&a, name, "e1", (uint64_t)i + 1, 0);
        note(&a, name);
    }
    ck_assert_int_eq(announce(&a, &out), 1);
    ck_assert_uint_eq(records(&out, NULL, NULL), 5);
    outbox_free(&out);
    /* not due yet: asks heal what is lost, the refresh goes ten intervals apart */
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE - 1, MAX_BYTES, 2, &out), 0);
    /* due: two counters an announce */
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE, MAX_BYTES, 2, &out), 1);
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE + 1, MAX_BYTES, 2, &out), 1);
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE + 2, MAX_BYTES, 2, &out), 1);
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE + 3, MAX_BYTES, 2, &out), 0);
    ck_assert_uint_eq(records(&out, NULL, NULL), 5);
    for (int i = 0; i < 5; i++) {
        uint64_t named;
        snprintf(name, sizeof(name), "c%d", i);
        records(&out, name, &named);
        ck_assert_uint_eq(named, 1);
    }
    /* what the refresh sends heals a hub that lost every earlier GSUM */
    struct hub b;
    hub_init(&b, "b1", "g2", 1);
    apply_all(&b, &out);
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        assert_group_slot(&b, name, "g1", (uint64_t)i + 1, 0);
    }
    outbox_free(&out);
    /* the next one is due ten intervals after the last began */
    ck_assert_int_eq(announce_sized(&a, 2 * REFRESH_DUE - 1, MAX_BYTES, 100, &out), 0);
    ck_assert_int_eq(announce_sized(&a, 2 * REFRESH_DUE, MAX_BYTES, 100, &out), 1);
    ck_assert_uint_eq(records(&out, NULL, NULL), 5);
    outbox_free(&out);
    /* a node heard anew brings it a tenth of an interval after the last began */
    group_refresh_now(&a.g);
    ck_assert_int_eq(
        announce_sized(&a, 2 * REFRESH_DUE + REFRESH_MS / 10 - 1, MAX_BYTES, 100, &out), 0);
    ck_assert_int_eq(announce_sized(&a, 2 * REFRESH_DUE + REFRESH_MS / 10, MAX_BYTES, 100, &out),
                     1);
    ck_assert_uint_eq(records(&out, NULL, NULL), 5);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* from's stream of sums reaches `to` with a gap, a GSUM late on the way:
 * the evidence that sums are lost, which `to` holds for a refresh
 * interval. */
static void lose_one(struct hub *from, struct hub *to, uint64_t now_ms)
{
    struct outbox out = {0};
    int sums[3];
    for (uint64_t i = 1; i <= 3; i++) {
        slot(from, "other", "f1", from->g.seq + 1, 0); /* it rises each time */
        note(from, "other");
        announce_sized(from, now_ms + i, MAX_BYTES, 100,
                       &out); /* what it sends again or asks first */
        ck_assert_int_eq(out.m[out.n - 1].data[3], WIRE_GSUM);
        sums[i - 1] = out.n - 1;
    }
    uint64_t holes = to->g.holes;
    for (int i = 0; i < out.n; i++)
        if (i != sums[1] && out.m[i].data[3] == WIRE_GSUM)
            ck_assert(apply(to, &out.m[i]));
    ck_assert_uint_eq(to->g.holes, holes + 1);
    ck_assert(apply(to, &out.m[sums[1]])); /* late, on a longer path: nothing to ask for */
    outbox_free(&out);
}

/* The records a's announce at t writes. */
static uint64_t records_at(struct hub *a, uint64_t t)
{
    struct outbox out = {0};
    announce_sized(a, t, MAX_BYTES, 100, &out);
    uint64_t n = records(&out, NULL, NULL);
    outbox_free(&out);
    return n;
}

START_TEST(test_the_refresh_goes_ten_intervals_apart_where_sums_are_lost_too)
{
    /* Asks heal a message lost on the way, and a hub calls for the refresh
     * where they cannot (test_a_hub_asks_three_times_at_most_then_calls_for_
     * the_refresh): the refresh itself goes ten intervals apart, a gap in a
     * stream or not. */
    struct hub a, b;
    two_groups(&a, &b);
    a.g.quiet_ms = 60000; /* keepalives, and echoes, out of the way */
    slot(&a, "c", "e1", 3, 0);
    note(&a, "c");
    ck_assert_uint_eq(records_at(&a, 1), 1);
    ck_assert_uint_eq(records_at(&a, REFRESH_DUE - 1), 0);
    ck_assert_uint_eq(records_at(&a, REFRESH_DUE), 1);
    lose_one(&b, &a, REFRESH_DUE + 500);
    ck_assert_uint_gt(a.g.holes, 0);
    ck_assert_uint_eq(records_at(&a, REFRESH_DUE + REFRESH_MS), 0);
    ck_assert_uint_eq(records_at(&a, 2 * REFRESH_DUE - 1), 0);
    ck_assert_uint_eq(records_at(&a, 2 * REFRESH_DUE), 1);
    hubs_free(&a, &b);
}
END_TEST

/* a's announces at t1 and t2 write no record (a keepalive at most), and it
 * has echoed `echoed` counters in all. */
static void no_record_at(struct hub *a, uint64_t t1, uint64_t t2, uint64_t echoed)
{
    struct outbox out = {0};
    announce_sized(a, t1, MAX_BYTES, 100, &out);
    announce_sized(a, t2, MAX_BYTES, 100, &out);
    ck_assert_uint_eq(records(&out, NULL, NULL), 0);
    ck_assert_uint_eq(a->g.echoed, echoed);
    outbox_free(&out);
}

START_TEST(test_the_last_sums_go_again_once_still_where_sums_are_lost)
{
    /* Where sums are lost on the way (a gap in another hub's stream within
     * a refresh interval, 10 s here), a counter's sums go again, once, when
     * they have been still for a third of quiet_ms (1 s here): a GSUM lost
     * at the end of a burst is healed a second later, not at the refresh;
     * one that keeps rising is not echoed. Where none is lost, none is. */
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    a.g.refresh_due = b.g.refresh_due = 1000000; /* no refresh in the way */
    a.g.refresh_ms = 10000;
    slot(&a, "c", "e1", 4, 0);
    note(&a, "c");
    ck_assert_int_eq(announce_sized(&a, 0, MAX_BYTES, 100, &out), 1);
    outbox_free(&out);
    no_record_at(&a, 1000, 2000, 0); /* nothing lost here: no echo */
    lose_one(&b, &a, 2000);
    slot(&a, "c", "e1", 5, 0);
    note(&a, "c");
    ck_assert_int_eq(announce_sized(&a, 3000, MAX_BYTES, 100, &out), 1);
    slot(&a, "c", "e1", 6, 0);
    note(&a, "c");
    ck_assert_int_eq(announce_sized(&a, 3500, MAX_BYTES, 100, &out), 1);
    outbox_free(&out);                              /* both lost on the way to b */
    announce_sized(&a, 4000, MAX_BYTES, 100, &out); /* rose at 3500: still moving */
    announce_sized(&a, 4499, MAX_BYTES, 100, &out);
    ck_assert_uint_eq(records(&out, NULL, NULL), 0);
    ck_assert_int_eq(announce_sized(&a, 4500, MAX_BYTES, 100, &out), 1);
    ck_assert_uint_eq(records(&out, "c", NULL), 1);
    ck_assert_uint_eq(a.g.echoed, 1);
    apply_all(&b, &out);
    assert_group_slot(&b, "c", "g1", 6, 0);
    outbox_free(&out);
    no_record_at(&a, 5500, 9000, 1); /* once */
    /* a refresh interval after the last gap, the evidence is gone */
    slot(&a, "c", "e1", 7, 0);
    note(&a, "c");
    ck_assert_int_eq(announce_sized(&a, 12000, MAX_BYTES, 100, &out), 1);
    outbox_free(&out);
    no_record_at(&a, 13000, 14000, 1);
    /* a hub that stops speaking drops the echoes it owed */
    lose_one(&b, &a, 14000);
    slot(&a, "c", "e1", 8, 0);
    note(&a, "c");
    ck_assert_int_eq(announce_sized(&a, 15000, MAX_BYTES, 100, &out), 1);
    ck_assert_ptr_nonnull(a.g.echo);
    a.g.senior = true;
    a.g.senior_ms = 15100;
    ck_assert_int_eq(announce_sized(&a, 16000, MAX_BYTES, 100, &out), 0);
    ck_assert_ptr_null(a.g.echo);
    ck_assert_uint_eq(a.g.echoed, 1);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* from's sums of its counter "other" rise and reach `to`: a stream `to`
 * takes, of another group. */
static void speak(struct hub *from, struct hub *to, uint64_t now_ms)
{
    struct outbox out = {0};
    slot(from, "other", "f1", from->g.seq + 1, 0);
    note(from, "other");
    ck_assert_int_eq(announce_sized(from, now_ms, MAX_BYTES, 100, &out), 1);
    apply_all(to, &out);
    outbox_free(&out);
}

/* Records a's announce at now_ms writes, all taken by b. */
static uint64_t budgeted(struct hub *a, struct hub *b, uint64_t now_ms, const char *first,
                         const char *beyond)
{
    struct outbox out = {0};
    uint64_t named;
    announce_sized(a, now_ms, MAX_BYTES, 100, &out);
    uint64_t n = records(&out, NULL, NULL);
    if (first) {
        records(&out, first, &named);
        ck_assert_uint_eq(named, 1);
    }
    if (beyond) {
        records(&out, beyond, &named);
        ck_assert_uint_eq(named, 0);
    }
    apply_all(b, &out);
    outbox_free(&out);
    return n;
}

START_TEST(test_a_budget_of_sums_sends_what_rose_oldest_first_at_its_share)
{
    /* sums_budget 30 a second, no other speaker heard: a's share is all of
     * it, saved up for at most a second, and what rose goes once the share
     * covers it all or a heartbeat's share (1 s here): a message a
     * heartbeat, not a record a tenth of a second. 50 counters risen at
     * once go 30, then the other 20 once the share covers them, oldest
     * first, and b ends with every one. With b's and c's streams heard, a's
     * share is a third: 10 a second. */
    struct hub a, b, c;
    two_groups(&a, &b);
    hub_init(&c, "c1", "g3", 1);
    a.g.refresh_due = 1000000; /* no refresh in the way */
    a.g.sums_budget = 30;
    char name[16];
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "c%02d", i);
        slot(&a, name, "e1", (uint64_t)i + 1, 0);
        note(&a, name);
    }
    ck_assert_uint_eq(budgeted(&a, &b, 5000, "c00", "c30"), 30);
    ck_assert_uint_eq(a.g.budget_held, 1);
    for (uint64_t t = 5100; t <= 5600; t += 100) /* 3 a tenth: not yet the 20 left */
        ck_assert_uint_eq(budgeted(&a, &b, t, NULL, NULL), 0);
    ck_assert_uint_eq(budgeted(&a, &b, 5700, "c30", NULL), 20);
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "c%02d", i);
        assert_group_slot(&b, name, "g1", (uint64_t)i + 1, 0);
    }
    /* two other speakers heard: a third of the budget */
    speak(&b, &a, 6000);
    speak(&c, &a, 6000);
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "c%02d", i);
        slot(&a, name, "e1", (uint64_t)i + 100, 0);
        note(&a, name);
    }
    ck_assert_uint_eq(budgeted(&a, &b, 7000, "c00", "c10"), 10);
    ck_assert_uint_eq(budgeted(&a, &b, 7500, NULL, NULL), 0);
    ck_assert_uint_eq(budgeted(&a, &b, 8000, "c10", "c20"), 10);
    /* c's stream unheard for quiet_ms (3 s): a half */
    speak(&b, &a, 9000);
    ck_assert_uint_eq(budgeted(&a, &b, 10000, "c20", "c35"), 15);
    hubs_free(&a, &b);
    hub_free(&c);
}
END_TEST

/* How many entries of a's refresh pass are behind its cursor. */
static uint64_t refreshed_so_far(const struct hub *a)
{
    uint64_t n = 0;
    for (const struct group_entry *e = a->g.entries; e && e != a->g.cursor; e = e->hh.next)
        n++;
    return a->g.cursor ? n : HASH_COUNT(a->g.entries);
}

START_TEST(test_a_budget_paces_the_refresh_out_of_what_rises_leaves)
{
    /* sums_budget 20 a second, no other speaker heard: a's share is 20 a
     * second. 40 hot counters rise every second (more than the share) and
     * 100 cold ones stand still. While what rose waits, the refresh goes at
     * a tenth of the share (2 a second) of its own, so what rises keeps the
     * share; once the load stops and nothing waits, the pass takes what is
     * left of the share, in a message a heartbeat (1 s). a sends at most the
     * budget and the tenth, b ends with every sum, and a node heard anew
     * then brings a pass at once, whole. */
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    char name[16];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "c%02d", i);
        slot(&a, name, "e1", (uint64_t)i + 1, 0);
        note(&a, name);
    }
    ck_assert_int_eq(announce(&a, &out), 1); /* what rose, before the budget */
    outbox_free(&out);
    a.g.sums_budget = 20;
    a.g.refresh_ms = 10000;
    a.g.refresh_due = 1000; /* the next 10 intervals after it began */
    uint64_t sent = 0;
    for (uint64_t t = 1000; t < 5000; t += 100) {
        for (int i = 0; t % 1000 == 0 && i < 40; i++) {
            snprintf(name, sizeof(name), "h%02d", i);
            slot(&a, name, "e1", t, 0);
            note(&a, name);
        }
        sent += budgeted(&a, &b, t, NULL, NULL);
    }
    ck_assert(a.g.refresh_paced);
    ck_assert_uint_ge(a.g.budget_held, 4);
    ck_assert_uint_ge(refreshed_so_far(&a), 6); /* 2 a second, for 4 s */
    ck_assert_uint_le(refreshed_so_far(&a), 10);
    ck_assert_uint_le(sent, 4 * (20 + 2) + 20);
    /* the load stops: the 40 hot ones go, then the pass takes the share */
    uint64_t messages = 0;
    for (uint64_t t = 5000; a.g.cursor && t < 20000; t += 100) {
        uint64_t n = budgeted(&a, &b, t, NULL, NULL);
        sent += n;
        messages += n > 0;
    }
    ck_assert_ptr_null(a.g.cursor);
    ck_assert_uint_ge(a.g.refresh_took, 9000); /* 140 entries, less what went, at 20 a second */
    ck_assert_uint_le(a.g.refresh_took, 12000);
    ck_assert_uint_le(messages, 8); /* a message a heartbeat (6 here), not a record a tenth */
    ck_assert_uint_le(sent, (a.g.refresh_took / 1000 + 1) * (20 + 2) + 20);
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "c%02d", i);
        assert_group_slot(&b, name, "g1", (uint64_t)i + 1, 0);
    }
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "h%02d", i);
        assert_group_slot(&b, name, "g1", 4000, 0);
    }
    /* the next pass is due at 101000, paced; a node heard anew at 30000
     * brings one at once (a tenth of an interval after the last began), all
     * of it in one announce */
    ck_assert_uint_eq(budgeted(&a, &b, 30000, NULL, NULL), 0); /* a keepalive, no record */
    group_refresh_now(&a.g);
    ck_assert_uint_eq(budgeted(&a, &b, 30100, "c00", NULL), 100);
    ck_assert(!a.g.refresh_paced);
    ck_assert_ptr_nonnull(a.g.cursor); /* 100 a call here (the caller's bound): 40 left */
    ck_assert_uint_eq(budgeted(&a, &b, 30200, NULL, NULL), 40);
    ck_assert_ptr_null(a.g.cursor);
    hubs_free(&a, &b);
}
END_TEST

/* ==== Devices ==== */

START_TEST(test_a_device_maximum_travels_whole_and_is_not_echoed)
{
    struct hub a, b, c;
    struct outbox out = {0};
    two_groups(&a, &b);
    hub_init(&c, "c1", "g3", 1);
    slot(&a, "c", "e1", 3, 0);
    report(&a, "c", "dev1", 7);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    ck_assert(apply(&b, &out.m[0]));
    assert_group_slot(&b, "c", "g1", 3, 0); /* the device is not in the slot */
    ck_assert_uint_eq(device(&b, "c", "dev1"), 7);
    ck_assert_int_eq(value(&b, "c"), 10);
    ck_assert_int_eq(value(&b, "c"), value(&a, "c"));
    /* learned from the flood: b does not announce it again */
    note(&b, "c");
    ck_assert_int_eq(announce(&b, &out), 0);
    /* a device that rises at b is b's to announce */
    report(&b, "c", "dev1", 9);
    note(&b, "c");
    outbox_free(&out);
    ck_assert_int_eq(announce(&b, &out), 1);
    ck_assert(apply(&c, &out.m[0]));
    ck_assert(apply(&a, &out.m[0]));
    ck_assert_uint_eq(device(&c, "c", "dev1"), 9);
    ck_assert_uint_eq(device(&a, "c", "dev1"), 9);
    /* b's group wrote nothing of it: no count of .g2 (a slot of zeros is
     * made, as counter.c merges any slot) */
    const struct tally_slot *zero = group_slot(&c, "c", "g2");
    ck_assert(!zero || (zero->p == 0 && zero->n == 0));
    ck_assert_int_eq(value(&c, "c"), 9);
    ck_assert_int_eq(value(&a, "c"), 3 + 9);
    /* and a, which learned its rise from b, does not echo it */
    note(&a, "c");
    outbox_free(&out);
    ck_assert_int_eq(announce(&a, &out), 0);
    outbox_free(&out);
    hubs_free(&a, &b);
    hub_free(&c);
}
END_TEST

/* ==== Splitting ==== */

static void long_name(char *out, size_t size, int i)
{
    char pad[181];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(out, size, "counter-%03d-%s", i, pad);
}

START_TEST(test_many_counters_are_split_within_max_bytes)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    char name[TALLY_NAME_MAX + 1];
    for (int i = 0; i < 500; i++) {
        long_name(name, sizeof(name), i);
        slot(&a, name, "e1", (uint64_t)i * 1000003, (uint64_t)i);
        slot(&a, name, "a1", 1ULL << 40, 0);
        note(&a, name);
    }
    int n = announce_sized(&a, 1, 4096, 100, &out);
    ck_assert_int_gt(n, 1);
    for (int i = 0; i < out.n; i++)
        ck_assert_uint_le(out.m[i].len, 4096);
    ck_assert_uint_eq(records(&out, NULL, NULL), 500);
    apply_all(&b, &out);
    ck_assert_uint_eq(HASH_COUNT(b.t.counters), 500);
    for (int i = 0; i < 500; i++) {
        long_name(name, sizeof(name), i);
        assert_group_slot(&b, name, "g1", (uint64_t)i * 1000003 + (1ULL << 40), (uint64_t)i);
        ck_assert_int_eq(value(&b, name), value(&a, name));
    }
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

static void device_id(char *out, size_t size, int i)
{
    snprintf(out, size, "device-%03d-%0100d", i, 0);
}

/* A counter's devices over many messages, its sums again in each. */
START_TEST(test_a_counter_with_many_devices_is_taken_whole_over_many_messages)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    char id[TALLY_DEVICE_MAX + 1];
    slot(&a, "c", "e1", 11, 0);
    for (int i = 0; i < 200; i++) {
        device_id(id, sizeof(id), i);
        report(&a, "c", id, (uint64_t)i + 1);
    }
    note(&a, "c");
    ck_assert_int_gt(announce_sized(&a, 1, 2048, 100, &out), 10);
    uint64_t named;
    uint64_t total = records(&out, "c", &named);
    ck_assert_uint_eq(total, named);
    ck_assert_uint_ge(named, (uint64_t)out.n);
    apply_all(&b, &out);
    assert_group_slot(&b, "c", "g1", 11, 0);
    for (int i = 0; i < 200; i++) {
        device_id(id, sizeof(id), i);
        ck_assert_uint_eq(device(&b, "c", id), (uint64_t)i + 1);
    }
    ck_assert_int_eq(value(&b, "c"), value(&a, "c"));
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* Every GSUM within max_bytes, device ids of 111 bytes included: a record's
 * first device once overran it (its head alone was made room for). */
START_TEST(test_a_counter_with_many_devices_is_split_within_max_bytes)
{
    struct hub a;
    struct outbox out = {0};
    hub_init(&a, "a1", "g1", 1);
    char id[TALLY_DEVICE_MAX + 1];
    slot(&a, "c", "e1", 11, 0);
    for (int i = 0; i < 200; i++) {
        device_id(id, sizeof(id), i);
        report(&a, "c", id, (uint64_t)i + 1);
    }
    note(&a, "c");
    announce_sized(&a, 1, 2048, 100, &out);
    for (int i = 0; i < out.n; i++)
        ck_assert_msg(out.m[i].len <= 2048, "message %d of %d: %zu bytes", i, out.n, out.m[i].len);
    outbox_free(&out);
    hub_free(&a);
}
END_TEST

/* The same bug, across counters: many counters of one long device id each. */
START_TEST(test_counters_with_one_long_device_each_are_split_within_max_bytes)
{
    struct hub a, b;
    struct outbox out = {0};
    two_groups(&a, &b);
    char name[16], id[TALLY_DEVICE_MAX + 16]; /* 121 used; gcc cannot bound i */
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        snprintf(id, sizeof(id), "device-%03d-%0110d", i, 0);
        report(&a, name, id, 1);
        note(&a, name);
    }
    announce_sized(&a, 1, 1024, 100, &out);
    for (int i = 0; i < out.n; i++)
        ck_assert_msg(out.m[i].len <= 1024, "message %d of %d: %zu bytes", i, out.n, out.m[i].len);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* ==== What a hub refuses ==== */

/* Applies a malformed message at b: refused, and nothing of it taken. */
static void assert_refused(struct hub *b, const void *data, size_t len)
{
    bool fresh = true;
    uint64_t digest[TALLY_BUCKETS];
    memcpy(digest, b->t.digest, sizeof(digest));
    ck_assert_int_eq(apply_bytes(b, data, len, &fresh), TALLY_E_WIRE);
    ck_assert(!fresh);
    ck_assert_uint_eq(HASH_COUNT(b->t.counters), 0);
    ck_assert_uint_eq(b->t.ndevices, 0);
    ck_assert_mem_eq(digest, b->t.digest, sizeof(digest));
}

START_TEST(test_a_malformed_gsum_is_refused_whole)
{
    struct hub a, b;
    struct outbox out = {0};
    struct wire_buf w = {0};
    two_groups(&a, &b);
    slot(&a, "c", "e1", 5, 1);
    slot(&a, "d", "e1", 2, 0);
    report(&a, "d", "dev1", 3);
    note(&a, "c");
    note(&a, "d");
    ck_assert_int_eq(announce(&a, &out), 1);
    const struct msg *m = &out.m[0];
    /* cut anywhere */
    for (size_t len = 0; len < m->len; len++)
        assert_refused(&b, m->data, len);
    /* a byte more */
    uint8_t *longer = malloc(m->len + 1);
    memcpy(longer, m->data, m->len);
    longer[m->len] = 0;
    assert_refused(&b, longer, m->len + 1);
    /* another version, another type */
    memcpy(longer, m->data, m->len);
    longer[2] = WIRE_GSUM_VERSION + 1;
    assert_refused(&b, longer, m->len);
    longer[2] = PLAIN;
    longer[3] = WIRE_RSUM;
    assert_refused(&b, longer, m->len);
    longer[3] = WIRE_GSUM;
    longer[0] = 'X';
    assert_refused(&b, longer, m->len);
    free(longer);
    /* by hand: each a valid message but for one field */
    struct gsum_rec ok = {.name = "c", .p = 5, .n = 1, .dev = "dev1", .dev_total = 3};
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, "g1", &ok, 1);
    struct msg good = as_msg(&w);
    uint8_t *copy = malloc(good.len);
    memcpy(copy, good.data, good.len);
    const uint64_t over = (uint64_t)TALLY_MAX_SAFE + 1;
    struct gsum_rec bad[] = {
        {.name = "c/x", .p = 5, .n = 1}, /* name_check: '/' */
        {.name = "$c", .p = 5, .n = 1},  /* name_check: '$' */
        {.name = "", .p = 5, .n = 1},    /* name_check: empty */
        {.name = "c", .p = over},
        {.name = "c", .n = over},
        {.name = "c", .p = 1, .bp = over},
        {.name = "c", .p = 1, .bn = over},
        {.name = "c", .p = 1, .dev = "dev1", .dev_total = over},
        {.name = "c", .p = 1, .dev = "", .dev_total = 1}, /* device_id_check */
        {.name = "c", .p = 1, .dev = "dev1", .dev_total = 1, .dev_base = over},
        {.name = "c", .p = 1, .base_group = "g2", .base_p = over},
        {.name = "c", .p = 1, .base_group = "g2", .base_n = over},
        {.name = "c", .p = 1, .base_group = "", .base_p = 1},    /* a group's name */
        {.name = "c", .p = 1, .base_group = "g 2", .base_p = 1}, /* node_id_check */
        {.name = "c", .p = 1, .flags = 8},                       /* a flag unknown */
        {.name = "c", .p = 1, .base_group = ".r2", .base_p = 1}, /* a region's: version 3 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct gsum_rec two[2] = {ok, bad[i]}; /* the good part is not taken either */
        two[0].name = "e";
        write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, "g1", two, 2);
        assert_refused(&b, w.data, w.len);
    }
    write_gsum(&w, PLAIN, WIRE_GSUM, "a/1", 1, 7, "g1", &ok, 1);
    assert_refused(&b, w.data, w.len);
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, "", &ok, 1);
    assert_refused(&b, w.data, w.len);
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, "g 1", &ok, 1);
    assert_refused(&b, w.data, w.len);
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, ".g1", &ok, 1); /* a region's replica */
    assert_refused(&b, w.data, w.len);
    char group[TALLY_NODE_ID_MAX + 1];
    memset(group, 'g', TALLY_NODE_ID_MAX);
    group[TALLY_NODE_ID_MAX] = '\0'; /* one more than GROUP_NAME_MAX */
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, group, &ok, 1);
    assert_refused(&b, w.data, w.len);
    /* a count of counters over what follows */
    write_gsum(&w, PLAIN, WIRE_GSUM, "a1", 1, 7, "g1", &ok, 1);
    w.data[4 + 3 + 8 + 1 + 3] = 2;
    assert_refused(&b, w.data, w.len);
    /* none of them used up seq 7 of a1: the good one is still fresh */
    bool fresh;
    ck_assert_int_eq(apply_bytes(&b, copy, good.len, &fresh), TALLY_OK);
    ck_assert(fresh);
    assert_group_slot(&b, "c", "g1", 5, 1);
    ck_assert_uint_eq(device(&b, "c", "dev1"), 3);
    /* and the one of a1 itself, as b took it */
    ck_assert(apply(&b, m));
    assert_group_slot(&b, "d", "g1", 2, 0);
    free(copy);
    wbuf_free(&w);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

START_TEST(test_a_hub_in_no_group_takes_no_gsum)
{
    struct hub a, none, null;
    struct outbox out = {0};
    hub_init(&a, "a1", "g1", 1);
    hub_init(&none, "n1", "", 1);
    hub_init(&null, "n2", NULL, 1);
    ck_assert(!group_on(&none.g) && !group_on(&null.g));
    slot(&a, "c", "e1", 5, 1);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    ck_assert(!apply(&none, &out.m[0]));
    ck_assert(!apply(&null, &out.m[0]));
    ck_assert_ptr_null(find(&none, "c"));
    ck_assert_ptr_null(find(&null, "c"));
    ck_assert_uint_eq(none.t.nreplicas, 0);
    /* nor does it announce */
    slot(&none, "c", "e1", 5, 0);
    note(&none, "c");
    ck_assert_int_eq(announce(&none, &out), 0);
    ck_assert_int_eq(announce_sized(&none, 5000, MAX_BYTES, 100, &out), 0);
    outbox_free(&out);
    hub_free(&a);
    hub_free(&none);
    hub_free(&null);
}
END_TEST

/* One hub of a group speaks for it: a2 keeps quiet while it hears a1 (first
 * in order of node id), a1 never for a2, and a2 takes over, every sum
 * again, once a1 has been silent for quiet_ms. */
START_TEST(test_the_first_hub_of_a_group_speaks_for_it)
{
    struct hub a1, a2, b1;
    struct outbox o1 = {0}, o2 = {0}, late = {0};
    hub_init(&a1, "a1", "g1", 1);
    hub_init(&a2, "a2", "g1", 1);
    hub_init(&b1, "b1", "g2", 1);
    for (struct hub *h = &a1; h; h = h == &a1 ? &a2 : NULL) {
        slot(h, "c", "e1", 5, 0);
        note(h, "c");
    }
    /* both speak at first, and each hears the other */
    ck_assert_int_eq(announce_sized(&a1, 100, MAX_BYTES, 100, &o1), 1);
    ck_assert_int_eq(announce_sized(&a2, 100, MAX_BYTES, 100, &o2), 1);
    ck_assert(apply(&a2, &o1.m[0]));
    ck_assert(apply(&a1, &o2.m[0]));
    for (struct hub *h = &a1; h; h = h == &a1 ? &a2 : NULL) {
        slot(h, "c", "e2", 3, 0);
        note(h, "c");
    }
    ck_assert_int_eq(announce_sized(&a2, 200, MAX_BYTES, 100, &o2), 0);
    ck_assert_int_eq(announce_sized(&a1, 200, MAX_BYTES, 100, &o1), 1);
    ck_assert(!a1.g.quiet && a2.g.quiet);
    /* a1 silent from here: a2 keeps quiet until 3 s after it last heard it */
    ck_assert_int_eq(announce_sized(&a2, 100 + 2999, MAX_BYTES, 100, &late), 0);
    ck_assert_int_ge(announce_sized(&a2, 100 + 3000, MAX_BYTES, 100, &late), 1);
    ck_assert(!a2.g.quiet);
    apply_all(&b1, &late);
    ck_assert_int_eq(table_value(&b1.t, find(&b1, "c")), 8);
    outbox_free(&o1);
    outbox_free(&o2);
    outbox_free(&late);
    hub_free(&a1);
    hub_free(&a2);
    hub_free(&b1);
}
END_TEST

/* ==== Resets across groups ==== */

static void note_all(struct hub *h)
{
    for (struct tally_counter *c = h->t.counters; c; c = c->hh.next)
        for (int k = 1; k <= TALLY_LEVELS; k++)
            if (k == 1 || group_on(unit(h, k)))
                ck_assert_int_eq(group_note(unit(h, k), &h->t, c), TALLY_OK);
}

/* Each hub in turn announces what it owes, and every other hub takes it.
 * Returns how many GSUMs went. */
static int spread(struct hub *hubs[], int n)
{
    int sent = 0;
    for (int i = 0; i < n; i++) {
        struct outbox out = {0};
        note_all(hubs[i]);
        sent += announce(hubs[i], &out);
        for (int j = 0; j < n; j++)
            if (j != i)
                apply_all(hubs[j], &out);
        outbox_free(&out);
    }
    return sent;
}

static void assert_values(struct hub *hubs[], int n, const char *name, int64_t want, bool hidden)
{
    for (int i = 0; i < n; i++) {
        struct tally_counter *c = find(hubs[i], name);
        ck_assert_msg(c, "%s: no %s", hubs[i]->id, name);
        ck_assert_msg(table_value(&hubs[i]->t, c) == want, "%s: %s is %lld, want %lld", hubs[i]->id,
                      name, (long long)table_value(&hubs[i]->t, c), (long long)want);
        ck_assert_msg(table_hidden(&hubs[i]->t, c) == hidden, "%s: %s hidden %d", hubs[i]->id, name,
                      !hidden);
    }
}

/* a1 of g1, b1 of g2, c1 of g3, each with its nodes' slots of x: 23 in all */
static void three_groups(struct hub *a, struct hub *b, struct hub *c, struct hub *all[])
{
    hub_init(a, "a1", "g1", 1);
    hub_init(b, "b1", "g2", 1);
    hub_init(c, "c1", "g3", 1);
    all[0] = a;
    all[1] = b;
    all[2] = c;
    slot(a, "x", "a1", 5, 0);
    slot(a, "x", "e1", 3, 0);
    slot(b, "x", "b1", 10, 0);
    slot(b, "x", "e3", 4, 1);
    slot(c, "x", "c1", 2, 0);
    ck_assert_int_eq(spread(all, 3), 3);
    assert_values(all, 3, "x", 23, false);
}

static void three_free(struct hub *all[])
{
    for (int i = 0; i < 3; i++)
        hub_free(all[i]);
}

/* A reset at a1 observed g2's sum (14, 1) and g3's (2, 0) as slots of their
 * replicas: its GSUM carries those bases, and b1 and c1 take them from
 * their own group's part; what came after is counted everywhere. */
START_TEST(test_a_reset_in_one_group_takes_every_groups_part_everywhere)
{
    struct hub a, b, c, *all[3];
    three_groups(&a, &b, &c, all);
    ck_assert_int_eq(table_reset(&a.t, get(&a, "x"), false), TALLY_OK);
    ck_assert_int_eq(value(&a, "x"), 0);
    ck_assert_int_eq(spread(all, 3), 1); /* a1's; b1 and c1 echo nothing */
    assert_values(all, 3, "x", 0, false);
    uint64_t p, n;
    base_slot(table_base(&b.t, find(&b, "x")), b.t.unit[1], &p, &n);
    ck_assert(b.t.has_unit[1] && p == 14 && n == 1);              /* on b1's own group's replica */
    ck_assert_ptr_null(counter_slot(find(&b, "x"), b.t.unit[1])); /* and no slot of it */
    slot(&a, "x", "e1", 4, 0);
    slot(&b, "x", "e3", 6, 1);
    slot(&c, "x", "c1", 3, 0);
    ck_assert_int_eq(spread(all, 3), 3);
    assert_values(all, 3, "x", 4, false);
    /* b1 resets in turn: it observed everything, so its bases cover a1's */
    ck_assert_int_eq(table_reset(&b.t, get(&b, "x"), false), TALLY_OK);
    ck_assert_int_eq(spread(all, 3), 1);
    assert_values(all, 3, "x", 0, false);
    three_free(all);
}
END_TEST

/* A delete at b1 hides x in every group; an increment after it, at c1's
 * group, brings it back everywhere counting from zero. */
START_TEST(test_a_delete_in_one_group_hides_the_counter_in_every_group)
{
    struct hub a, b, c, *all[3];
    three_groups(&a, &b, &c, all);
    ck_assert_int_eq(table_reset(&b.t, get(&b, "x"), true), TALLY_OK);
    ck_assert_int_eq(spread(all, 3), 1);
    assert_values(all, 3, "x", 0, true);
    ck_assert_uint_eq(table_base(&c.t, find(&c, "x"))->deleted, 1);
    slot(&c, "x", "c1", 7, 0);
    ck_assert_int_eq(spread(all, 3), 1);
    assert_values(all, 3, "x", 5, false);
    three_free(all);
}
END_TEST

/* a1 resets having seen b1's 10, while b1, not having heard, counts 10
 * more at e3 and resets having seen all 20: everyone ends at 0, and counts
 * what comes after. */
START_TEST(test_two_resets_in_two_groups_at_once_converge)
{
    struct hub a, b, c, *all[3];
    three_groups(&a, &b, &c, all);
    ck_assert_int_eq(table_reset(&a.t, get(&a, "x"), false), TALLY_OK);
    slot(&b, "x", "e3", 14, 1);
    ck_assert_int_eq(table_reset(&b.t, get(&b, "x"), false), TALLY_OK);
    ck_assert_int_eq(spread(all, 3), 2);
    assert_values(all, 3, "x", 0, false);
    slot(&b, "x", "b1", 12, 0);
    ck_assert_int_eq(spread(all, 3), 1);
    assert_values(all, 3, "x", 2, false);
    three_free(all);
}
END_TEST

/* A device's base travels whole with its maximum, as the maximum does. */
START_TEST(test_a_reset_of_a_device_reaches_the_other_groups)
{
    struct hub a, b;
    struct hub *all[] = {&a, &b};
    struct outbox out = {0};
    two_groups(&a, &b);
    report(&a, "m", "meter-7", 100);
    ck_assert_int_eq(spread(all, 2), 1);
    assert_values(all, 2, "m", 100, false);
    ck_assert_int_eq(table_reset(&b.t, get(&b, "m"), false), TALLY_OK);
    ck_assert_int_eq(spread(all, 2), 1);
    assert_values(all, 2, "m", 0, false);
    report(&a, "m", "meter-7", 130);
    ck_assert_int_eq(spread(all, 2), 1);
    assert_values(all, 2, "m", 30, false);
    /* the refresh: a1, whose maximum rose last, carries the base too; b1
     * heard both back and sends neither again */
    uint64_t named;
    announce_sized(&b, REFRESH_DUE, MAX_BYTES, 100, &out);
    records(&out, "m", &named);
    ck_assert_uint_eq(named, 0);
    outbox_free(&out);
    ck_assert_int_eq(announce_sized(&a, REFRESH_DUE, MAX_BYTES, 100, &out), 1);
    records(&out, "m", &named);
    ck_assert_uint_eq(named, 1);
    struct hub late;
    hub_init(&late, "c1", "g3", 1); /* a hub that missed it all */
    apply_all(&late, &out);
    ck_assert_int_eq(value(&late, "m"), 30);
    hub_free(&late);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* A version 1 GSUM (before resets travelled) is still taken: groups
 * upgraded one at a time go on counting. */
START_TEST(test_a_version_1_gsum_is_taken)
{
    struct hub b;
    struct wire_buf w = {0};
    hub_init(&b, "b1", "g2", 1);
    struct gsum_rec r = {.name = "c", .p = 5, .n = 1, .dev = "dev1", .dev_total = 3};
    write_gsum(&w, 1, WIRE_GSUM, "a1", 1, 7, "g1", &r, 1);
    struct msg m = as_msg(&w);
    ck_assert(apply(&b, &m));
    assert_group_slot(&b, "c", "g1", 5, 1);
    ck_assert_uint_eq(device(&b, "c", "dev1"), 3);
    ck_assert_int_eq(value(&b, "c"), 7);
    wbuf_free(&w);
    hub_free(&b);
}
END_TEST

/* ==== Regions: groups of groups ==== */

/* Every message of each hub in turn to every other hub, as a bridge that
 * carries all of $tally/ would: a hub takes what is for it, and refuses a
 * GSUM of another region's group. Returns how many messages went. */
static int flood(struct hub *hubs[], int n)
{
    int sent = 0;
    for (int i = 0; i < n; i++) {
        struct outbox out = {0};
        note_all(hubs[i]);
        sent += announce(hubs[i], &out);
        for (int j = 0; j < n; j++) {
            bool fresh;
            for (int k = 0; k < out.n && j != i; k++)
                ck_assert_int_eq(apply_bytes(hubs[j], out.m[k].data, out.m[k].len, &fresh),
                                 TALLY_OK);
        }
        outbox_free(&out);
    }
    return sent;
}

/* Floods until every hub has nothing to say (a region's sum takes a round
 * more than a group's: it is made of the other groups' slots). */
static void settle(struct hub *hubs[], int n)
{
    int rounds = 0;
    while (flood(hubs, n))
        ck_assert_int_lt(++rounds, 6);
}

/* Floods until every hub has nothing to say, then every hub shows x as
 * `want` (hidden: deleted). */
static void converge(struct hub *all[], int n, int64_t want, bool hidden)
{
    settle(all, n);
    assert_values(all, n, "x", want, hidden);
}

static void all_free(struct hub *all[], int n)
{
    for (int i = 0; i < n; i++)
        hub_free(all[i]);
}

/* Region r1: a1 (g1), b1 (g2); region r2: c1 (g3), d1 (g4). x: 28 in all. */
static void two_regions(struct hub h[4], struct hub *all[4])
{
    hub_init_in(&h[0], "a1", "g1", "r1", 1);
    hub_init_in(&h[1], "b1", "g2", "r1", 1);
    hub_init_in(&h[2], "c1", "g3", "r2", 1);
    hub_init_in(&h[3], "d1", "g4", "r2", 1);
    for (int i = 0; i < 4; i++)
        all[i] = &h[i];
    slot(&h[0], "x", "a1", 5, 0);
    slot(&h[0], "x", "e1", 3, 0);
    slot(&h[1], "x", "b1", 10, 0);
    slot(&h[2], "x", "c1", 2, 0);
    slot(&h[3], "x", "d1", 9, 1);
    converge(all, 4, 28, false);
}

/* A hub holds its group's nodes' slots, one per other group of its region,
 * and one per other region: never a group of another region's, whose GSUMs
 * it refuses (they are in that region's sum). */
START_TEST(test_a_hub_in_a_region_holds_a_slot_per_group_of_it_and_per_other_region)
{
    struct hub h[4], *all[4];
    two_regions(h, all);
    assert_group_slot(&h[0], "x", "g2", 10, 0);
    assert_group_slot(&h[0], "x", ".r2", 11, 1);
    assert_group_slot(&h[2], "x", "g4", 9, 1);
    assert_group_slot(&h[2], "x", ".r1", 18, 0);
    ck_assert_ptr_null(group_slot(&h[0], "x", "g3"));
    ck_assert_ptr_null(group_slot(&h[0], "x", "g4"));
    ck_assert_ptr_null(group_slot(&h[0], "x", ".r1")); /* its own region's: none */
    ck_assert_ptr_null(group_slot(&h[2], "x", "g1"));
    ck_assert_uint_gt(h[2].g.refused, 0);
    ck_assert_uint_eq(h[2].g.mismatched, 0); /* refused as another region's, rightly */
    ck_assert_uint_eq(h[0].r.announced + h[1].r.announced > 0, 1);
    /* one of r1 speaks for it: b1 heard a1, before it in order */
    ck_assert(h[1].r.quiet && !h[0].r.quiet);
    /* a rise at d1's group reaches r1 in r2's sum */
    slot(&h[3], "x", "e9", 4, 0);
    converge(all, 4, 32, false);
    all_free(all, 4);
}
END_TEST

/* A reset at c1 observes g4's sum and r1's: its RSUMs carry the base of r1,
 * which a1 and b1 take from their region's part, and its GSUMs g4's; a
 * reset at a1 after more came in everywhere does the same the other way. */
START_TEST(test_a_reset_in_one_region_takes_every_part_everywhere)
{
    struct hub h[4], *all[4];
    two_regions(h, all);
    ck_assert_int_eq(table_reset(&h[2].t, get(&h[2], "x"), false), TALLY_OK);
    converge(all, 4, 0, false);
    uint64_t p, n;
    base_slot(table_base(&h[1].t, find(&h[1], "x")), h[1].t.unit[2], &p, &n);
    ck_assert(h[1].t.has_unit[2] && p == 18 && n == 0); /* on b1's own region's replica */
    slot(&h[0], "x", "e1", 4, 0);
    slot(&h[1], "x", "b1", 12, 0);
    slot(&h[3], "x", "d1", 10, 1);
    converge(all, 4, 4, false);
    ck_assert_int_eq(table_reset(&h[0].t, get(&h[0], "x"), false), TALLY_OK);
    converge(all, 4, 0, false);
    slot(&h[2], "x", "c1", 5, 0);
    converge(all, 4, 3, false);
    all_free(all, 4);
}
END_TEST

/* A delete in one region hides the counter in the other. */
START_TEST(test_a_delete_in_one_region_hides_the_counter_in_the_other)
{
    struct hub h[4], *all[4];
    two_regions(h, all);
    ck_assert_int_eq(table_reset(&h[3].t, get(&h[3], "x"), true), TALLY_OK);
    converge(all, 4, 0, true);
    slot(&h[1], "x", "b1", 16, 0);
    converge(all, 4, 6, false);
    all_free(all, 4);
}
END_TEST

/* An RSUM names no group's base (no other region holds a group's slot), is
 * version 3 at least; a GSUM before version 3 names no region's base. */
START_TEST(test_a_malformed_rsum_is_refused_whole)
{
    struct hub c;
    struct wire_buf w = {0};
    hub_init_in(&c, "c1", "g3", "r2", 1);
    struct gsum_rec ok = {.name = "x", .p = 5, .base_group = ".r2", .base_p = 1};
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, "r1", "", &ok, 1);
    struct msg good = as_msg(&w);
    uint8_t *copy = malloc(good.len);
    memcpy(copy, good.data, good.len);
    struct gsum_rec bad = {.name = "x", .p = 5, .base_group = "g2", .base_p = 1};
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, "r1", "", &bad, 1);
    assert_refused(&c, w.data, w.len);
    write_sums(&w, 2, WIRE_RSUM, "a1", 1, 7, "r1", "", &ok, 1);
    assert_refused(&c, w.data, w.len);
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, "r1", ".z1", &ok, 1); /* a bad name above */
    assert_refused(&c, w.data, w.len);
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, ".r1", "", &ok, 1); /* a level-3 unit's */
    assert_refused(&c, w.data, w.len);
    /* cut inside its unit's name: a length past the end */
    size_t cut = 4 + 1 + 2 + 8 + 1 + 1;
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, ".r1", "", &ok, 1);
    assert_refused(&c, w.data, cut);
    write_sums(&w, 3, WIRE_GSUM, "a1", 1, 7, "g4", "r 2", &ok, 1);
    assert_refused(&c, w.data, w.len);
    /* well formed, but of a region in a region above (a zone) where c's
     * is in none: not ours to take, nor to flood on */
    bool fresh = true;
    write_sums(&w, 3, WIRE_RSUM, "a1", 1, 7, "r1", "z1", &ok, 1);
    ck_assert_int_eq(apply_bytes(&c, w.data, w.len, &fresh), TALLY_OK);
    ck_assert(!fresh && c.r.refused == 1 && HASH_COUNT(c.t.counters) == 0);
    ck_assert_uint_eq(c.r.mismatched, 1); /* a tree of other levels: the plugin warns */
    ck_assert_int_eq(apply_bytes(&c, copy, good.len, &fresh), TALLY_OK);
    ck_assert(fresh);
    assert_group_slot(&c, "x", ".r1", 5, 0);
    free(copy);
    wbuf_free(&w);
    hub_free(&c);
}
END_TEST

/* ==== Regions of regions ==== */

/* plugin_opt_region: a region and up to two above it, each a unit name of
 * its level (k marks and it fit a node id). */
START_TEST(test_a_region_path_names_up_to_two_regions_above_it)
{
    char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1];
    char long61[62], long62[63];
    memset(long61, 'a', 61);
    long61[61] = '\0';
    memset(long62, 'a', 62);
    long62[62] = '\0';
    ck_assert_int_eq(region_path("", 0, names), 0);
    ck_assert_int_eq(region_path("r1", 2, names), 1);
    ck_assert_int_eq(region_path("eu-west/eu", 10, names), 2);
    ck_assert_str_eq(names[0], "eu-west");
    ck_assert_str_eq(names[1], "eu");
    ck_assert_int_eq(region_path("r/z/w", 5, names), 3);
    ck_assert_str_eq(names[2], "w");
    const char *bad[] = {"r/z/w/v", "/r", "r/", "r//z", ".r", "r/.z", "r z", "r/z@"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(region_path(bad[i], strlen(bad[i]), names) < 0, "%s", bad[i]);
    ck_assert_int_eq(unit_name_check(2, long62, 62), TALLY_OK);
    ck_assert_int_ne(unit_name_check(3, long62, 62), TALLY_OK); /* "..." and 62: 65 bytes */
    ck_assert_int_eq(unit_name_check(3, long61, 61), TALLY_OK);
    ck_assert_int_ne(unit_name_check(5, "w", 1), TALLY_OK);
    /* the sums budget of a level: as set, else 1,000, and two levels' worth
     * shared by three or four */
    ck_assert_uint_eq(group_sums_budget(0, 1), 1000);
    ck_assert_uint_eq(group_sums_budget(0, 2), 1000);
    ck_assert_uint_eq(group_sums_budget(0, 3), 667);
    ck_assert_uint_eq(group_sums_budget(0, 4), 500);
    ck_assert_uint_eq(group_sums_budget(50, 3), 50);
}
END_TEST

/* Zone z1: region r1 (a1 of g1, b1 of g2) and r2 (c1 of g3); zone z2:
 * r3 (d1 of g4) and r4 (f1 of g5); all[i] = &h[i]. */
static void two_zones_init(struct hub h[5], struct hub *all[5])
{
    hub_init_in(&h[0], "a1", "g1", "r1/z1", 1);
    hub_init_in(&h[1], "b1", "g2", "r1/z1", 1);
    hub_init_in(&h[2], "c1", "g3", "r2/z1", 1);
    hub_init_in(&h[3], "d1", "g4", "r3/z2", 1);
    hub_init_in(&h[4], "f1", "g5", "r4/z2", 1);
    for (int i = 0; i < 5; i++)
        all[i] = &h[i];
}

/* Each hub of two_zones_init writes x (a1 for itself and e1): 32 in all. */
static void two_zones_write(struct hub h[5])
{
    slot(&h[0], "x", "a1", 5, 0);
    slot(&h[0], "x", "e1", 3, 0);
    slot(&h[1], "x", "b1", 10, 0);
    slot(&h[2], "x", "c1", 2, 0);
    slot(&h[3], "x", "d1", 9, 1);
    slot(&h[4], "x", "f1", 4, 0);
}

/* two_zones_init, x written and converged: 32 at every hub. */
static void two_zones(struct hub h[5], struct hub *all[5])
{
    two_zones_init(h, all);
    two_zones_write(h);
    converge(all, 5, 32, false);
}

/* A hub holds its group's nodes, one slot per other group of its region,
 * per other region of its zone and per other zone: never a region of
 * another zone's, whose RSUMs it refuses (they are in that zone's sum). */
START_TEST(test_a_hub_in_a_zone_holds_a_slot_per_region_of_it_and_per_other_zone)
{
    struct hub h[5], *all[5];
    two_zones(h, all);
    assert_group_slot(&h[0], "x", "g2", 10, 0);
    assert_group_slot(&h[0], "x", ".r2", 2, 0);
    assert_group_slot(&h[0], "x", "..z2", 13, 1);
    assert_group_slot(&h[3], "x", ".r4", 4, 0);
    assert_group_slot(&h[3], "x", "..z1", 20, 0);
    const char *never_at_a1[] = {"g3", "g4", "g5", ".r1", ".r3", ".r4", "..z1"};
    for (size_t i = 0; i < sizeof(never_at_a1) / sizeof(never_at_a1[0]); i++)
        ck_assert_msg(!group_slot(&h[0], "x", never_at_a1[i]), "a1 holds %s", never_at_a1[i]);
    ck_assert_ptr_null(group_slot(&h[3], "x", ".r1"));
    ck_assert_uint_gt(h[3].r.refused, 0); /* z1's regions' RSUMs */
    ck_assert_uint_eq(h[3].r.mismatched + h[3].g.mismatched, 0);
    ck_assert_uint_gt(h[3].up[0].learned, 0);
    /* one of each zone speaks for it: a1 and d1, first in order */
    ck_assert(!h[0].up[0].quiet && h[1].up[0].quiet && h[2].up[0].quiet);
    ck_assert(!h[3].up[0].quiet && h[4].up[0].quiet);
    /* a rise in z2 reaches z1 in z2's sum */
    slot(&h[4], "x", "e9", 6, 0);
    converge(all, 5, 38, false);
    all_free(all, 5);
}
END_TEST

/* A reset at d1 observes z1's sum: its zone RSUMs carry the base of z1,
 * which z1's hubs take from their zone's part; a reset at b1 after more
 * came in everywhere the other way; then a delete at f1. */
START_TEST(test_a_reset_in_one_zone_takes_every_part_everywhere)
{
    struct hub h[5], *all[5];
    two_zones(h, all);
    ck_assert_int_eq(table_reset(&h[3].t, get(&h[3], "x"), false), TALLY_OK);
    converge(all, 5, 0, false);
    uint64_t p, n;
    base_slot(table_base(&h[2].t, find(&h[2], "x")), h[2].t.unit[3], &p, &n);
    ck_assert(h[2].t.has_unit[3] && p == 20 && n == 0); /* on c1's own zone's replica */
    slot(&h[0], "x", "e1", 4, 0);
    slot(&h[2], "x", "c1", 7, 0);
    slot(&h[4], "x", "f1", 6, 0);
    converge(all, 5, 8, false);
    ck_assert_int_eq(table_reset(&h[1].t, get(&h[1], "x"), false), TALLY_OK);
    converge(all, 5, 0, false);
    slot(&h[3], "x", "d1", 12, 1);
    converge(all, 5, 3, false);
    ck_assert_int_eq(table_reset(&h[4].t, get(&h[4], "x"), true), TALLY_OK);
    converge(all, 5, 0, true);
    slot(&h[0], "x", "a1", 9, 0);
    converge(all, 5, 4, false);
    all_free(all, 5);
}
END_TEST

/* Four levels: two hubs in two level-4 units hold each other's as one
 * slot ("....w2") and refuse every sum below it. */
START_TEST(test_four_levels_hold_one_slot_for_the_other_top_unit)
{
    struct hub h[2], *all[2] = {&h[0], &h[1]};
    hub_init_in(&h[0], "a1", "g1", "r1/z1/w1", 1);
    hub_init_in(&h[1], "b1", "g2", "r2/z2/w2", 1);
    slot(&h[0], "x", "a1", 5, 0);
    slot(&h[1], "x", "b1", 7, 2);
    converge(all, 2, 10, false);
    assert_group_slot(&h[0], "x", "...w2", 7, 2);
    assert_group_slot(&h[1], "x", "...w1", 5, 0);
    ck_assert(!group_slot(&h[0], "x", "g2") && !group_slot(&h[0], "x", ".r2") &&
              !group_slot(&h[0], "x", "..z2"));
    ck_assert(h[0].g.refused && h[0].r.refused && h[0].up[0].refused && !h[0].up[1].refused);
    ck_assert_int_eq(table_reset(&h[1].t, get(&h[1], "x"), false), TALLY_OK);
    slot(&h[0], "x", "a1", 6, 0);
    converge(all, 2, 1, false);
    hub_free(&h[0]);
    hub_free(&h[1]);
}
END_TEST

/* ==== Light hubs ==== */

/* What replication within a group carries from one hub to another: every
 * slot, base and stamp of every counter, merged as repl.c merges a SYNC
 * (the other units' slots too, as a repair of a bucket would). */
static void sync_to(struct hub *from, struct hub *to)
{
    bool changed;
    for (struct tally_counter *c = from->t.counters; c; c = c->hh.next) {
        struct tally_counter *d = get(to, c->name);
        const struct tally_base *b = table_base(&from->t, c);
        for (uint32_t i = 0; i < c->nslots; i++) {
            const struct tally_replica *r = from->t.replicas[c->slots[i].replica];
            uint32_t k = replica(to, r->key, r->incarnation);
            ck_assert_int_eq(table_merge_slot(&to->t, d, k, c->slots[i].p, c->slots[i].n, &changed),
                             TALLY_OK);
        }
        for (uint32_t i = 0; b && i < b->nslots; i++) {
            const struct tally_replica *r = from->t.replicas[b->slots[i].replica];
            uint32_t k = replica(to, r->key, r->incarnation);
            ck_assert_int_eq(
                table_merge_base_slot(&to->t, d, k, b->slots[i].p, b->slots[i].n, &changed),
                TALLY_OK);
        }
        if (b)
            ck_assert_int_eq(table_merge_stamps(&to->t, d, b->deleted, b->reset, &changed),
                             TALLY_OK);
    }
}

/* a1's group's speaker keeps its rest slots, and they reach light hub a0 */
static void rest_to(struct hub *full, struct hub *light)
{
    for (struct tally_counter *c = full->t.counters; c; c = c->hh.next)
        ck_assert_int_eq(group_rest(&full->t, NULL, c), TALLY_OK);
    sync_to(full, light);
}

static const struct tally_slot *rest_slot(struct hub *h, const char *name, int level)
{
    char id[REST_ID_LEN + 1];
    memset(id, GROUP_MARK, REST_ID_LEN - 1);
    id[REST_ID_LEN - 1] = (char)('0' + level);
    id[REST_ID_LEN] = '\0';
    return counter_slot(find(h, name), replica(h, id, GROUP_INCARNATION));
}

/* two_zones_init, and a0 in g1 beside a1 (r1, z1): h[5]. */
static void g1_of_two(struct hub h[6], struct hub *all[6])
{
    two_zones_init(h, all);
    hub_init_in(&h[5], "a0", "g1", "r1/z1", 1);
    all[5] = &h[5];
}

/* two_zones, with light hub a0 in a1's group (g1, r1, z1): a0 holds g1's
 * nodes' slots and one slot a level for the rest of the tree, never
 * speaks (though first in order), and shows what every hub does; its digest
 * is a1's. */
START_TEST(test_a_light_hub_holds_its_groups_slots_and_one_a_level)
{
    struct hub h[6], *all[6];
    g1_of_two(h, all);
    struct hub *a1 = &h[0], *a0 = &h[5];
    a1->t.lean = a0->t.lean = a0->t.light = true;
    two_zones_write(h);
    settle(all, 6);
    sync_to(a1, a0);                     /* g1's own slots */
    ck_assert_int_eq(value(a0, "x"), 8); /* no rest slot yet: its group's part */
    rest_to(a1, a0);
    assert_values(all, 6, "x", 32, false);
    /* g1's nodes, and the rest at levels 1, 2 and 3: g2's sum, r2's, z2's */
    ck_assert_uint_eq(find(a0, "x")->nslots, 5);
    const struct tally_slot *r1 = rest_slot(a0, "x", 1), *r2 = rest_slot(a0, "x", 2),
                            *r3 = rest_slot(a0, "x", 3);
    ck_assert(r1 && r1->p == 10 && r2 && r2->p == 2 && r3 && r3->p == 13 && r3->n == 1);
    const char *never[] = {"g2", ".r2", "..z2"};
    for (size_t i = 0; i < 3; i++)
        ck_assert_msg(!group_slot(a0, "x", never[i]), "a0 holds %s", never[i]);
    ck_assert(group_slot(a1, "x", "g2")); /* a1 holds them, and counts no rest slot */
    ck_assert(a0->g.quiet && !a1->g.quiet && a0->g.announced == 0 && a0->r.announced == 0);
    ck_assert_mem_eq(a0->t.digest, a1->t.digest, sizeof(a0->t.digest));
    /* a reset in the other zone, rises, then a reset in a0's own group */
    ck_assert_int_eq(table_reset(&h[3].t, get(&h[3], "x"), false), TALLY_OK);
    settle(all, 6);
    rest_to(a1, a0);
    assert_values(all, 6, "x", 0, false);
    slot(&h[1], "x", "b1", 15, 0);
    slot(a1, "x", "e1", 4, 0);
    settle(all, 6);
    rest_to(a1, a0);
    assert_values(all, 6, "x", 6, false);
    ck_assert_int_eq(table_reset(&a1->t, get(a1, "x"), false), TALLY_OK);
    settle(all, 6);
    rest_to(a1, a0);
    assert_values(all, 6, "x", 0, false);
    ck_assert_mem_eq(a0->t.digest, a1->t.digest, sizeof(a0->t.digest));
    slot(&h[4], "x", "f1", 7, 0);
    settle(all, 6);
    rest_to(a1, a0);
    assert_values(all, 6, "x", 3, false);
    all_free(all, 6);
}
END_TEST

/* ==== Split hubs ==== */

/* g1's two split hubs keep their rest slots (and the parts of resets)
 * and tell each other, as their SYNCs would, until nothing changes. */
static void split_round(struct hub *x, struct hub *y)
{
    for (int i = 0; i < 3; i++) {
        for (struct tally_counter *c = x->t.counters; c; c = c->hh.next)
            ck_assert_int_eq(group_rest(&x->t, NULL, c), TALLY_OK);
        for (struct tally_counter *c = y->t.counters; c; c = c->hh.next)
            ck_assert_int_eq(group_rest(&y->t, NULL, c), TALLY_OK);
        sync_to(x, y);
        sync_to(y, x);
    }
}

/* Floods, and g1's split hubs keep their rest slots, until all settle. */
static void split_settle(struct hub *all[], int n, struct hub *x, struct hub *y)
{
    for (int i = 0; i < 3; i++) {
        settle(all, n);
        split_round(x, y);
    }
}

/* two_zones, with a0 and a1 split hubs of g1 (g1, r1, z1): a0, first in
 * order, holds levels 1 and 3 (g2, z2), a1 level 2 (r2); each holds its
 * group's nodes' slots, one rest slot a level, and its levels' units, and
 * shows what every hub does. A reset at a1 takes, through each level's
 * holder, exactly what a1 saw; so does one in the other zone. */
START_TEST(test_split_hubs_hold_a_level_each_and_take_a_resets_parts)
{
    struct hub h[6], *all[6];
    g1_of_two(h, all);
    struct hub *a1 = &h[0], *a0 = &h[5];
    const char *hear_a0[] = {"a0"}, *hear_a1[] = {"a1"};
    a1->t.lean = a0->t.lean = a1->t.split = a0->t.split = true;
    a0->t.holds = group_holds("a0", hear_a1, 1, 3);
    a1->t.holds = group_holds("a1", hear_a0, 1, 3);
    ck_assert_uint_eq(a0->t.holds, (1u << 1) | (1u << 3));
    ck_assert_uint_eq(a1->t.holds, 1u << 2);
    ck_assert_uint_eq(group_holds("a1", NULL, 0, 3), (1u << 1) | (1u << 2) | (1u << 3));
    const char *twice[] = {"a0", "a2", "a0", "a1"}; /* a0 over two bridges, ourselves */
    ck_assert_uint_eq(group_holds("a1", twice, 4, 3), 1u << 2);
    ck_assert_uint_eq(group_holds("a2", twice, 4, 4), 1u << 3);
    two_zones_write(h);
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 32, false);
    /* each its level's units, and no other's */
    ck_assert(group_slot(a0, "x", "g2") && group_slot(a0, "x", "..z2"));
    ck_assert(!group_slot(a0, "x", ".r2") && group_slot(a1, "x", ".r2"));
    ck_assert(!group_slot(a1, "x", "g2") && !group_slot(a1, "x", "..z2"));
    const struct tally_slot *r1 = rest_slot(a1, "x", 1), *r2 = rest_slot(a0, "x", 2),
                            *r3 = rest_slot(a1, "x", 3);
    ck_assert(r1 && r1->p == 10 && r2 && r2->p == 2 && r3 && r3->p == 13 && r3->n == 1);
    ck_assert_mem_eq(a0->t.digest, a1->t.digest, sizeof(a0->t.digest));
    /* a reset at a1, then rises everywhere */
    ck_assert_int_eq(table_reset(&a1->t, get(a1, "x"), false), TALLY_OK);
    ck_assert_int_eq(value(a1, "x"), 0); /* at once, from its rest slots */
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 0, false);
    slot(&h[1], "x", "b1", 15, 0);
    slot(&h[3], "x", "d1", 12, 1);
    slot(a0, "x", "a0", 1, 0);
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 9, false);
    /* one in the other zone, and a delete at a0 */
    ck_assert_int_eq(table_reset(&h[4].t, get(&h[4], "x"), false), TALLY_OK);
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 0, false);
    slot(&h[2], "x", "c1", 6, 0);
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 4, false);
    ck_assert_int_eq(table_reset(&a0->t, get(a0, "x"), true), TALLY_OK);
    split_settle(all, 6, a0, a1);
    assert_values(all, 6, "x", 0, true);
    ck_assert_mem_eq(a0->t.digest, a1->t.digest, sizeof(a0->t.digest));
    /* a0 gives level 3 to a1 (a third hub heard, say): it drops z2's slot,
     * its rest slot keeps z2's part, and a1 takes z2's next sums */
    a0->t.holds = 1u << 1;
    a1->t.holds = (1u << 2) | (1u << 3);
    group_drop_level(&a0->t, 3);
    ck_assert(!group_slot(a0, "x", "..z2") && rest_slot(a0, "x", 3));
    slot(&h[3], "x", "d1", 20, 1);
    split_settle(all, 6, a0, a1);
    ck_assert(group_slot(a1, "x", "..z2") && !group_slot(a0, "x", "..z2"));
    assert_values(all, 6, "x", 8, false);
    all_free(all, 6);
}
END_TEST

/* ==== Sums lost on the way ==== */

/* A GWANT in its sender's stream: a call for a speaker's refresh. */
#define CALL 100

/* A message's type, CALL for a call. */
static int kind(const struct msg *m)
{
    if (m->len < 4 || m->data[3] != WIRE_GWANT)
        return m->len >= 4 ? m->data[3] : -1;
    struct wire_reader r = {m->data + 4, m->data + m->len, false};
    size_t len;
    wr_str8(&r, &len);
    wr_u64(&r);
    return wr_varint(&r) ? CALL : WIRE_GWANT;
}

/* How many of o's messages are of `type` (or calls). */
static int of_type(const struct outbox *o, int type)
{
    int n = 0;
    for (int i = 0; i < o->n; i++)
        n += kind(&o->m[i]) == type;
    return n;
}

/* The last message of o of `type`. */
static const struct msg *last_of(const struct outbox *o, int type)
{
    for (int i = o->n - 1; i >= 0; i--)
        if (kind(&o->m[i]) == type)
            return &o->m[i];
    ck_abort_msg("no message of type %u", type);
    return NULL;
}

/* The messages of `type` (WIRE_GWANT: asks; CALL: calls) h's announces at
 * t1 and t2 write. */
static int sent_at(struct hub *h, uint64_t t1, uint64_t t2, int type)
{
    struct outbox o = {0};
    announce_sized(h, t1, MAX_BYTES, 100, &o);
    announce_sized(h, t2, MAX_BYTES, 100, &o);
    int n = of_type(&o, type);
    outbox_free(&o);
    return n;
}

static int asks_at(struct hub *h, uint64_t t1, uint64_t t2)
{
    return sent_at(h, t1, t2, WIRE_GWANT);
}

/* The seqs an ask names, of target's stream in its life `session`. */
static int ask_seqs(const struct msg *m, const char *target, uint64_t session, uint64_t *seqs)
{
    struct wire_reader r = {m->data, m->data + m->len, false};
    size_t len;
    ck_assert_uint_eq(m->data[2], WIRE_GSUM_VERSION);
    r.p += 4;
    wr_str8(&r, &len); /* who asks */
    wr_u64(&r);
    wr_varint(&r);
    wr_str8(&r, &len); /* its group, its region */
    wr_str8(&r, &len);
    const char *t = wr_str8(&r, &len);
    ck_assert(len == strlen(target) && memcmp(t, target, len) == 0);
    ck_assert_uint_eq(wr_u64(&r), session);
    int n = (int)wr_varint(&r);
    for (int i = 0; i < n; i++)
        seqs[i] = wr_varint(&r);
    ck_assert(!r.bad && r.p == r.end);
    return n;
}

/* An ask at h: taken, and not flooded on (it is for a neighbour's asker alone). */
static void take_ask(struct hub *h, const struct msg *m)
{
    ck_assert(!apply(h, m));
}

/* a's stream: three GSUMs of c rising (at now + 1, 2, 3), the second with
 * a device's maximum, all to out; `to` (n of them) take the first and the
 * last only. Returns the lost one's index in out. */
static int lose_second(struct hub *a, struct hub *to[], int n, struct outbox *out, uint64_t now)
{
    int lost = 0;
    for (uint64_t i = 1; i <= 3; i++) {
        slot(a, "c", "e1", a->g.seq + 10, 0);
        if (i == 2)
            report(a, "c", "d1", 7);
        note(a, "c");
        ck_assert_int_eq(announce_sized(a, now + i, MAX_BYTES, 100, out), 1);
        if (i == 2)
            lost = out->n - 1;
        else
            for (int k = 0; k < n; k++)
                ck_assert(apply(to[k], &out->m[out->n - 1]));
    }
    return lost;
}

START_TEST(test_a_gsum_lost_on_the_way_is_asked_for_and_sent_again_as_it_was)
{
    /* A hub that sees a gap in a stream of sums it takes waits a quarter
     * to half a heartbeat (1 s here) for the message on a longer path, then
     * asks its speaker for it, which sends it again: the same bytes, its
     * device maximum with it, not at the refresh (due at 1,000,000 here). */
    struct hub a, b, *to[] = {&b};
    struct outbox out = {0}, asks = {0}, again = {0};
    two_groups(&a, &b);
    a.g.refresh_due = b.g.refresh_due = 1000000;
    int lost = lose_second(&a, to, 1, &out, 0);
    ck_assert_uint_eq(device(&b, "c", "d1"), 0);
    announce_sized(&b, 240, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 0);
    announce_sized(&b, 500, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 1);
    uint64_t seqs[64];
    ck_assert_int_eq(ask_seqs(last_of(&asks, WIRE_GWANT), "a1", 1, seqs), 1);
    ck_assert_uint_eq(seqs[0], seq_of(&out.m[lost]));
    take_ask(&a, last_of(&asks, WIRE_GWANT));
    ck_assert_int_eq(announce_sized(&a, 600, MAX_BYTES, 100, &again), 1);
    ck_assert_uint_eq(a.g.resent, 1);
    ck_assert_uint_eq(again.m[0].len, out.m[lost].len);
    ck_assert_mem_eq(again.m[0].data, out.m[lost].data, out.m[lost].len);
    ck_assert(apply(&b, &again.m[0]));
    ck_assert(!apply(&b, &again.m[0]));
    ck_assert_uint_eq(device(&b, "c", "d1"), 7);
    assert_group_slot(&b, "c", "g1", a.g.seq + 9, 0);
    ck_assert_int_eq(asks_at(&b, 1500, 2500), 0); /* had: no more asks */
    ck_assert_uint_eq(b.g.wants, 1);
    outbox_free(&out);
    outbox_free(&asks);
    outbox_free(&again);
    hubs_free(&a, &b);
}
END_TEST

START_TEST(test_a_hub_asks_three_times_at_most_then_calls_for_the_refresh)
{
    /* Asked for three times in vain (or no neighbour holds it), a message
     * is the refresh's to heal: the hub calls for it, once, in its own
     * stream, flooded to the speaker, which refreshes soon. */
    struct hub a, b, *to[] = {&b};
    struct outbox out = {0}, asks = {0};
    two_groups(&a, &b);
    a.g.refresh_due = b.g.refresh_due = 1000000;
    lose_second(&a, to, 1, &out, 0);
    for (uint64_t t = 500; t <= 2500; t += 1000) { /* a heartbeat apart: none answered */
        announce_sized(&b, t == 500 ? 240 : t - 10, MAX_BYTES, 100, &asks);
        ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 0);
        announce_sized(&b, t, MAX_BYTES, 100, &asks);
        ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 1);
        outbox_free(&asks);
    }
    announce_sized(&b, 3500, MAX_BYTES, 100, &asks);
    announce_sized(&b, 9500, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 0);
    ck_assert_int_eq(of_type(&asks, CALL), 1);
    ck_assert_uint_eq(b.g.wants, GROUP_WANT_TRIES);
    ck_assert_uint_eq(b.g.calls, 1);
    /* the call is flooded (fresh), and brings a's refresh a tenth of an
     * interval after the last began */
    ck_assert(apply(&a, last_of(&asks, CALL)));
    ck_assert_uint_eq(a.g.refresh_due, a.g.refresh_began + REFRESH_MS / 10);
    outbox_free(&asks);
    announce_sized(&a, 9600, MAX_BYTES, 100, &asks);
    ck_assert_uint_eq(records(&asks, "c", NULL), 1);
    apply_all(&b, &asks);
    ck_assert_uint_eq(device(&b, "c", "d1"), 7);
    outbox_free(&asks);
    /* a new gap starts the tries over */
    outbox_free(&out);
    lose_second(&a, to, 1, &out, 10000);
    announce_sized(&b, 10600, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 1);
    outbox_free(&out);
    outbox_free(&asks);
    hubs_free(&a, &b);
}
END_TEST

START_TEST(test_a_neighbour_that_holds_a_lost_message_sends_it_again)
{
    /* a's message reached c, not b: b asks its neighbours, and c, which
     * holds what it saw of a's stream, sends it again, once a half
     * heartbeat at most however often asked; a neighbour that lacks it
     * too sends nothing. */
    struct hub a, b, c, *all[3], *to[] = {&b};
    struct outbox out = {0}, asks = {0}, again = {0};
    three_groups(&a, &b, &c, all);
    uint64_t base = a.g.clock_ms + 100000; /* past the refresh, heartbeats and asks of the spread */
    a.g.refresh_due = b.g.refresh_due = c.g.refresh_due = base + 1000000;
    for (int i = 0; i < 3; i++) /* each hub's clock at base, its keepalive to all */
        announce_sized(all[i], base, MAX_BYTES, 100, &again);
    for (int i = 0; i < again.n; i++)
        for (int k = 0; k < 3; k++)
            apply(all[k], &again.m[i]);
    outbox_free(&again);
    int lost = lose_second(&a, to, 1, &out, base);
    ck_assert(apply(&c, &out.m[lost - 1]));
    announce_sized(&b, base + 240, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 0);
    announce_sized(&b, base + 250, MAX_BYTES, 100, &asks);
    ck_assert_int_eq(of_type(&asks, WIRE_GWANT), 1);
    const struct msg *ask = last_of(&asks, WIRE_GWANT);
    take_ask(&c, ask); /* c lacks it too: nothing */
    ck_assert_int_eq(announce_sized(&c, base + 260, MAX_BYTES, 100, &again), 0);
    ck_assert(apply(&c, &out.m[lost]));
    ck_assert(apply(&c, &out.m[lost + 1]));
    take_ask(&c, ask);
    ck_assert_int_eq(announce_sized(&c, base + 270, MAX_BYTES, 100, &again), 1);
    ck_assert_uint_eq(c.g.resent, 1);
    ck_assert_mem_eq(again.m[0].data, out.m[lost].data, out.m[lost].len);
    take_ask(&c, ask); /* within half a heartbeat of the last: not again */
    ck_assert_int_eq(announce_sized(&c, base + 700, MAX_BYTES, 100, &again), 0);
    ck_assert_int_eq(announce_sized(&c, base + 800, MAX_BYTES, 100, &again), 0);
    take_ask(&c, ask); /* past it: again */
    ck_assert_int_eq(announce_sized(&c, base + 810, MAX_BYTES, 100, &again), 1);
    ck_assert_uint_eq(c.g.resent, 2);
    ck_assert(apply(&b, &again.m[0]));
    ck_assert(!apply(&b, &again.m[1]));
    ck_assert_uint_eq(device(&b, "c", "d1"), 7);
    outbox_free(&out);
    outbox_free(&asks);
    outbox_free(&again);
    three_free(all);
}
END_TEST

START_TEST(test_the_first_messages_of_a_life_lost_on_the_way_are_asked_for)
{
    /* A hub that first hears a stream at seq 3 asks for 1 and 2 (a speaker
     * restarted, its first sums lost); one that first hears it past the
     * window asks for nothing, since no neighbour keeps what came before,
     * and calls for the speaker's refresh. */
    struct hub a, b;
    struct outbox out = {0}, asks = {0};
    two_groups(&a, &b);
    a.g.refresh_due = b.g.refresh_due = 1000000;
    for (uint64_t i = 1; i <= 3; i++) {
        slot(&a, "c", "e1", i, 0);
        note(&a, "c");
        ck_assert_int_eq(announce_sized(&a, i, MAX_BYTES, 100, &out), 1);
    }
    ck_assert_uint_eq(seq_of(&out.m[2]), 3);
    ck_assert(apply(&b, &out.m[2]));
    announce_sized(&b, 500, MAX_BYTES, 100, &asks);
    uint64_t seqs[64];
    ck_assert_int_eq(ask_seqs(last_of(&asks, WIRE_GWANT), "a1", 1, seqs), 2);
    ck_assert(seqs[0] + seqs[1] == 3 && seqs[0] * seqs[1] == 2);
    outbox_free(&asks);
    outbox_free(&out);
    hubs_free(&a, &b);
    two_groups(&a, &b);
    for (uint64_t i = 1; i <= 70; i++) {
        slot(&a, "c", "e1", i, 0);
        note(&a, "c");
        ck_assert_int_eq(announce_sized(&a, i, MAX_BYTES, 100, &out), 1);
    }
    ck_assert(apply(&b, &out.m[69]));
    ck_assert_int_eq(asks_at(&b, 500, 1500), 0);
    ck_assert_int_eq(sent_at(&b, 2500, 3500, CALL), 0); /* called once, just before */
    ck_assert_uint_eq(b.g.calls, 1);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

/* An ask by hand: version, type, who asks (x1 of g3), then the target's
 * id and life, how many seqs (n, as written), and the seqs. */
static void write_ask(struct wire_buf *w, uint8_t version, uint8_t type, const char *target,
                      uint64_t n, const uint64_t *seqs, int nseqs)
{
    const uint8_t h[4] = {'T', 'L', version, type};
    wbuf_reset(w);
    wbuf_bytes(w, h, sizeof(h));
    wbuf_str8(w, "x1", 2);
    wbuf_u64(w, 1);
    wbuf_varint(w, 0); /* out of x1's stream */
    wbuf_str8(w, "g3", 2);
    if (version >= 3)
        wbuf_str8(w, "", 0);
    wbuf_str8(w, target, strlen(target));
    wbuf_u64(w, 1);
    wbuf_varint(w, n);
    for (int i = 0; i < nseqs; i++)
        wbuf_varint(w, seqs[i]);
    ck_assert(!w->failed);
}

START_TEST(test_a_malformed_ask_is_refused_whole)
{
    struct hub a, b;
    struct wire_buf w = {0};
    struct outbox out = {0};
    uint64_t seqs[65];
    for (int i = 0; i < 65; i++)
        seqs[i] = (uint64_t)i + 1;
    two_groups(&a, &b);
    slot(&a, "c", "e1", 5, 0);
    note(&a, "c");
    ck_assert_int_eq(announce(&a, &out), 1);
    write_ask(&w, 3, WIRE_GWANT, "a1", 1, seqs, 1);
    for (size_t len = 0; len < w.len; len++) /* cut anywhere */
        assert_refused(&b, w.data, len);
    uint8_t *longer = malloc(w.len + 1);
    memcpy(longer, w.data, w.len);
    longer[w.len] = 1;
    assert_refused(&b, longer, w.len + 1); /* a byte more */
    free(longer);
    write_ask(&w, 2, WIRE_GWANT, "a1", 1, seqs, 1); /* before version 3 */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_RWANT, "a1", 1, seqs, 1); /* a region's, at a group's level */
    bool fresh = true;
    ck_assert_int_eq(group_apply(&b.g, &b.t, NULL, b.id, w.data, w.len, &fresh), TALLY_E_WIRE);
    ck_assert(!fresh);
    write_ask(&w, 3, WIRE_GWANT, "a/1", 1, seqs, 1); /* a target no node has */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_GWANT, "a1", 0, seqs, 0); /* none */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_GWANT, "a1", 64, seqs, 64); /* more than a window */
    assert_refused(&b, w.data, w.len);
    uint64_t zero = 0;
    write_ask(&w, 3, WIRE_GWANT, "a1", 1, &zero, 1); /* seq 0: none is */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_GWANT, "a1", 2, seqs, 1); /* fewer than it says */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_GWANT, "a1", 1, seqs, 1);
    ck_assert_uint_eq(w.data[15], 0);
    w.data[15] = 1; /* in a stream: asks are not (calls are, and name no seq) */
    assert_refused(&b, w.data, w.len);
    write_ask(&w, 3, WIRE_GWANT, "a1", 0, seqs, 0);
    w.data[15] = 1; /* a call: flooded on, nothing counted */
    bool called = false;
    ck_assert_int_eq(apply_bytes(&b, w.data, w.len, &called), TALLY_OK);
    ck_assert(called && HASH_COUNT(b.t.counters) == 0);
    /* a well-formed one: taken and flooded on, nothing counted; at the
     * speaker, an ask for a seq it never sent sends nothing */
    write_ask(&w, 3, WIRE_GWANT, "a1", 63, seqs, 63);
    fresh = false;
    ck_assert_int_eq(apply_bytes(&b, w.data, w.len, &fresh), TALLY_OK);
    ck_assert(!fresh && HASH_COUNT(b.t.counters) == 0);
    ck_assert_int_eq(apply_bytes(&a, w.data, w.len, &fresh), TALLY_OK);
    outbox_free(&out);
    ck_assert_int_eq(announce_sized(&a, 2, MAX_BYTES, 100, &out), 1); /* the one it sent, seq 1 */
    ck_assert_uint_eq(a.g.resent, 1);
    wbuf_free(&w);
    outbox_free(&out);
    hubs_free(&a, &b);
}
END_TEST

Suite *group_suite(void)
{
    Suite *s = suite_create("group");
    TCase *tc = tcase_create("groups of hubs");
    tcase_add_test(tc, test_a_group_sum_is_the_sum_of_its_nodes_slots);
    tcase_add_test(tc, test_a_group_sum_of_a_reset_counter_has_the_sums_of_its_bases);
    tcase_add_test(tc, test_a_fold_leaves_the_group_sum_unchanged);
    tcase_add_test(tc, test_a_gsum_gives_the_other_group_one_slot_of_its_sum);
    tcase_add_test(tc, test_a_gsum_of_an_earlier_life_after_a_later_one_is_dropped);
    tcase_add_test(tc, test_a_hub_never_takes_its_own_groups_sum);
    tcase_add_test(tc, test_a_group_slot_only_rises_whatever_the_order);
    tcase_add_test(tc, test_a_gsum_far_below_the_newest_is_dropped);
    tcase_add_test(tc, test_a_counter_whose_sum_did_not_rise_is_not_sent);
    tcase_add_test(tc, test_the_refresh_sends_every_counter_again_in_chunks);
    tcase_add_test(tc, test_the_last_sums_go_again_once_still_where_sums_are_lost);
    tcase_add_test(tc, test_a_budget_of_sums_sends_what_rose_oldest_first_at_its_share);
    tcase_add_test(tc, test_a_budget_paces_the_refresh_out_of_what_rises_leaves);
    tcase_add_test(tc, test_a_device_maximum_travels_whole_and_is_not_echoed);
    tcase_add_test(tc, test_many_counters_are_split_within_max_bytes);
    tcase_add_test(tc, test_a_counter_with_many_devices_is_taken_whole_over_many_messages);
    tcase_add_test(tc, test_a_counter_with_many_devices_is_split_within_max_bytes);
    tcase_add_test(tc, test_counters_with_one_long_device_each_are_split_within_max_bytes);
    tcase_add_test(tc, test_a_malformed_gsum_is_refused_whole);
    tcase_add_test(tc, test_a_hub_in_no_group_takes_no_gsum);
    tcase_add_test(tc, test_the_first_hub_of_a_group_speaks_for_it);
    tcase_add_test(tc, test_a_group_sum_past_the_largest_safe_integer_is_saturated);
    tcase_add_test(tc, test_a_reset_in_one_group_takes_every_groups_part_everywhere);
    tcase_add_test(tc, test_a_delete_in_one_group_hides_the_counter_in_every_group);
    tcase_add_test(tc, test_two_resets_in_two_groups_at_once_converge);
    tcase_add_test(tc, test_a_reset_of_a_device_reaches_the_other_groups);
    tcase_add_test(tc, test_a_version_1_gsum_is_taken);
    tcase_add_test(tc, test_a_hub_in_a_region_holds_a_slot_per_group_of_it_and_per_other_region);
    tcase_add_test(tc, test_a_reset_in_one_region_takes_every_part_everywhere);
    tcase_add_test(tc, test_a_delete_in_one_region_hides_the_counter_in_the_other);
    tcase_add_test(tc, test_a_malformed_rsum_is_refused_whole);
    tcase_add_test(tc, test_a_region_path_names_up_to_two_regions_above_it);
    tcase_add_test(tc, test_a_hub_in_a_zone_holds_a_slot_per_region_of_it_and_per_other_zone);
    tcase_add_test(tc, test_a_reset_in_one_zone_takes_every_part_everywhere);
    tcase_add_test(tc, test_four_levels_hold_one_slot_for_the_other_top_unit);
    tcase_add_test(tc, test_a_light_hub_holds_its_groups_slots_and_one_a_level);
    tcase_add_test(tc, test_split_hubs_hold_a_level_each_and_take_a_resets_parts);
    tcase_add_test(tc, test_a_gsum_lost_on_the_way_is_asked_for_and_sent_again_as_it_was);
    tcase_add_test(tc, test_a_hub_asks_three_times_at_most_then_calls_for_the_refresh);
    tcase_add_test(tc, test_a_neighbour_that_holds_a_lost_message_sends_it_again);
    tcase_add_test(tc, test_the_first_messages_of_a_life_lost_on_the_way_are_asked_for);
    tcase_add_test(tc, test_a_malformed_ask_is_refused_whole);
    tcase_add_test(tc, test_the_refresh_goes_ten_intervals_apart_where_sums_are_lost_too);
    suite_add_tcase(s, tc);
    return s;
}
