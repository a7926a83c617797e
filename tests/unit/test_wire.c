/*
 * test_wire.c - the replication wire format (wire.c): what a writer encodes
 * a reader decodes to the same state; anything truncated, forged or garbled
 * is refused whole, never crashes and never allocates more than the message
 * could describe.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <check.h>
#include <cjson/cJSON.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

static uint64_t rng;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n)
{
    return rnd() % n;
}

/* ==== Building random tables ==== */

static void random_name(char *buf, size_t cap, size_t *len)
{
    switch (rnd_below(5)) {
    case 0: /* the longest name: 200 bytes */
        memset(buf, 'L', TALLY_NAME_MAX);
        *len = TALLY_NAME_MAX - 4;
        *len += (size_t)snprintf(buf + *len, cap - *len, "%04u", (unsigned)rnd_below(10000));
        break;
    case 1: /* multi-byte */
        *len =
            (size_t)snprintf(buf, cap, "caf\xc3\xa9-\xf0\x9f\x98\x80-%u", (unsigned)rnd_below(500));
        break;
    default:
        *len = (size_t)snprintf(buf, cap, "c%u", (unsigned)rnd_below(2000));
    }
}

static uint64_t random_value(void)
{
    switch (rnd_below(4)) {
    case 0:
        return rnd_below(128);
    case 1:
        return TALLY_MAX_SAFE - rnd_below(2);
    default:
        return rnd_below((uint64_t)TALLY_MAX_SAFE + 1);
    }
}

static void random_table(struct tally_table *t, int ncounters)
{
    char name[TALLY_NAME_MAX + 8], node[TALLY_NODE_ID_MAX + 1], dev[TALLY_DEVICE_MAX + 1];
    size_t len;
    table_init(t, 100000, 100000);
    for (int i = 0; i < ncounters; i++) {
        struct tally_counter *c;
        random_name(name, sizeof(name), &len);
        ck_assert_int_eq(table_get(t, name, len, TABLE_LOCAL, &c), TALLY_OK);
        int nslots = (int)rnd_below(5);
        for (int k = 0; k < nslots; k++) {
            uint32_t r;
            if (rnd_below(10) == 0) {
                memset(node, 'N', TALLY_NODE_ID_MAX);
                node[TALLY_NODE_ID_MAX] = '\0';
            } else {
                snprintf(node, sizeof(node), "node-%u", (unsigned)rnd_below(5));
            }
            ck_assert_int_eq(table_replica(t, node, strlen(node), rnd_below(3) ? rnd() : 0, &r),
                             TALLY_OK);
            ck_assert_int_eq(table_merge_slot(t, c, r, random_value(), random_value(), &changed),
                             TALLY_OK);
        }
        int ndevs = (int)rnd_below(3);
        for (int k = 0; k < ndevs; k++) {
            uint32_t d;
            size_t dlen;
            if (rnd_below(10) == 0) {
                memset(dev, 'D', TALLY_DEVICE_MAX);
                dlen = TALLY_DEVICE_MAX;
            } else {
                dlen = (size_t)snprintf(dev, sizeof(dev), "meter-%u", (unsigned)rnd_below(50));
            }
            ck_assert_int_eq(table_device(t, dev, dlen, DEVICE_PEER, &d), TALLY_OK);
            ck_assert_int_eq(table_merge_device(t, c, d, random_value(), false, &changed),
                             TALLY_OK);
        }
        table_drop_if_empty(t, c); /* a counter always holds something */
    }
}

/* Merges a decoded SYNC into t with the shipped merge (repl.c), as the
 * plugin does, from a neighbour "x". */
static void merge_sync(struct tally_table *t, const struct wire_sync *s)
{
    struct repl r;
    uint16_t k;
    repl_init(&r, 2);
    ck_assert_int_eq(repl_neighbour(&r, "x", &k), TALLY_OK);
    ck_assert_int_eq(repl_apply_sync(&r, t, NULL, s, k), TALLY_OK);
    repl_free(&r);
}

/* How many counters are on t's dirty list; empties it. */
static size_t take_dirty(struct tally_table *t)
{
    size_t n = 0;
    while (table_pop_dirty(t))
        n++;
    return n;
}

/* Encodes all of t as one SYNC message from sender into w->out. */
static void encode_table(struct wire_sync_writer *w, const struct tally_table *t,
                         const char *sender)
{
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        ck_assert_int_eq(sync_writer_add(w, t, c), TALLY_OK);
    }
    ck_assert_int_eq(sync_writer_finish(w, sender, 7, 1), TALLY_OK);
}

static void assert_tables_equal(const struct tally_table *a, const struct tally_table *b)
{
    ck_assert_mem_eq(a->digest, b->digest, sizeof(a->digest));
    ck_assert_uint_eq(a->ncounters, b->ncounters);
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, a->counters, c, tmp)
    {
        const struct tally_counter *o = table_find((struct tally_table *)b, c->name, c->name_len);
        ck_assert_ptr_nonnull(o);
        ck_assert_int_eq(counter_value(c), counter_value(o));
        ck_assert_uint_eq(c->nslots, o->nslots);
        ck_assert_uint_eq(counter_ndevs(c), counter_ndevs(o));
    }
}

/* A message literal and its length, embedded NULs included. */
#define MSG(lit) lit, sizeof(lit) - 1

/* ==== SYNC ==== */

START_TEST(test_sync_round_trip)
{
    rng = 1;
    for (int round = 0; round < 50; round++) {
        struct tally_table t1, t2;
        struct wire_sync_writer w = {0};
        struct wire_sync s;
        random_table(&t1, (int)rnd_below(200));
        encode_table(&w, &t1, "n1");
        ck_assert_int_eq(wire_peek_type(w.out.data, w.out.len), WIRE_SYNC);
        ck_assert_int_eq(wire_decode_sync(w.out.data, w.out.len, &s), TALLY_OK);
        ck_assert_uint_eq(s.sender_len, 2);
        ck_assert_mem_eq(s.sender, "n1", 2);
        ck_assert_uint_eq(s.ncounters, t1.ncounters);
        table_init(&t2, 100000, 1);
        merge_sync(&t2, &s);
        assert_tables_equal(&t1, &t2);
        ck_assert_uint_gt(take_dirty(&t2), 0);
        /* Replaying the same message changes nothing. */
        merge_sync(&t2, &s);
        ck_assert_uint_eq(take_dirty(&t2), 0);
        ck_assert_mem_eq(t1.digest, t2.digest, sizeof(t1.digest));
        wire_sync_free(&s);
        sync_writer_free(&w);
        table_free(&t1);
        table_free(&t2);
    }
}
END_TEST

