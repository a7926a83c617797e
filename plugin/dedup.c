/*
 * dedup.c - the idempotency window: the last `window` increment ids this node
 * applied, so that a client that retries (it lost the PUBACK, it reconnected)
 * is acknowledged without being counted twice.
 *
 * An id is scoped to its counter: the key is a 128-bit hash of (name, id), so
 * every entry is 16 bytes whatever the lengths, and the chance that two
 * different keys collide within a window of 10^6 is about 10^-27.
 *
 * Representation: a ring of keys in insertion order (the oldest is evicted
 * first when the window is full) and an open-addressing index of ring
 * positions with linear probing, at most half full, with backward-shift
 * deletion (Knuth vol. 3, 6.4, Algorithm R) so no tombstones accumulate.
 * Memory: 16 bytes per id in the ring + 4 to 8 bytes per id in the index.
 * Written here rather than taken from uthash because uthash's 56-byte handle
 * per entry would quadruple the memory of a 100,000-id window.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

struct tally_key dedup_key(const char *name, size_t name_len, const char *id, size_t id_len)
{
    uint64_t a = tally_hash64(name, name_len, 11);
    uint64_t b = tally_hash64(name, name_len, 12);
    return (struct tally_key){tally_hash64(id, id_len, a), tally_hash64(id, id_len, b ^ 13)};
}

int dedup_init(struct tally_dedup *d, uint32_t window)
{
    memset(d, 0, sizeof(*d));
    uint32_t cap = 16;
    while (cap < 2u * window)
        cap *= 2;
    d->ring = calloc(window, sizeof(*d->ring));
    d->index = calloc(cap, sizeof(*d->index));
    if (!d->ring || !d->index) {
        dedup_free(d);
        return TALLY_E_NOMEM;
    }
    d->window = window;
    d->mask = cap - 1;
    return TALLY_OK;
}

void dedup_free(struct tally_dedup *d)
{
    free(d->ring);
    free(d->index);
    memset(d, 0, sizeof(*d));
}

static uint32_t home(const struct tally_dedup *d, struct tally_key k)
{
    return (uint32_t)(k.a & d->mask);
}

static bool key_eq(struct tally_key x, struct tally_key y)
{
    return x.a == y.a && x.b == y.b;
}

/* The index slot holding k, or the empty slot where it would go. */
static uint32_t probe(const struct tally_dedup *d, struct tally_key k)
{
    uint32_t i = home(d, k);
    while (d->index[i] && !key_eq(d->ring[d->index[i] - 1], k))
        i = (i + 1) & d->mask;
    return i;
}

bool dedup_contains(const struct tally_dedup *d, struct tally_key k)
{
    return d->window && d->index[probe(d, k)] != 0;
}

static void index_remove(struct tally_dedup *d, uint32_t i)
{
    for (uint32_t j = (i + 1) & d->mask; d->index[j]; j = (j + 1) & d->mask) {
        uint32_t h = home(d, d->ring[d->index[j] - 1]);
        /* Move j back into the hole at i unless its home lies in (i, j]. */
        bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!stays) {
            d->index[i] = d->index[j];
            i = j;
        }
    }
    d->index[i] = 0;
}

void dedup_insert(struct tally_dedup *d, struct tally_key k)
{
    if (!d->window || dedup_contains(d, k))
        return;
    if (d->count == d->window) {
        index_remove(d, probe(d, d->ring[d->head]));
        d->head = (d->head + 1) % d->window;
        d->count--;
    }
    uint32_t pos = (d->head + d->count) % d->window;
    d->ring[pos] = k;
    d->count++;
    d->index[probe(d, k)] = pos + 1;
}
