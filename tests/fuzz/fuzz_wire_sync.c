/*
 * fuzz_wire_sync.c - a replication message from a hostile or broken peer.
 * wire_decode_sync must refuse it or return only valid data; that data is
 * merged into a table by repl_apply_sync, as the plugin does, and a replay
 * must not move the digest. The table's deltas, sent by repl_send_deltas and
 * merged into a fresh table, must give the same digest, and so must a repair
 * since the first of them (repl_send_buckets). The same bytes go
 * through wire_decode_digest and repl_digest_seen too.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

/* Every counter's value in range, and no base (reset.c) taking more than
 * its slots hold. */
static void check_counters(const struct tally_table *t)
{
    for (const struct tally_counter *c = t->counters; c; c = c->hh.next) {
        struct tally_sums raw, net;
        counter_sums(c, &raw);
        table_sums(t, c, &net);
        check(net.p <= raw.p && net.n <= raw.n && net.devices <= raw.devices);
        check(net.p >= 0 && net.n >= 0 && net.devices >= 0);
        int64_t v = table_value(t, c);
        check(v >= -TALLY_MAX_SAFE && v <= TALLY_MAX_SAFE);
    }
}

/* A neighbour that takes a stream of SYNCs: a replica the stream named
 * once comes by its number alone after (version 5). */
struct receiver {
    struct tally_table t;
    struct repl r;
    uint16_t k;
};

static void apply_message(const struct wire_buf *msg, void *ctx)
{
    struct receiver *into = ctx;
    struct wire_sync s;
    check(wire_decode_sync(msg->data, msg->len, &s) == TALLY_OK);
    check(repl_apply_sync(&into->r, &into->t, NULL, &s, into->k) == TALLY_OK);
    check(into->r.unnamed == 0);
    wire_sync_free(&s);
}

static void round_trip(struct tally_table *t)
{
    struct wire_sync_writer w = {0};
    static struct receiver again;
    struct repl r;
    uint16_t a, b;
    table_init(&again.t, 1u << 20, 1);
    repl_init(&again.r, 9);
    check(repl_neighbour(&again.r, "fuzz", &again.k) == TALLY_OK);
    repl_init(&r, 5); /* two neighbours: what one taught is owed to the other */
    check(repl_neighbour(&r, "peer", &a) == TALLY_OK && repl_neighbour(&r, "other", &b) == 0);
    struct repl_out out = {"fuzz", 4096, apply_message, &again, false};
    while (table_repl_pending(t))
        repl_send_deltas(&r, t, &w, &out, 1000);
    check(memcmp(again.t.digest, t->digest, sizeof(t->digest)) == 0);
    /* A repair since the stream's first message holds all it carried. */
    static struct receiver fresh;
    uint64_t all[TALLY_BUCKETS / 64];
    memset(all, 0xff, sizeof(all));
    table_init(&fresh.t, 1u << 20, 1);
    repl_init(&fresh.r, 9);
    check(repl_neighbour(&fresh.r, "fuzz", &fresh.k) == TALLY_OK);
    struct repl_out one = {"fuzz", 4096, apply_message, &fresh, true};
    if (r.seq)
        repl_send_buckets(&r, t, &w, &one, all, &(struct repl_span){1, r.seq});
    check(memcmp(fresh.t.digest, again.t.digest, sizeof(t->digest)) == 0);
    repl_free(&r);
    repl_free(&again.r);
    table_free(&again.t);
    repl_free(&fresh.r);
    table_free(&fresh.t);
    sync_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_sync s;
    struct repl r;
    uint16_t k;
    repl_init(&r, 3);
    check(repl_neighbour(&r, "peer", &k) == TALLY_OK);
    int rc = wire_decode_sync(data, size, &s);
    if (rc == TALLY_OK) {
        struct tally_table t;
        uint64_t once[TALLY_BUCKETS];
        check(node_id_check(s.sender, s.sender_len) == TALLY_OK);
        table_init(&t, 1u << 20, 1);
        check(repl_apply_sync(&r, &t, NULL, &s, k) == TALLY_OK);
        check_counters(&t);
        memcpy(once, t.digest, sizeof(once));
        check(repl_apply_sync(&r, &t, NULL, &s, k) == TALLY_OK); /* a replay changes nothing */
        check(memcmp(once, t.digest, sizeof(once)) == 0);
        round_trip(&t);
        table_free(&t);
        wire_sync_free(&s);
    } else {
        check(rc == TALLY_E_WIRE);
    }
    static struct wire_digest d;
    static const uint64_t ours[TALLY_BUCKETS];
    uint64_t dump[TALLY_BUCKETS / 64];
    if (wire_decode_digest(data, size, &d) == TALLY_OK) {
        check(node_id_check(d.sender, d.sender_len) == TALLY_OK);
        check(d.nrequests <= WIRE_MAX_REQUESTS && d.nhears <= WIRE_MAX_HEARS);
        for (uint32_t i = 0; i < d.nhears; i++)
            check(node_id_check(d.hears[i].id, d.hears[i].len) == TALLY_OK);
        struct repl_span span;
        repl_heard(&r, k, 1);
        check(repl_digest_seen(&r, k, &d, ours, "fuzz", dump, &span) <= TALLY_BUCKETS);
        /* a repair never reaches past our stream */
        check(span.since <= span.until && span.until <= r.seq);
        /* what it says it hears, once we no longer hear it (rule 2a): our
         * DIGEST lists nobody we do not hear */
        static struct wire_digest ask;
        repl_hearing(&r, 10000, 3000);
        repl_digest(&r, &ask, "fuzz", ours);
        check(ask.nhears == 0);
    }
    repl_free(&r);
    return 0;
}