START_TEST(test_sync_writer_reuse)
{
    /* One writer, several messages: each carries only its own dictionaries. */
    rng = 2;
    struct tally_table t1, t2;
    struct wire_sync_writer w = {0};
    random_table(&t1, 300);
    table_init(&t2, 100000, 1);
    const struct tally_counter *c, *tmp;
    int in_msg = 0, messages = 0;
    HASH_ITER(hh, t1.counters, c, tmp)
    {
        ck_assert_int_eq(sync_writer_add(&w, &t1, c), TALLY_OK);
        if (++in_msg == 37 || c->hh.next == NULL) {
            struct wire_sync s;
            ck_assert(!sync_writer_empty(&w));
            size_t estimate = sync_writer_size(&w); /* callers split messages by it */
            ck_assert_int_eq(sync_writer_finish(&w, "n1", 7, (uint64_t)messages + 1), TALLY_OK);
            ck_assert_uint_le(w.out.len, estimate);
            ck_assert(sync_writer_empty(&w));
            ck_assert_int_eq(wire_decode_sync(w.out.data, w.out.len, &s), TALLY_OK);
            ck_assert_uint_eq(s.ncounters, (uint32_t)in_msg);
            merge_sync(&t2, &s);
            wire_sync_free(&s);
            in_msg = 0;
            messages++;
        }
    }
    ck_assert_int_gt(messages, 5);
    assert_tables_equal(&t1, &t2);
    sync_writer_free(&w);
    table_free(&t1);
    table_free(&t2);
}
END_TEST

START_TEST(test_sync_truncations_refused)
{
    rng = 3;
    struct tally_table t;
    struct wire_sync_writer w = {0};
    random_table(&t, 20);
    encode_table(&w, &t, "n1");
    for (size_t len = 0; len < w.out.len; len++) {
        struct wire_sync s;
        uint8_t *copy = malloc(len + 1); /* exact size: ASan sees overreads */
        memcpy(copy, w.out.data, len);
        ck_assert_msg(wire_decode_sync(copy, len, &s) == TALLY_E_WIRE, "prefix %zu of %zu", len,
                      w.out.len);
        free(copy);
    }
    /* Extra bytes after a valid message are refused too. */
    struct wire_sync s;
    wbuf_u8(&w.out, 0);
    ck_assert_int_eq(wire_decode_sync(w.out.data, w.out.len, &s), TALLY_E_WIRE);
    sync_writer_free(&w);
    table_free(&t);
}
END_TEST

/* Everything a decoded message holds is valid, and it merges cleanly. */
static void assert_valid_and_merge(const struct wire_sync *s)
{
    ck_assert_int_eq(node_id_check(s->sender, s->sender_len), TALLY_OK);
    for (uint32_t i = 0; i < s->ncounters; i++)
        ck_assert_int_eq(name_check(s->counters[i].name, s->counters[i].name_len), TALLY_OK);
    for (uint32_t i = 0; i < s->nslots; i++)
        ck_assert(s->slots[i].p <= (uint64_t)TALLY_MAX_SAFE &&
                  s->slots[i].n <= (uint64_t)TALLY_MAX_SAFE);
    for (uint32_t i = 0; i < s->ndevs; i++)
        ck_assert(s->devs[i].total <= (uint64_t)TALLY_MAX_SAFE);
    struct tally_table t;
    table_init(&t, 100000, 1);
    merge_sync(&t, s);
    table_free(&t);
}

START_TEST(test_sync_garbled_bytes)
{
    rng = 4;
    struct tally_table t;
    struct wire_sync_writer w = {0};
    random_table(&t, 10);
    encode_table(&w, &t, "n1");
    int refused = 0;
    uint8_t *copy = malloc(w.out.len);
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, w.out.data, w.out.len);
        int flips = 1 + (int)rnd_below(4);
        for (int f = 0; f < flips; f++)
            copy[rnd_below(w.out.len)] ^= (uint8_t)(1u << rnd_below(8));
        struct wire_sync s;
        int rc = wire_decode_sync(copy, w.out.len, &s);
        if (rc == TALLY_OK) {
            assert_valid_and_merge(&s);
            wire_sync_free(&s);
        } else {
            ck_assert_int_eq(rc, TALLY_E_WIRE);
            refused++;
        }
    }
    ck_assert_int_gt(refused, 0);
    free(copy);
    /* Pure garbage, with and without a valid header. */
    uint8_t buf[512];
    for (int round = 0; round < 20000; round++) {
        size_t len = rnd_below(sizeof(buf));
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rnd();
        if (len >= 4 && round % 2)
            memcpy(buf, "TL\x01\x01", 4);
        struct wire_sync s;
        if (wire_decode_sync(buf, len, &s) == TALLY_OK) {
            assert_valid_and_merge(&s);
            wire_sync_free(&s);
        }
    }
    sync_writer_free(&w);
    table_free(&t);
}
END_TEST

/* Caps this (forked) test process's address space near its current size, so
 * a large allocation fails instead of succeeding quietly. */
static rlim_t cap_address_space(rlim_t extra)
{
    struct rlimit old, lim;
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%ld", &pages), 1);
    fclose(f);
    getrlimit(RLIMIT_AS, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)pages * 4096 + extra;
    setrlimit(RLIMIT_AS, &lim);
    return old.rlim_cur;
}

static void restore_address_space(rlim_t cur)
{
    struct rlimit lim;
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = cur;
    setrlimit(RLIMIT_AS, &lim);
}

START_TEST(test_sync_forged_counts)
{
    /* Each message claims 2^32-1 (or 2^40) entries somewhere and holds a few
     * bytes: refused as malformed (not out-of-memory), with no allocation
     * near what the count claims. */
    static const struct {
        const char *bytes;
        size_t len;
    } forged[] = {
        /* replicas: R = 2^32-1 */
        {MSG("TL\x01\x01\x02n1\xff\xff\xff\xff\x0f\x02n2")},
        /* replicas: R = 2^40 */
        {MSG("TL\x01\x01\x02n1\x80\x80\x80\x80\x80\x20\x00\x00")},
        /* devices: D = 2^32-1 */
        {MSG("TL\x01\x01\x02n1\x00\xff\xff\xff\xff\x0f\x01m")},
        /* counters: C = 2^32-1 */
        {MSG("TL\x01\x01\x02n1\x00\x00\xff\xff\xff\xff\x0f\x01x\x00\x00")},
        /* one counter, S = 2^32-1 slots */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x01x\xff\xff\xff\xff\x0f\x00")},
        /* one counter, E = 2^32-1 devices */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x01x\x00\xff\xff\xff\xff\x0f")},
        /* a varint longer than 64 bits */
        {MSG("TL\x01\x01\x02n1\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f")},
    };
    rlim_t old = cap_address_space(64u << 20);
    for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
        struct wire_sync s;
        ck_assert_msg(wire_decode_sync(forged[i].bytes, forged[i].len, &s) == TALLY_E_WIRE,
                      "forged message %zu", i);
    }
    restore_address_space(old);
}
END_TEST

