/*
 * fuzz_wire_sync.c - a replication message from a hostile or broken peer.
 * wire_decode_sync must refuse it or return only valid data; that data is
 * merged into a table as plugin.c does, and the table, encoded again and
 * decoded into a fresh table, must give the same digest. The same bytes go
 * through wire_decode_digest too.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

/* Merges a counter's base (reset.c); never takes more than the slots hold. */
static void merge_base(struct tally_table *t, const struct wire_sync *s,
                       const struct wire_sync_counter *wc, struct tally_counter *c,
                       const uint32_t *reps, const uint32_t *devs)
{
    check(wc->first_base_slot + wc->nbase_slots <= s->nbase_slots &&
          wc->first_base_dev + wc->nbase_devs <= s->nbase_devs);
    check(table_merge_stamps(t, c, wc->deleted, wc->reset) >= 0);
    for (uint32_t k = 0; k < wc->nbase_slots; k++) {
        const struct wire_sync_slot *b = &s->base_slots[wc->first_base_slot + k];
        check(b->replica_ref < s->nreplicas);
        check(table_merge_base_slot(t, c, reps[b->replica_ref], b->p, b->n) >= 0);
    }
    for (uint32_t k = 0; k < wc->nbase_devs; k++) {
        const struct wire_sync_dev *d = &s->base_devs[wc->first_base_dev + k];
        check(d->device_ref < s->ndevices);
        check(table_merge_base_device(t, c, devs[d->device_ref], d->total) >= 0);
    }
    struct tally_sums raw, net;
    counter_sums(c, &raw);
    table_sums(t, c, &net);
    check(net.p <= raw.p && net.n <= raw.n && net.devices <= raw.devices);
    check(net.p >= 0 && net.n >= 0 && net.devices >= 0);
}

/* Merges s into t; every step must succeed on a decoded message. */
static void merge(struct tally_table *t, const struct wire_sync *s)
{
    uint32_t *reps = calloc(s->nreplicas + 1, sizeof(*reps));
    uint32_t *devs = calloc(s->ndevices + 1, sizeof(*devs));
    check(reps && devs);
    for (uint32_t i = 0; i < s->nreplicas; i++) {
        char node[TALLY_NODE_ID_MAX + 1];
        check(s->replicas[i].len <= TALLY_NODE_ID_MAX);
        memcpy(node, s->replicas[i].node_id, s->replicas[i].len);
        node[s->replicas[i].len] = '\0';
        check(table_replica(t, node, s->replicas[i].incarnation, &reps[i]) == TALLY_OK);
    }
    for (uint32_t i = 0; i < s->ndevices; i++)
        check(table_device(t, s->devices[i].id, s->devices[i].len, DEVICE_PEER, &devs[i]) ==
              TALLY_OK);
    for (uint32_t i = 0; i < s->ncounters; i++) {
        const struct wire_sync_counter *wc = &s->counters[i];
        struct tally_counter *c;
        check(name_check(wc->name, wc->name_len) == TALLY_OK);
        check(table_get(t, wc->name, wc->name_len, &c) == TALLY_OK);
        check(wc->first_slot + wc->nslots <= s->nslots && wc->first_dev + wc->ndevs <= s->ndevs);
        for (uint32_t k = 0; k < wc->nslots; k++) {
            const struct wire_sync_slot *sl = &s->slots[wc->first_slot + k];
            check(sl->replica_ref < s->nreplicas);
            check(table_merge_slot(t, c, reps[sl->replica_ref], sl->p, sl->n) >= 0);
        }
        for (uint32_t k = 0; k < wc->ndevs; k++) {
            const struct wire_sync_dev *d = &s->devs[wc->first_dev + k];
            check(d->device_ref < s->ndevices);
            check(table_merge_device(t, c, devs[d->device_ref], d->total, false) >= 0);
        }
        if (wc->based)
            merge_base(t, s, wc, c, reps, devs);
        int64_t v = table_value(t, c);
        check(v >= -TALLY_MAX_SAFE && v <= TALLY_MAX_SAFE);
    }
    free(reps);
    free(devs);
}

static void round_trip(const struct tally_table *t)
{
    struct wire_sync_writer w = {0};
    struct wire_sync s;
    struct tally_table again;
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        check(sync_writer_add(&w, t, c) == TALLY_OK);
    }
    check(sync_writer_finish(&w, "fuzz") == TALLY_OK);
    check(wire_decode_sync(w.out.data, w.out.len, &s) == TALLY_OK);
    table_init(&again, 1u << 20, 1);
    merge(&again, &s);
    check(memcmp(again.digest, t->digest, sizeof(t->digest)) == 0);
    table_free(&again);
    wire_sync_free(&s);
    sync_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_sync s;
    int rc = wire_decode_sync(data, size, &s);
    if (rc == TALLY_OK) {
        struct tally_table t;
        check(node_id_check(s.sender, s.sender_len) == TALLY_OK);
        table_init(&t, 1u << 20, 1);
        merge(&t, &s);
        uint64_t once[TALLY_BUCKETS];
        memcpy(once, t.digest, sizeof(once));
        merge(&t, &s); /* a replay changes nothing */
        check(memcmp(once, t.digest, sizeof(once)) == 0);
        round_trip(&t);
        table_free(&t);
        wire_sync_free(&s);
    } else {
        check(rc == TALLY_E_WIRE);
    }
    const char *sender;
    size_t slen;
    uint64_t digest[TALLY_BUCKETS];
    if (wire_decode_digest(data, size, &sender, &slen, digest) == TALLY_OK)
        check(node_id_check(sender, slen) == TALLY_OK);
    return 0;
}