START_TEST(test_sync_bad_references_and_values)
{
    static const struct {
        const char *bytes;
        size_t len;
        int want;
    } cases[] = {
        /* one replica n1/0, one counter x with slot (r0, 1, 2): valid */
        {MSG("TL\x01\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x00\x01\x02\x00"),
         TALLY_OK},
        /* the slot names replica 1 of 1 */
        {MSG("TL\x01\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x01\x01\x02\x00"),
         TALLY_E_WIRE},
        /* p = 2^53 */
        {MSG("TL\x01\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x00\x80\x80\x80\x80\x80"
             "\x80\x80\x10\x02\x00"),
         TALLY_E_WIRE},
        /* a device maximum naming device 0 of 0 */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x01x\x00\x01\x00\x05"), TALLY_E_WIRE},
        /* counter name "a/b" */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x03"
             "a/b\x00\x00"),
         TALLY_E_WIRE},
        /* empty counter name */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x00\x00\x00"), TALLY_E_WIRE},
        /* sender "n 1" */
        {MSG("TL\x01\x01\x03n 1\x00\x00\x00"), TALLY_E_WIRE},
        /* device id with a newline */
        {MSG("TL\x01\x01\x02n1\x00\x01\x02m\n\x00"), TALLY_E_WIRE},
        /* version 3: unknown */
        {MSG("TL\x03\x01\x02n1\x00\x00\x00"), TALLY_E_WIRE},
        /* version 2, empty */
        {MSG("TL\x02\x01\x02n1\x00\x00\x00"), TALLY_OK},
        /* version 2: counter x, slot (r0, 5, 0), base: deleted 1, reset 0, (r0, 5, 0) */
        {MSG("TL\x02\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x00\x05\x00\x00"
             "\x01\x01\x00\x01\x00\x05\x00\x00"),
         TALLY_OK},
        /* version 2 without the base flag */
        {MSG("TL\x02\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x01\x00\x05\x00\x00"),
         TALLY_E_WIRE},
        /* version 2, base flag 2 */
        {MSG("TL\x02\x01\x02n1\x00\x00\x01\x01x\x00\x00\x02"), TALLY_E_WIRE},
        /* version 2, a base naming replica 1 of 1 */
        {MSG("TL\x02\x01\x02n1\x01\x02n1\0\0\0\0\0\0\0\0\x00\x01\x01x\x00\x00\x01\x01"
             "\x00\x01\x01\x05\x00\x00"),
         TALLY_E_WIRE},
        /* version 2, a base device naming device 0 of 0 */
        {MSG("TL\x02\x01\x02n1\x00\x00\x01\x01x\x00\x00\x01\x00\x00\x00\x01\x00\x05"),
         TALLY_E_WIRE},
        /* version 1 with trailing base bytes: left over */
        {MSG("TL\x01\x01\x02n1\x00\x00\x01\x01x\x00\x00\x00"), TALLY_E_WIRE},
        /* version 0 */
        {MSG("TL\x00\x01\x02n1\x00\x00\x00"), TALLY_E_WIRE},
        /* a DIGEST type byte */
        {MSG("TL\x01\x02\x02n1\x00\x00\x00"), TALLY_E_WIRE},
        /* empty, and valid */
        {MSG("TL\x01\x01\x02n1\x00\x00\x00"), TALLY_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wire_sync s;
        int rc = wire_decode_sync(cases[i].bytes, cases[i].len, &s);
        ck_assert_msg(rc == cases[i].want, "case %zu: got %s", i, tally_strerror(rc));
        if (rc == TALLY_OK)
            wire_sync_free(&s);
    }
    ck_assert_int_eq(wire_peek_type("TL\x06\x01", 4), -1);
    ck_assert_int_eq(wire_peek_type("TL\x05\x01", 4), WIRE_SYNC); /* 5 numbered replicas */
    ck_assert_int_eq(wire_peek_type("TL\x04\x01", 4), WIRE_SYNC); /* 4 added folds */
    ck_assert_int_eq(wire_peek_type("TL\x03\x01", 4), WIRE_SYNC);
    ck_assert_int_eq(wire_peek_type("TL\x02\x01", 4), WIRE_SYNC);
    ck_assert_int_eq(wire_peek_type("TL\x02\x02", 4), WIRE_DIGEST);
    ck_assert_int_eq(wire_peek_type("TL\x03\x02", 4), WIRE_DIGEST); /* 3 numbers to name */
    ck_assert_int_eq(wire_peek_type("TL\x04\x02", 4), WIRE_DIGEST); /* 4 repairs since */
    ck_assert_int_eq(wire_peek_type("TL\x05\x02", 4), WIRE_DIGEST); /* 5 the neighbours heard */
    ck_assert_int_eq(wire_peek_type("TL\x06\x02", 4), WIRE_DIGEST); /* 6 how far heard */
    ck_assert_int_eq(wire_peek_type("TL\x07\x02", 4), -1);
    ck_assert_int_eq(wire_peek_type("TL\x02\x03", 4), WIRE_PRESENCE); /* 2 added the range */
    ck_assert_int_eq(wire_peek_type("TL\x03\x03", 4), WIRE_PRESENCE); /* 3 the listing */
    ck_assert_int_eq(wire_peek_type("TL\x04\x03", 4), WIRE_PRESENCE); /* 4 the carried set */
    ck_assert_int_eq(wire_peek_type("TL\x05\x03", 4), -1);
    ck_assert_int_eq(wire_peek_type("TL\x01", 3), -1);
    ck_assert_int_eq(wire_peek_type("TL\x01\x03", 4), WIRE_PRESENCE);
}
END_TEST

/* ==== DIGEST ==== */

/* A digest's buckets, as every version writes them. */
static void put_buckets(struct wire_buf *b, const uint64_t *digest)
{
    wbuf_varint(b, TALLY_BUCKETS);
    for (unsigned i = 0; i < TALLY_BUCKETS; i++)
        wbuf_u64(b, digest[i]);
}

START_TEST(test_digest_round_trip)
{
    rng = 5;
    struct tally_table t;
    struct wire_buf b = {0};
    static struct wire_digest in, got;
    random_table(&t, 100);
    in.sender = "node-7";
    in.sender_len = 6;
    in.session = 0x1234567890abcdefULL;
    in.seq = 300;
    in.nrequests = 2;
    in.requests[0] = (struct wire_node_ref){"n1", 2, 0, {0}, 0, 0, 0};
    in.requests[1] =
        (struct wire_node_ref){"node-12", 7, 2, {5, 300000}, 70000, 70300, 0xfeedULL << 40};
    memcpy(in.digest, t.digest, sizeof(in.digest));
    in.nhears = 2;
    in.hears[0] = (struct wire_id){"n1", 2};
    in.hears[1] = (struct wire_id){"node-12", 7};
    in.heard[0] = (struct wire_stream){0xabcULL << 40, 1};
    in.heard[1] = (struct wire_stream){7, 1ULL << 40};
    wire_encode_digest(&b, &in);
    ck_assert_int_eq(wire_peek_type(b.data, b.len), WIRE_DIGEST);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    ck_assert_uint_eq(got.sender_len, 6);
    ck_assert_mem_eq(got.sender, "node-7", 6);
    ck_assert_uint_eq(got.session, in.session);
    ck_assert_uint_eq(got.seq, 300);
    ck_assert_uint_eq(got.nrequests, 2);
    ck_assert_mem_eq(got.requests[1].id, "node-12", 7);
    ck_assert_uint_eq(got.requests[0].nnames, 0);
    ck_assert_uint_eq(got.requests[1].nnames, 2); /* numbers to name again (version 3) */
    ck_assert_uint_eq(got.requests[1].names[1], 300000);
    ck_assert_uint_eq(got.requests[0].since, 0); /* all of it: no session sent */
    ck_assert_uint_eq(got.requests[0].session, 0);
    ck_assert_uint_eq(got.requests[1].since, 70000); /* the seqs lacked (version 4) */
    ck_assert_uint_eq(got.requests[1].until, 70300);
    ck_assert_uint_eq(got.requests[1].session, 0xfeedULL << 40);
    ck_assert_mem_eq(got.digest, t.digest, sizeof(got.digest));
    ck_assert_uint_eq(got.nhears, 2); /* the neighbours heard (version 5) */
    ck_assert_mem_eq(got.hears[1].id, "node-12", 7);
    ck_assert_uint_eq(got.hears[1].len, 7);
    ck_assert_uint_eq(got.heard[0].session, 0xabcULL << 40); /* how far (version 6) */
    ck_assert_uint_eq(got.heard[0].seq, 1);
    ck_assert_uint_eq(got.heard[1].session, 7);
    ck_assert_uint_eq(got.heard[1].seq, 1ULL << 40);
    for (size_t len = 0; len < b.len; len++) {
        uint8_t *copy = malloc(len + 1);
        memcpy(copy, b.data, len);
        ck_assert_int_eq(wire_decode_digest(copy, len, &got), TALLY_E_WIRE);
        free(copy);
    }
    b.data[2] = 7; /* a version this node does not know */
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    b.data[2] = 5; /* how far is left over in a version 5 */
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    b.data[2] = 4; /* the neighbours heard are left over in a version 4 */
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    b.data[2] = 6;
    wbuf_u8(&b, 0);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    /* A version 5 digest (neighbours heard, not how far) is still read. */
    in.nhears = 1;
    in.hears[0] = (struct wire_id){"n1", 2};
    wire_encode_digest(&b, &in);
    b.data[2] = 5;
    ck_assert_int_eq(wire_decode_digest(b.data, b.len - 9, &got), TALLY_OK); /* u64 + 1 varint */
    ck_assert_uint_eq(got.nhears, 1);
    ck_assert_uint_eq(got.heard[0].session, 0);
    ck_assert_uint_eq(got.heard[0].seq, 0);
    /* A version 4 digest (no neighbours heard) is still read: it hears none. */
    in.nhears = 0;
    wire_encode_digest(&b, &in);
    b.data[2] = 4;
    ck_assert_int_eq(wire_decode_digest(b.data, b.len - 1, &got), TALLY_OK);
    ck_assert_uint_eq(got.nhears, 0);
    ck_assert_uint_eq(got.requests[1].until, 70300);
    /* More neighbours heard than WIRE_MAX_HEARS are refused. */
    wire_encode_digest(&b, &in);
    b.len--;
    wbuf_varint(&b, WIRE_MAX_HEARS + 1);
    for (int i = 0; i <= WIRE_MAX_HEARS; i++)
        wbuf_str8(&b, "n1", 2);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    /* More numbers than WIRE_MAX_NAMES in one request are refused. */
    in.requests[1].nnames = WIRE_MAX_NAMES;
    wire_encode_digest(&b, &in);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    size_t names_at = 4 + 7 + 8 + 2 + 1 + 3 + 1 + 1 + 8; /* request 1's count of numbers */
    ck_assert_uint_eq(b.data[names_at], WIRE_MAX_NAMES);
    b.data[names_at] = WIRE_MAX_NAMES + 1;
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    /* A version 3 digest (requests without since) is still read: it asks for all. */
    wbuf_reset(&b);
    wbuf_bytes(&b, "TL\x03\x02", 4);
    wbuf_str8(&b, "n1", 2);
    wbuf_u64(&b, 9);
    wbuf_varint(&b, 4);
    wbuf_varint(&b, 1);
    wbuf_str8(&b, "node-7", 6);
    wbuf_varint(&b, 1);
    wbuf_varint(&b, 12);
    put_buckets(&b, t.digest);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    ck_assert_uint_eq(got.requests[0].nnames, 1);
    ck_assert_uint_eq(got.requests[0].names[0], 12);
    ck_assert_uint_eq(got.requests[0].since, 0);
    /* A version 2 digest (requests without numbers) is still read. */
    wbuf_reset(&b);
    wbuf_bytes(&b, "TL\x02\x02", 4);
    wbuf_str8(&b, "n1", 2);
    wbuf_u64(&b, 9);
    wbuf_varint(&b, 4);
    wbuf_varint(&b, 1);
    wbuf_str8(&b, "node-7", 6);
    put_buckets(&b, t.digest);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    ck_assert_uint_eq(got.nrequests, 1);
    ck_assert_uint_eq(got.requests[0].nnames, 0);
    ck_assert_uint_eq(got.seq, 4);
    /* A version 1 digest (no stream, no requests) is still read. */
    wbuf_reset(&b);
    wbuf_bytes(&b, "TL\x01\x02", 4);
    wbuf_str8(&b, "n1", 2);
    put_buckets(&b, t.digest);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_OK);
    ck_assert_uint_eq(got.session, 0);
    ck_assert_uint_eq(got.nrequests, 0);
    ck_assert_mem_eq(got.digest, t.digest, sizeof(got.digest));
    /* A bucket count other than 256 is refused. */
    wbuf_reset(&b);
    wbuf_bytes(&b, "TL\x01\x02", 4);
    wbuf_str8(&b, "n1", 2);
    wbuf_varint(&b, 2);
    wbuf_u64(&b, 1);
    wbuf_u64(&b, 2);
    ck_assert_int_eq(wire_decode_digest(b.data, b.len, &got), TALLY_E_WIRE);
    wbuf_free(&b);
    table_free(&t);
}
END_TEST

/* ==== Messages split to max_bytes (issue 10 #7) ==== */

struct collected {
    struct wire_buf msgs[512];
    size_t n;
};

static void collect(const struct wire_buf *msg, void *ud)
{
    struct collected *col = ud;
    ck_assert_uint_lt(col->n, 512);
    col->msgs[col->n] = (struct wire_buf){0};
    wbuf_bytes(&col->msgs[col->n++], msg->data, msg->len);
}

/* The writer's `full` callback: the message so far becomes the next one. */
static int finish_and_collect(struct wire_sync_writer *w, void *ctx)
{
    struct collected *col = ctx;
    if (sync_writer_empty(w))
        return TALLY_OK;
    int rc = sync_writer_finish(w, "n1", 1, col->n + 1);
    if (rc == TALLY_OK)
        collect(&w->out, col);
    return rc;
}

static void collected_free(struct collected *col)
{
    for (size_t i = 0; i < col->n; i++)
        wbuf_free(&col->msgs[i]);
}

START_TEST(test_sync_split_to_max_bytes)
{
    struct tally_table t1, t2;
    struct tally_counter *big;
    struct collected col = {.n = 0};
    rng = 7;
    random_table(&t1, 300);
    /* One counter whose state alone is about 20 times max_bytes. */
    ck_assert_int_eq(table_get(&t1, "big", 3, TABLE_LOCAL, &big), TALLY_OK);
    for (unsigned i = 0; i < 5000; i++) {
        char id[32];
        uint32_t d;
        int len = snprintf(id, sizeof(id), "device-%05u", i);
        ck_assert_int_eq(table_device(&t1, id, (size_t)len, DEVICE_PEER, &d), TALLY_OK);
        ck_assert_int_eq(table_merge_device(&t1, big, d, 1000 + i, false, &changed), TALLY_OK);
        ck_assert(changed);
    }
    struct wire_sync_writer w = {.max_bytes = 4096, .full = finish_and_collect, .full_ctx = &col};
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t1.counters, c, tmp)
    {
        ck_assert_int_eq(sync_writer_add(&w, &t1, c), TALLY_OK);
    }
    ck_assert_int_eq(finish_and_collect(&w, &col), TALLY_OK);
    ck_assert(sync_writer_empty(&w));
    ck_assert_uint_gt(col.n, 20);
    table_init(&t2, 100000, 1);
    for (size_t i = 0; i < col.n; i++) {
        struct wire_sync ws;
        ck_assert_uint_le(col.msgs[i].len, 4096);
        ck_assert_int_eq(wire_decode_sync(col.msgs[i].data, col.msgs[i].len, &ws), TALLY_OK);
        merge_sync(&t2, &ws);
        wire_sync_free(&ws);
    }
    assert_tables_equal(&t1, &t2);
    collected_free(&col);
    sync_writer_free(&w);
    table_free(&t1);
    table_free(&t2);
}
END_TEST

/* Applies one decoded PRESENCE from origin o with the shipped presence_apply. */
static void apply_presence(struct tally_presence *pr, struct tally_origin *o,
                           const struct wire_buf *msg)
{
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(msg->data, msg->len, &p), TALLY_OK);
    bool taken;
    ck_assert_int_eq(presence_apply(pr, o, &p, &taken), TALLY_OK);
    ck_assert(taken);
    free(p.pages);
}

static void page_name(char *buf, unsigned i)
{
    memset(buf, 'p', 180);
    snprintf(buf + 180, 16, "%05u", i);
}

START_TEST(test_presence_split_to_max_bytes)
{
    struct tally_presence here, there;
    struct collected col = {.n = 0};
    char page[200];
    presence_init(&here, 100000);
    presence_init(&there, 100000);
    for (unsigned i = 0; i < 1500; i++) {
        page_name(page, i);
        ck_assert_int_eq(presence_view(&here, "viewer", page, strlen(page), &changed), TALLY_OK);
        ck_assert(changed);
    }
    struct wire_buf b = {0};
    uint32_t n = presence_announce(&here, "n1", 9, 100, 4096, &b, collect, &col);
    ck_assert_uint_eq(n, col.n);
    ck_assert_uint_gt(n, 50);
    /* Consecutive ranges that cover every hash, numbered one after another. */
    uint64_t next_lo = 0;
    size_t pages = 0;
    for (size_t i = 0; i < col.n; i++) {
        struct wire_presence p;
        ck_assert_uint_le(col.msgs[i].len, 4096);
        ck_assert_int_eq(wire_decode_presence(col.msgs[i].data, col.msgs[i].len, &p), TALLY_OK);
        ck_assert_uint_eq(p.seq, 100 + i);
        ck_assert_uint_eq(p.lo, next_lo);
        next_lo = p.hi + 1;
        ck_assert(i + 1 < col.n || p.hi == UINT64_MAX);
        pages += p.npages;
        free(p.pages);
    }
    ck_assert_uint_eq(pages, 1500);
    struct tally_origin *o = presence_origin(&there, "n1");
    for (size_t i = 0; i < col.n; i++)
        apply_presence(&there, o, &col.msgs[i]);
    for (unsigned i = 0; i < 1500; i += 97) {
        page_name(page, i);
        ck_assert_uint_eq(presence_total(&there, page, strlen(page)), 1);
    }
    /* The viewer leaves every page but one: the next announcement (split
     * again, or not) takes every other page to 0 there. */
    for (unsigned i = 1; i < 1500; i++) {
        page_name(page, i);
        presence_unview(&here, "viewer", page, strlen(page));
    }
    collected_free(&col);
    col.n = 0;
    ck_assert_uint_eq(presence_announce(&here, "n1", 9, 200, 4096, &b, collect, &col), 1);
    apply_presence(&there, o, &col.msgs[0]);
    page_name(page, 0);
    ck_assert_uint_eq(presence_total(&there, page, strlen(page)), 1);
    page_name(page, 700);
    ck_assert_uint_eq(presence_total(&there, page, strlen(page)), 0);
    wbuf_free(&b);
    collected_free(&col);
    presence_free(&here);
    presence_free(&there);
}
END_TEST

static void no_publish(const char *page, size_t len, uint64_t total, void *ud)
{
    (void)page;
    (void)len;
    (void)total;
    (void)ud;
}

/* The one decoded PRESENCE of col's message i covers [hash(page), hash(page)]
 * alone, with seq, and lists page with count n (n == 0: lists nothing). */
static void assert_change_alone(const struct collected *col, size_t i, uint64_t seq,
                                const char *page, uint64_t n)
{
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(col->msgs[i].data, col->msgs[i].len, &p), TALLY_OK);
    uint64_t h = presence_hash(page, strlen(page));
    ck_assert_uint_eq(p.seq, seq);
    ck_assert_uint_eq(p.lo, h);
    ck_assert_uint_eq(p.hi, h);
    ck_assert_uint_eq(p.npages, n > 0);
    if (n) {
        ck_assert_uint_eq(p.pages[0].len, strlen(page));
        ck_assert(memcmp(p.pages[0].page, page, p.pages[0].len) == 0);
        ck_assert_uint_eq(p.pages[0].count, n);
    }
    ck_assert_uint_lt(col->msgs[i].len, 100);
    wire_presence_free(&p);
}

static uint64_t hash_of_msg(const struct wire_buf *msg)
{
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(msg->data, msg->len, &p), TALLY_OK);
    uint64_t h = p.lo;
    wire_presence_free(&p);
    return h;
}

/* Three changes among 1,000 pages: a page left (and was freed), one gained
 * a viewer, one is new. Each goes alone, in hash order, and a receiver of
 * them holds what a receiver of the full announcement holds. */
START_TEST(test_presence_changes_alone)
{
    struct tally_presence here, there, full;
    struct collected col = {.n = 0};
    struct wire_buf b = {0};
    char page[200];
    presence_init(&here, 100000);
    presence_init(&there, 100000);
    presence_init(&full, 100000);
    for (unsigned i = 0; i < 1000; i++) {
        snprintf(page, sizeof(page), "page-%u", i);
        ck_assert_int_eq(presence_view(&here, "v1", page, strlen(page), &changed), TALLY_OK);
    }
    ck_assert_uint_eq(presence_announce(&here, "n1", 9, 100, 4096, &b, collect, &col), 4);
    struct tally_origin *ot = presence_origin(&there, "n1"), *of = presence_origin(&full, "n1");
    for (size_t i = 0; i < col.n; i++)
        apply_presence(&there, ot, &col.msgs[i]);
    collected_free(&col);
    col.n = 0;
    /* Nothing changed since: nothing to send alone. */
    ck_assert_uint_eq(presence_announce_changes(&here, "n1", 9, 200, &b, collect, &col), 0);
    presence_unview(&here, "v1", "page-5", 6);
    ck_assert_int_eq(presence_view(&here, "v2", "page-7", 6, &changed), TALLY_OK);
    ck_assert_int_eq(presence_view(&here, "v2", "new", 3, &changed), TALLY_OK);
    /* The same page changed again and back counts once. */
    ck_assert_int_eq(presence_view(&here, "v3", "page-7", 6, &changed), TALLY_OK);
    presence_unview(&here, "v3", "page-7", 6);
    presence_flush(&here, 0, 0, no_publish, NULL); /* page-5 is freed here */
    ck_assert_uint_eq(presence_total(&here, "page-5", 6), 0);
    ck_assert_uint_eq(presence_announce_changes(&here, "n1", 9, 200, &b, collect, &col), 3);
    ck_assert(!here.local_changed);
    const char *names[3] = {"page-5", "page-7", "new"};
    uint64_t counts[3] = {0, 2, 1};
    for (size_t i = 0; i < 3; i++) {
        size_t at = 0; /* its place among the three, by hash */
        uint64_t h = presence_hash(names[i], strlen(names[i]));
        for (size_t j = 0; j < 3; j++)
            at += presence_hash(names[j], strlen(names[j])) < h;
        ck_assert_uint_eq(hash_of_msg(&col.msgs[at]), h);
        assert_change_alone(&col, at, 200 + at, names[i], counts[i]);
    }
    for (size_t i = 0; i < col.n; i++)
        apply_presence(&there, ot, &col.msgs[i]);
    collected_free(&col);
    col.n = 0;
    ck_assert_uint_eq(presence_announce(&here, "n1", 9, 300, 4096, &b, collect, &col), 4);
    for (size_t i = 0; i < col.n; i++)
        apply_presence(&full, of, &col.msgs[i]);
    for (unsigned i = 0; i < 1000; i++) {
        snprintf(page, sizeof(page), "page-%u", i);
        uint64_t want = i == 5 ? 0 : i == 7 ? 2 : 1;
        ck_assert_uint_eq(presence_total(&there, page, strlen(page)), want);
        ck_assert_uint_eq(presence_total(&full, page, strlen(page)), want);
    }
    ck_assert_uint_eq(presence_total(&there, "new", 3), 1);
    ck_assert_uint_eq(presence_total(&full, "new", 3), 1);
    wbuf_free(&b);
    collected_free(&col);
    presence_free(&here);
    presence_free(&there);
    presence_free(&full);
}
END_TEST

/* A node of few pages, or changes that are a large part of its pages, are
 * announced in full (presence_announce_changes sends nothing); a full
 * announcement starts the changes again from none. */
START_TEST(test_presence_changes_in_full_when_many)
{
    struct tally_presence here;
    struct collected col = {.n = 0};
    struct wire_buf b = {0};
    char page[32];
    presence_init(&here, 100000);
    for (unsigned i = 0; i < PRESENCE_CHANGES_MIN_PAGES - 1; i++) {
        snprintf(page, sizeof(page), "page-%u", i);
        ck_assert_int_eq(presence_view(&here, "v1", page, strlen(page), &changed), TALLY_OK);
    }
    presence_announce(&here, "n1", 9, 1, 4096, &b, collect, &col);
    ck_assert_int_eq(presence_view(&here, "v2", "page-1", 6, &changed), TALLY_OK);
    ck_assert_uint_eq(presence_announce_changes(&here, "n1", 9, 10, &b, collect, &col), 0);
    ck_assert(here.local_changed); /* still owed, in full */
    for (unsigned i = PRESENCE_CHANGES_MIN_PAGES; i < 400; i++) {
        snprintf(page, sizeof(page), "page-%u", i);
        ck_assert_int_eq(presence_view(&here, "v1", page, strlen(page), &changed), TALLY_OK);
    }
    /* 337 changed of 399: too many. */
    ck_assert_uint_eq(presence_announce_changes(&here, "n1", 9, 10, &b, collect, &col), 0);
    presence_announce(&here, "n1", 9, 10, 4096, &b, collect, &col);
    ck_assert(!here.local_changed);
    for (unsigned i = 0; i < 60; i++) {
        snprintf(page, sizeof(page), "page-%u", i);
        presence_unview(&here, "v1", page, strlen(page));
    }
    /* 60 changed of 340 (v2 still views page-1): alone, one message each. */
    size_t before = col.n;
    ck_assert_uint_eq(presence_announce_changes(&here, "n1", 9, 20, &b, collect, &col), 60);
    ck_assert_uint_eq(col.n - before, 60);
    wbuf_free(&b);
    collected_free(&col);
    presence_free(&here);
}
END_TEST

/* Random views and leaves among 500 pages, announced after each round as
 * plugin.c does (alone when presence_announce_changes takes them, else in
 * full) to one receiver and in full to another: both hold the same counts,
 * which are ours. */
START_TEST(test_presence_changes_match_full)
{
    struct tally_presence here, there, full;
    struct wire_buf b = {0};
    char page[32], client[16];
    uint64_t seq = 1;
    unsigned alone = 0;
    rng = 8;
    presence_init(&here, 100000);
    presence_init(&there, 100000);
    presence_init(&full, 100000);
    struct tally_origin *ot = presence_origin(&there, "n1"), *of = presence_origin(&full, "n1");
    for (unsigned round = 0; round < 300; round++) {
        unsigned ops = round < 5 ? 400 : 1 + (unsigned)rnd_below(20);
        for (unsigned k = 0; k < ops; k++) {
            snprintf(page, sizeof(page), "p%u", (unsigned)rnd_below(500));
            snprintf(client, sizeof(client), "c%u", (unsigned)rnd_below(3));
            if (rnd_below(2))
                presence_unview(&here, client, page, strlen(page));
            else
                ck_assert_int_eq(presence_view(&here, client, page, strlen(page), &changed),
                                 TALLY_OK);
        }
        presence_flush(&here, 0, 0, no_publish, NULL);
        struct collected col = {.n = 0};
        uint32_t n = presence_announce_changes(&here, "n1", 9, seq, &b, collect, &col);
        alone += n > 0;
        if (!n)
            n = presence_announce(&here, "n1", 9, seq, 4096, &b, collect, &col);
        seq += n;
        for (size_t i = 0; i < col.n; i++)
            apply_presence(&there, ot, &col.msgs[i]);
        collected_free(&col);
        col.n = 0;
        n = presence_announce(&here, "n1", 9, seq, 4096, &b, collect, &col);
        seq += n;
        for (size_t i = 0; i < col.n; i++)
            apply_presence(&full, of, &col.msgs[i]);
        collected_free(&col);
        for (unsigned i = 0; i < 500; i++) {
            snprintf(page, sizeof(page), "p%u", i);
            size_t len = strlen(page);
            uint64_t want = presence_total(&here, page, len);
            ck_assert_uint_eq(presence_total(&there, page, len), want);
            ck_assert_uint_eq(presence_total(&full, page, len), want);
        }
    }
    ck_assert_uint_gt(alone, 200);
    wbuf_free(&b);
    presence_free(&here);
    presence_free(&there);
    presence_free(&full);
}
END_TEST

START_TEST(test_presence_page_outside_its_range_refused)
{
    struct wire_buf b = {0};
    struct wire_presence p;
    uint64_t h = presence_hash("x", 1);
    wire_presence_begin(&b, "n2", 1, 1, h, h, 1);
    wire_presence_page(&b, "x", 1, 3);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_OK);
    free(p.pages);
    wire_presence_begin(&b, "n2", 1, 1, h + 1, UINT64_MAX, 1);
    wire_presence_page(&b, "x", 1, 3);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    /* lo > hi: no range, only from version 3 on, and then with no page */
    wire_presence_begin(&b, "n2", 1, 1, 5, 4, 0);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_OK);
    ck_assert_uint_eq(p.npages, 0);
    wire_presence_free(&p);
    b.data[2] = 2;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    wire_presence_begin(&b, "n2", 1, 1, 5, 4, 1);
    wire_presence_page(&b, "x", 1, 3);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    wbuf_free(&b);
}
END_TEST

/* wbuf_printf wrote at most 255 bytes and dropped the rest without a word. */
START_TEST(test_wbuf_printf_never_truncates)
{
    struct wire_buf b = {0};
    char long_id[1001];
    memset(long_id, 'n', 1000);
    long_id[1000] = '\0';
    wbuf_str(&b, "{");
    wbuf_printf(&b, "\"peer\":\"%s\",\"n\":%d}", long_id, 42);
    ck_assert(!b.failed);
    ck_assert_uint_eq(b.len, 1 + 8 + 1000 + 9);
    ck_assert_mem_eq(b.data + b.len - 9, "\",\"n\":42}", 9);
    cJSON *root = cJSON_ParseWithLength((const char *)b.data, b.len);
    ck_assert_ptr_nonnull(root);
    ck_assert_uint_eq(strlen(cJSON_GetObjectItem(root, "peer")->valuestring), 1000);
    cJSON_Delete(root);
    wbuf_free(&b);
}
END_TEST

/* ==== PRESENCE ==== */

START_TEST(test_presence_round_trip)
{
    struct wire_buf b = {0};
    static const char *pages[] = {"dashboard", "caf\xc3\xa9", "p3"};
    static const uint64_t counts[] = {3, 0, 4294967295u};
    wire_presence_begin(&b, "n2", 0x1122334455667788ULL, 42, 0, UINT64_MAX, 3);
    for (int i = 0; i < 3; i++)
        wire_presence_page(&b, pages[i], strlen(pages[i]), counts[i]);
    ck_assert_int_eq(wire_peek_type(b.data, b.len), WIRE_PRESENCE);
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_OK);
    ck_assert_uint_eq(p.origin_len, 2);
    ck_assert_mem_eq(p.origin, "n2", 2);
    ck_assert_uint_eq(p.incarnation, 0x1122334455667788ULL);
    ck_assert_uint_eq(p.seq, 42);
    ck_assert_uint_eq(p.npages, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(p.pages[i].len, strlen(pages[i]));
        ck_assert_mem_eq(p.pages[i].page, pages[i], p.pages[i].len);
        ck_assert_uint_eq(p.pages[i].count, counts[i]);
    }
    free(p.pages);
    for (size_t len = 0; len < b.len; len++) {
        uint8_t *copy = malloc(len + 1);
        memcpy(copy, b.data, len);
        ck_assert_int_eq(wire_decode_presence(copy, len, &p), TALLY_E_WIRE);
        ck_assert_ptr_null(p.pages);
        free(copy);
    }
    /* Version 1 has no range: it covers every page. */
    size_t at = 4 + 1 + 2 + 16; /* header, "n2", incarnation, seq */
    uint8_t v1[256];
    ck_assert_uint_le(b.len - 16, sizeof(v1));
    memcpy(v1, b.data, at);
    memcpy(v1 + at, b.data + at + 16, b.len - at - 16);
    v1[2] = 1;
    ck_assert_int_eq(wire_decode_presence(v1, b.len - 16, &p), TALLY_OK);
    ck_assert(p.lo == 0 && p.hi == UINT64_MAX && p.npages == 3);
    free(p.pages);
    b.data[2] = 5;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    wbuf_free(&b);
}
END_TEST

/* Version 3: a hub's listing of its edges, and its wants, after the pages;
 * every cut refused, and no listing in a version 2. */
START_TEST(test_presence_listing_round_trip)
{
    struct wire_buf b = {0};
    struct wire_presence_edge edges[] = {{"e1", 2, 7, 1u << 20, 0xfeedULL, 150},
                                         {"edge-2", 6, UINT64_MAX, 0, 0, 0}};
    wire_presence_begin(&b, "hub", 9, 10, 0, UINT64_MAX, 1);
    wire_presence_page(&b, "home", 4, 2);
    wire_presence_count(&b, 2);
    for (int i = 0; i < 2; i++)
        wire_presence_edge(&b, &edges[i]);
    wire_presence_count(&b, 1);
    wire_presence_want(&b, "e9", 2);
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_OK);
    ck_assert_uint_eq(p.npages, 1);
    ck_assert_uint_eq(p.nlisted, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_mem_eq(p.listed[i].id, edges[i].id, edges[i].len);
        ck_assert_uint_eq(p.listed[i].len, edges[i].len);
        ck_assert_uint_eq(p.listed[i].incarnation, edges[i].incarnation);
        ck_assert_uint_eq(p.listed[i].seq, edges[i].seq);
        ck_assert_uint_eq(p.listed[i].digest, edges[i].digest);
        ck_assert_uint_eq(p.listed[i].age_ms, edges[i].age_ms);
    }
    ck_assert_uint_eq(p.nwants, 1);
    ck_assert_mem_eq(p.wants[0].id, "e9", 2);
    wire_presence_free(&p);
    for (size_t len = 0; len < b.len; len++) {
        uint8_t *copy = malloc(len + 1);
        memcpy(copy, b.data, len);
        /* cut right after the pages (header, "hub", four u64, one page):
         * a message without a listing */
        int want = len == 4 + 4 + 32 + 1 + 5 + 1 ? TALLY_OK : TALLY_E_WIRE;
        ck_assert_int_eq(wire_decode_presence(copy, len, &p), want);
        wire_presence_free(&p);
        free(copy);
    }
    b.data[2] = 2;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    /* an edge id that is not a node id */
    wire_presence_begin(&b, "hub", 9, 10, 1, 0, 0);
    wire_presence_count(&b, 1);
    wire_presence_edge(&b, &(struct wire_presence_edge){"e/1", 3, 1, 1, 1, 1});
    wire_presence_count(&b, 0);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    wbuf_free(&b);
}
END_TEST

/* Version 4: a hub's carried set after its wants; every cut refused but at
 * the ends of the pages and of the wants, unknown flags refused, and no set
 * in a version 3. */
START_TEST(test_presence_carried_set_round_trip)
{
    struct wire_buf b = {0};
    wire_presence_begin(&b, "hub", 9, 10, 1, 0, 0);
    wire_presence_count(&b, 1);
    wire_presence_edge(&b, &(struct wire_presence_edge){"e1", 2, 7, 3, 0xfeedULL, 150});
    wire_presence_count(&b, 0);
    size_t wants_end = b.len;
    struct wire_presence set = {.listing_flags = WIRE_LISTING_LAST | WIRE_LISTING_FULL,
                                .listing_stamp = 1ULL << 40,
                                .carried_digest = 0xdeadbeefcafeULL,
                                .ncarried = 50000,
                                .carried_age_ms = 4321};
    wire_presence_carried(&b, &set);
    struct wire_presence p;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_OK);
    ck_assert(p.has_carried);
    ck_assert_uint_eq(p.listing_flags, WIRE_LISTING_LAST | WIRE_LISTING_FULL);
    ck_assert_uint_eq(p.listing_stamp, set.listing_stamp);
    ck_assert_uint_eq(p.carried_digest, set.carried_digest);
    ck_assert_uint_eq(p.ncarried, 50000);
    ck_assert_uint_eq(p.carried_age_ms, 4321);
    ck_assert_uint_eq(p.nlisted, 1);
    wire_presence_free(&p);
    for (size_t len = 0; len < b.len; len++) {
        uint8_t *copy = malloc(len + 1); /* so that ASan sees a read past the end */
        memcpy(copy, b.data, len);
        int want = len == 4 + 4 + 32 + 1 || len == wants_end ? TALLY_OK : TALLY_E_WIRE;
        ck_assert_int_eq(wire_decode_presence(copy, len, &p), want);
        ck_assert(!p.has_carried);
        wire_presence_free(&p);
        free(copy);
    }
    b.data[2] = 3;
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    b.data[2] = 4;
    b.data[wants_end] = 4; /* a flag this version does not know */
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    wbuf_free(&b);
}
END_TEST

START_TEST(test_presence_refusals)
{
    struct wire_buf b = {0};
    struct wire_presence p;
    /* A count above 2^32-1 */
    wire_presence_begin(&b, "n2", 1, 1, 0, UINT64_MAX, 1);
    wire_presence_page(&b, "x", 1, 4294967296ULL);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    /* A bad page name */
    wire_presence_begin(&b, "n2", 1, 1, 0, UINT64_MAX, 1);
    wire_presence_page(&b, "$x", 2, 1);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    /* A bad origin */
    wire_presence_begin(&b, "n/2", 1, 1, 0, UINT64_MAX, 0);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    /* A forged page count */
    rlim_t old = cap_address_space(64u << 20);
    wire_presence_begin(&b, "n2", 1, 1, 0, UINT64_MAX, 0xffffffffu);
    wire_presence_page(&b, "x", 1, 1);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &p), TALLY_E_WIRE);
    restore_address_space(old);
    /* Garbled bytes: refused or valid. */
    rng = 6;
    wire_presence_begin(&b, "n2", 1, 1, 0, UINT64_MAX, 2);
    wire_presence_page(&b, "abc", 3, 5);
    wire_presence_page(&b, "def", 3, 500);
    uint8_t copy[64];
    ck_assert_uint_le(b.len, sizeof(copy));
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, b.data, b.len);
        copy[rnd_below(b.len)] ^= (uint8_t)(1u << rnd_below(8));
        if (wire_decode_presence(copy, b.len, &p) == TALLY_OK) {
            ck_assert_int_eq(node_id_check(p.origin, p.origin_len), TALLY_OK);
            for (uint32_t i = 0; i < p.npages; i++) {
                ck_assert_int_eq(name_check(p.pages[i].page, p.pages[i].len), TALLY_OK);
                ck_assert_uint_le(p.pages[i].count, UINT32_MAX);
            }
            free(p.pages);
        }
    }
    wbuf_free(&b);
}
END_TEST

/* ==== Text: decimals and the state document ==== */

START_TEST(test_fmt_i64_matches_printf)
{
    const int64_t fixed[] = {
        0, 1, -1, 9, 10, -10, INT64_MAX, INT64_MIN, TALLY_MAX_SAFE, -TALLY_MAX_SAFE};
    char mine[22], ref[32];
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) + 100000; i++) {
        int64_t v =
            i < sizeof(fixed) / sizeof(fixed[0]) ? fixed[i] : (int64_t)(rnd() >> rnd_below(64));
        if (i % 2 && v != INT64_MIN)
            v = -v;
        size_t n = fmt_i64(mine, v);
        mine[n] = 0;
        snprintf(ref, sizeof(ref), "%" PRId64, v);
        ck_assert_str_eq(mine, ref);
    }
}
END_TEST

static int64_t json_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", key);
    return (int64_t)v->valuedouble;
}

START_TEST(test_state_document)
{
    struct tally_table t;
    table_init(&t, 10, 10);
    struct tally_counter *c;
    const char name[] = "say \"hi\" \\ \u00e9t\u00e9";
    uint32_t a1, a2, b, dev;
    ck_assert_int_eq(table_get(&t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_replica(&t, "a", strlen("a"), 1, &a1), TALLY_OK);
    ck_assert_int_eq(table_replica(&t, "a", strlen("a"), 2, &a2), TALLY_OK);
    ck_assert_int_eq(table_replica(&t, "b\"", strlen("b\""), 1, &b), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "meter-\"7", 8, DEVICE_LOCAL, &dev), TALLY_OK);
    ck_assert_int_eq(table_add(&t, c, a1, TALLY_MAX_SAFE - 5, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&t, c, a2, 5, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&t, c, a2, -3, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_add(&t, c, b, -(TALLY_MAX_SAFE - 3), &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(table_merge_device(&t, c, dev, 1234, true, &changed), TALLY_OK);
    ck_assert(changed);
    struct tally_sums s;
    counter_sums(c, &s);
    struct wire_buf out = {0};
    const struct state_page all = {65536, 0, UINT32_MAX};
    counter_state_json(&out, &t, c, &s, "node-\\x", 1795828380135ULL, &all);
    ck_assert(!out.failed);
    cJSON *doc = cJSON_ParseWithLength((const char *)out.data, out.len);
    ck_assert_msg(doc, "not JSON: %.*s", (int)out.len, (const char *)out.data);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "name")->valuestring, name);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "node")->valuestring, "node-\\x");
    ck_assert_int_eq(json_int(doc, "p"), TALLY_MAX_SAFE);
    ck_assert_int_eq(json_int(doc, "n"), TALLY_MAX_SAFE);
    ck_assert_int_eq(json_int(doc, "devices_total"), 1234);
    ck_assert_int_eq(json_int(doc, "value"), s.value);
    ck_assert_int_eq(json_int(doc, "updated_ms"), 1795828380135LL);
    const cJSON *nodes = cJSON_GetObjectItem(doc, "nodes");
    ck_assert_int_eq(cJSON_GetArraySize(nodes), 2);
    /* a node's two incarnations are one entry */
    ck_assert_int_eq(json_int(cJSON_GetObjectItem(nodes, "a"), "p"), TALLY_MAX_SAFE);
    ck_assert_int_eq(json_int(cJSON_GetObjectItem(nodes, "a"), "n"), 3);
    ck_assert_int_eq(json_int(cJSON_GetObjectItem(nodes, "b\""), "n"), TALLY_MAX_SAFE - 3);
    ck_assert_int_eq(json_int(cJSON_GetObjectItem(doc, "devices"), "meter-\"7"), 1234);
    /* a small counter is listed whole */
    ck_assert_int_eq(json_int(doc, "nodes_omitted"), 0);
    ck_assert_int_eq(json_int(doc, "devices_omitted"), 0);
    cJSON_Delete(doc);
    wbuf_free(&out);
    table_free(&t);
}
END_TEST

Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("sync");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sync_round_trip);
    tcase_add_test(tc, test_sync_writer_reuse);
    tcase_add_test(tc, test_sync_split_to_max_bytes);
    tcase_add_test(tc, test_sync_truncations_refused);
    tcase_add_test(tc, test_sync_garbled_bytes);
    tcase_add_test(tc, test_sync_forged_counts);
    tcase_add_test(tc, test_sync_bad_references_and_values);
    suite_add_tcase(s, tc);
    tc = tcase_create("digest_presence");
    tcase_add_test(tc, test_digest_round_trip);
    tcase_add_test(tc, test_presence_round_trip);
    tcase_add_test(tc, test_presence_listing_round_trip);
    tcase_add_test(tc, test_presence_carried_set_round_trip);
    tcase_add_test(tc, test_presence_refusals);
    tcase_add_test(tc, test_presence_split_to_max_bytes);
    tcase_add_test(tc, test_presence_changes_alone);
    tcase_add_test(tc, test_presence_changes_in_full_when_many);
    tcase_add_test(tc, test_presence_changes_match_full);
    tcase_add_test(tc, test_presence_page_outside_its_range_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("text");
    tcase_add_test(tc, test_fmt_i64_matches_printf);
    tcase_add_test(tc, test_wbuf_printf_never_truncates);
    tcase_add_test(tc, test_state_document);
    suite_add_tcase(s, tc);
    return s;
}
